"""Quantization-aware training: ``python train.py qat=vvtq model=deit_tiny data=imagenet bits=2``
(``torchrun --nproc_per_node=8 train.py ...`` for DDP). Rerun the same command to resume."""
import hydra
from omegaconf import DictConfig

from vitquant.cli import guarded, preflight, primary_metric
from vitquant.qat.config import validate_train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@guarded
def main(cfg: DictConfig) -> float:
    from vitquant.pipelines.train import run_training

    return primary_metric(run_training(cfg))


def run() -> None:
    """Console entry point (`vitquant-train`): validate the overrides first, then run."""
    preflight("train", validate_train)
    main()


if __name__ == "__main__":
    run()
