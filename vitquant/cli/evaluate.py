"""Evaluate a quantized checkpoint: ``python evaluate.py checkpoint=<run dir>/quantized.pt data=...``."""
import hydra
from omegaconf import DictConfig

from vitquant.cli import guarded, preflight
from vitquant.config import validate_evaluate


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
@guarded
def main(cfg: DictConfig) -> float:
    from vitquant.evaluation import run_evaluation

    metrics = run_evaluation(cfg)
    return metrics[metrics.get("primary_metric", "top1")]


def run() -> None:
    """Console entry point (`vitquant-evaluate`): validate the overrides first, then run."""
    preflight("evaluate", validate_evaluate)
    main()


if __name__ == "__main__":
    run()
