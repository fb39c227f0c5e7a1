"""Paper-table experiments compose and one cell runs (random weights, a generated ImageFolder)."""
from __future__ import annotations

import pytest
from conftest import make_image_folder
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from vitquant.cli import CONF_DIR
from vitquant.ptq import run_calibration


@pytest.mark.parametrize("experiment", ["isvit_imagenet", "repqvit_imagenet"])
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
