"""W&B runs of one sweep share a group and carry the run's choices as tags; W&B stays best effort."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from vitquant.cli import CONF_DIR
from vitquant.io.logger import RunLogger, run_tags, sweep_group

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
    logger = RunLogger(logger_cfg, RUN, str(tmp_path), "deit_small-isvit-w4a4-s1")
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
    logger = RunLogger({"name": "wandb", "project": "p"}, RUN, "/nonexistent", "r")
    assert logger.run is None and "W&B unavailable" in caplog.text
    logger.table("sites", ["a"], [[1]])
    logger.log({"top1": 1.0})
    logger.finish()
