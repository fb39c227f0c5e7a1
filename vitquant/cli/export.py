"""Integer export: ``python export.py checkpoint=<run dir>/quantized.pt format=onnx``."""
import hydra
from omegaconf import DictConfig

from vitquant.cli import guarded, preflight


def validate(cfg: DictConfig) -> None:
    from vitquant.pipelines.export import validate_export

    validate_export(cfg)


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
@guarded
def main(cfg: DictConfig) -> bool:
    from vitquant.pipelines.export import run_export

    return run_export(cfg)["deployable"]


def run() -> None:
    """Console entry point (`vitquant-export`): validate the overrides first, then run."""
    preflight("export", validate)
    main()


if __name__ == "__main__":
    run()
