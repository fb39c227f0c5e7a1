"""Overrides of a train.yaml run on the tiny ViT/Swin and image folder (seconds per run).

A plain module, not a ``conftest.py``: the top-level tests import ``conftest`` by name.
"""

TINY_VIT = ["model=vit_cifar", "model.kwargs.depth=2", "model.kwargs.embed_dim=48", "model.kwargs.patch_size=8",
            "model.kwargs.num_classes=3", "+model.kwargs.drop_path_rate=0.1"]
TINY_SWIN = ["model=swin_cifar", "model.kwargs.depths=[2,2]", "model.kwargs.num_heads=[2,4]",
             "model.kwargs.embed_dim=24", "model.kwargs.num_classes=3"]
TINY_TRAIN = [*TINY_VIT, "data=cifar10", "data.val_split=val",
              "task.num_workers=0", "method.n_calib=8", "logger=none", "qat.epochs=2", "qat.batch_size=4",
              "qat.n_crops=2", "qat.num_workers=0", "qat.lr=2e-3", "bits=3", "device=cpu"]


def train_args(image_folder) -> list[str]:
    """Command-line overrides of a tiny train run."""
    return [*TINY_TRAIN, f"data.root={image_folder}"]


def train_config_factory(image_folder, tmp_path):
    """``make(*overrides, out=name)`` → a train config on the tiny model/data writing to tmp_path/name."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from vitquant.cli import CONF_DIR

    def make(*overrides: str, out: str = "run", swin: bool = False):
        base = [*TINY_SWIN, *TINY_TRAIN[len(TINY_VIT):]] if swin else TINY_TRAIN
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=[*base, f"data.root={image_folder}", *overrides])
        with open_dict(cfg):
            cfg.out_dir = str(tmp_path / out)
        return cfg

    return make
