"""Offline multi-crop KD labels (FKD): ``python soft_labels.py model=... data=... soft_labels.dir=<out>``,
then ``python train.py ... soft_labels.dir=<out>`` replays them instead of running a teacher."""
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from vitquant.cli import guarded, preflight
from vitquant.errors import UserError
from vitquant.qat.config import validate_train


def validate(cfg: DictConfig) -> None:
    """The training config (``soft_labels.dir`` is this script's output, created once the rest is valid)."""
    if cfg.soft_labels.dir is None:
        raise UserError("soft_labels.dir is required: the folder to write the soft labels to")
    validate_train(OmegaConf.merge(cfg, {"soft_labels": {"dir": None}}))
    Path(cfg.soft_labels.dir).mkdir(parents=True, exist_ok=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@guarded
def main(cfg: DictConfig) -> None:
    from vitquant.pipelines.soft_labels import write_soft_labels

    validate(cfg)
    write_soft_labels(cfg)


def run() -> None:
    """Console entry point (`vitquant-soft-labels`): validate the overrides first, then run."""
    preflight("train", validate)
    main()


if __name__ == "__main__":
    run()
