"""W&B runs of one sweep share a group and carry the run's choices as tags; W&B stays best effort."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from vitquant.cli import CONF_DIR
from vitquant.io.logger import RunLogger, artifact_name, run_id, run_tags, sweep_group

RUN = {"method": {"name": "isvit"}, "model": {"name": "deit_small"}, "policy": {"name": "default"},
       "w_bits": 4, "a_bits": 4, "seed": 1}
TAGS = ["method:isvit", "model:deit_small", "policy:default", "seed:1", "bits:w4a4"]


@pytest.fixture
def multirun(tmp_path):
    """A Hydra multirun job's HydraConfig (what the launcher sets in each job), sweep folder tmp/sweep_42."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("calibrate", overrides=["logger=wandb"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = "MULTIRUN"
        cfg.hydra.sweep.dir = str(tmp_path / "sweep_42")
    HydraConfig.instance().set_config(cfg)
    yield cfg
    HydraConfig.instance().cfg = None


def test_group_is_the_sweep_folder_unless_set_and_none_outside_a_sweep(multirun):
    assert sweep_group({"group": None}) == "sweep_42"
    assert sweep_group({"group": "ablation"}) == "ablation"
    HydraConfig.instance().cfg = None
    assert sweep_group({"group": None}) is None  # compose API / single run: no ${hydra:...} needed


def test_tags_from_the_runs_choices_then_the_users():
    assert run_tags(RUN, ["paper"]) == [*TAGS, "paper"]


def test_offline_run_in_a_temp_dir_carries_group_and_tags(multirun, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger_cfg = OmegaConf.to_container(multirun.logger)
    logger = RunLogger(logger_cfg, RUN, str(tmp_path), "deit_small-isvit-w4a4-s1", job_type="calibrate")
    try:
        assert logger.run is not None
        assert logger.run.group == "sweep_42" and list(logger.run.tags) == TAGS
        logger.table("sites", ["site", "sqnr_db"], [["blocks.0.attn.qkv.input", float("inf")]])
    finally:
        logger.finish()
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))  # ready for `wandb sync`


def test_wandb_failure_degrades_to_local_logging(monkeypatch, caplog):
    import wandb

    def broken(**kwargs):
        raise RuntimeError("no network")

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(wandb, "init", broken)
    logger = RunLogger({"name": "wandb", "project": "p"}, RUN, "/nonexistent", "r", job_type="calibrate")
    assert logger.run is None and "W&B unavailable" in caplog.text
    logger.table("sites", ["a"], [[1]])
    logger.artifact("/nonexistent/quantized.pt")
    logger.log({"top1": 1.0})
    logger.finish()


def test_run_id_is_stable_per_run_folder_and_entry_script(tmp_path):
    assert run_id(tmp_path / "run", "train") == run_id(str(tmp_path / "run") + "/", "train")  # same folder
    assert run_id(tmp_path / "run", "train") != run_id(tmp_path / "run2", "train")
    assert run_id(tmp_path / "run", "export") != run_id(tmp_path / "run", "calibrate")
    assert run_id(tmp_path / "run", "train").startswith("train-")
    assert artifact_name("vit/w4 a4", "out/model.onnx") == "vit_w4_a4-model"


def test_offline_run_has_job_type_resumable_id_and_the_checkpoint_artifact(tmp_path, monkeypatch):
    """A requeued job opens the same run folder again: same W&B id, resume="allow"; quantized.pt is an artifact."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "quantized.pt").write_bytes(b"weights")
    ids = []
    for _ in range(2):  # the job, then its requeue
        logger = RunLogger({"name": "wandb", "project": "p"}, RUN, str(tmp_path), "deit_small-isvit", job_type="train")
        try:
            assert logger.run is not None and logger.run.job_type == "train"
            ids.append(logger.run.id)
            logger.artifact(tmp_path / "quantized.pt")
        finally:
            logger.finish()
    assert ids == [run_id(tmp_path, "train")] * 2
    assert len(sorted(tmp_path.glob(f"wandb/offline-run-*/run-{ids[0]}.wandb"))) == 2  # `wandb sync` both: one run
    assert b"deit_small-isvit-quantized" in offline_records(tmp_path)


def offline_records(run_dir) -> bytes:
    """The bytes of every offline W&B run under ``run_dir`` (protobuf records; names appear verbatim), once the
    W&B service has flushed them (``finish`` returns before it has)."""
    from pathlib import Path

    import wandb

    wandb.teardown()

    return b"".join(p.read_bytes() for p in sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")))


def test_calibrate_and_export_log_their_job_type_and_files_as_artifacts(tiny_run, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("onnx")
    from vitquant.pipelines.calibrate import run_calibration
    from vitquant.pipelines.export import run_export

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    calib = tiny_run("method=minmax", "logger=wandb", "eval_fp=false", out="calib")
    run_calibration(calib)
    records = offline_records(calib.out_dir)
    assert run_id(calib.out_dir, "calibrate").encode() in records and b"-quantized" in records
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("export", overrides=[f"checkpoint={calib.out_dir}/quantized.pt", "task.num_workers=0",
                                           "logger=wandb", "verify=false"])
    with open_dict(cfg):
        cfg.out_dir = str(tmp_path / "export")
    run_export(cfg)
    records = offline_records(cfg.out_dir)
    assert run_id(cfg.out_dir, "export").encode() in records and b"export-vit_cifar-minmax-w8a8-model" in records
