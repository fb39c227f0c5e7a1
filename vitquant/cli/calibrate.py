"""Post-training quantization: ``python calibrate.py method=isvit model=deit_small bits=4``."""
import hydra
from omegaconf import DictConfig

from vitquant.cli import guarded, preflight, primary_metric
from vitquant.config import validate_calibrate


@hydra.main(version_base="1.3", config_path="../conf", config_name="calibrate")
@guarded
def main(cfg: DictConfig) -> float:
    from vitquant.pipelines.calibrate import run_calibration

    return primary_metric(run_calibration(cfg))


def run() -> None:
    """Console entry point (`vitquant-calibrate`): validate the overrides first, then run."""
    preflight("calibrate", validate_calibrate)
    main()


if __name__ == "__main__":
    run()
