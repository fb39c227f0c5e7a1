"""Evaluate a quantized checkpoint: ``python evaluate.py checkpoint=<run dir>/quantized.pt data=...``."""
import hydra
from omegaconf import DictConfig

from vitquant.cli import guarded, preflight, primary_metric
from vitquant.config import validate_evaluate


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
@guarded
def main(cfg: DictConfig) -> float:
    from vitquant.pipelines.evaluate import run_evaluation

    return primary_metric(run_evaluation(cfg))


def run() -> None:
    """Console entry point (`vitquant-evaluate`): validate the overrides first, then run."""
    preflight("evaluate", validate_evaluate)
    main()


if __name__ == "__main__":
    run()
