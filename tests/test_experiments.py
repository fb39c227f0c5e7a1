"""Paper-table experiments compose and one cell runs (random weights, a generated ImageFolder)."""
from __future__ import annotations

import pytest
from conftest import make_image_folder
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from vitquant.cli import CONF_DIR
from vitquant.pipelines.calibrate import run_calibration


@pytest.mark.parametrize("experiment", ["isvit_imagenet", "repqvit_imagenet", "aiqvit_imagenet"])
def test_experiment_composes_with_its_sweep(experiment):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("calibrate", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    assert cfg.method.name == experiment.split("_")[0] and cfg.data.name == "imagenet"
    assert "deit_small" in cfg.hydra.sweeper.params.model and cfg.model.pretrained


@pytest.mark.parametrize("experiment", ["isvit_coco", "repqvit_coco"])
def test_coco_experiment_composes_with_its_sweep(experiment):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("calibrate", overrides=[f"experiment={experiment}", "model=cascade_mask_rcnn_swin_small"],
                      return_hydra_config=True)
    assert cfg.method.name == experiment.split("_")[0] and cfg.task.name == "instance_segmentation"
    assert cfg.model.checkpoint == "weights/cascade_mask_rcnn_swin_small_patch4_window7.pth"
    assert "mask_rcnn_swin_tiny" in cfg.hydra.sweeper.params.model


def calibrate_presets() -> list[str]:
    """Every experiment preset whose one command is a ``calibrate.py -m`` sweep."""
    return sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml") if "calibrate.py -m" in p.read_text())


@pytest.mark.parametrize("experiment", calibrate_presets())
def test_every_preset_sweep_expands_and_its_jobs_compose(experiment):
    """Expand the preset's sweep as Hydra's basic sweeper does; its first and last jobs compose and resolve."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("calibrate", overrides=[f"experiment={experiment}"], return_hydra_config=True)
        params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
        jobs = [job for batch in BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)
                for job in batch]
        assert len(jobs) >= 4
        for job in (jobs[0], jobs[-1]):
            job_cfg = compose("calibrate", overrides=[f"experiment={experiment}", *job, "out_dir=/tmp/x"])
            OmegaConf.resolve(job_cfg)
            assert f"model={job_cfg.model.name}" in job or not any(o.startswith("model=") for o in job)


def test_fully_quantized_presets_select_the_full_policy_and_fqvit_sweeps_attention_bits():
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        tsptq = compose("calibrate", overrides=["experiment=tsptq_imagenet"], return_hydra_config=True)
        fqvit = compose("calibrate", overrides=["experiment=fqvit_imagenet", "+method.kind_bits.post_softmax=4"])
    assert tsptq.policy.name == "full" and tsptq.method.name == "tsptq" and tsptq.hydra.sweeper.params.bits == "8,6"
    assert fqvit.policy.name == "full" and fqvit.bits == 8 and fqvit.method.kind_bits.post_softmax == 4


def test_cifar_reference_preset_loads_each_models_own_checkpoint():
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for model in ("vit_cifar", "swin_cifar"):
            cfg = compose("calibrate", overrides=["experiment=cifar_reference", f"model={model}"])
            assert cfg.model.checkpoint.endswith(f"/models/{model}10.safetensors") and cfg.data.name == "cifar10"


@pytest.mark.slow
def test_isvit_imagenet_cell_runs_on_a_generated_image_folder(tmp_path):
    root = make_image_folder(tmp_path / "imagenet", {"train": 3, "val": 1}, n_classes=3, size=64)
    overrides = ["experiment=isvit_imagenet", "model=deit_tiny", "bits=4", "model.pretrained=false",
                 f"data.root={root}", "method.n_calib=8", "method.init_images=8", "method.iters=2",
                 "method.batch_size=4", "task.num_workers=0", "task.batch_size=4"]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("calibrate", overrides=overrides)
    with open_dict(cfg):
        cfg.out_dir = str(tmp_path / "run")
    metrics = run_calibration(cfg)
    assert (metrics["model"], metrics["method"], metrics["w_bits"]) == ("deit_tiny", "isvit", 4)
    assert (tmp_path / "run" / "metrics.json").exists()
