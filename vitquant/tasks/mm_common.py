"""What the mmdet and mmseg task adapters share: configs, the backbone swap, the model wrapper,
calibration batches and the evaluation loop.

An mm config is named by file name (looked up in the installed package's ``.mim/configs``) or by
path; ``model.mm_overrides`` (dotted keys) is merged into it. The config's backbone is replaced by
``model.backbone`` (:class:`~vitquant.tasks.mm_swin.TimmSwin` or :class:`~vitquant.tasks.mm_vit.TimmViT`)
built from ``model.arch``/``model.kwargs``, and the neck's ``in_channels`` follow the backbone's
widths, so one YAML key changes the whole model size.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from vitquant.errors import UserError
from vitquant.tasks.mm_backbone import register
from vitquant.tasks.mm_swin import TimmSwin
from vitquant.tasks.mm_vit import TimmViT

BACKBONES: dict[str, type[nn.Module]] = {"TimmSwin": TimmSwin, "TimmViT": TimmViT}


def require(package: str, who: str = "this task") -> None:
    """One-line error when the optional mm stack is missing (or broken: an mmcv built for another torch)."""
    import importlib

    try:
        importlib.import_module(package)
    except ImportError as e:
        raise UserError(f"{who} needs {package}, which cannot be imported ({e}); install the mm stack with "
                        "`make setup-mm` (pip install alone cannot: mmcv has no wheel for this torch)") from None


def plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def find_config(name: str, package: str) -> Path:
    """``name`` as a path, else ``<name>.py`` under ``<package>/.mim/configs`` (mmdet, mmseg)."""
    path = Path(name)
    if path.is_file():
        return path
    import importlib

    root = Path(importlib.import_module(package).__file__).parent / ".mim" / "configs"
    hits = sorted(root.rglob(f"{path.stem}.py"))
    if not hits:
        raise UserError(f"model.mm_config={name}: neither a file nor a {package} config name "
                        f"(names are files under {root}, e.g. swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco)")
    return hits[0]


def read_mm_config(model_cfg: Mapping[str, Any], package: str):
    """The mm ``Config`` file of ``model_cfg`` with ``model.mm_overrides`` merged in (backbone as the file has it)."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(find_config(str(model_cfg["mm_config"]), package)))
    overrides = plain(model_cfg.get("mm_overrides")) or {}
    if overrides:
        cfg.merge_from_dict(dict(overrides), allow_list_keys=True)
    return cfg


def load_mm_config(model_cfg: Mapping[str, Any], package: str):
    """The mm ``Config`` of ``model_cfg``: file, overrides, timm backbone, matching neck widths."""
    register(*BACKBONES.values())
    name = str(model_cfg.get("backbone", "TimmSwin"))
    if name not in BACKBONES:
        raise UserError(f"model.backbone={name}: not one of {sorted(BACKBONES)}")
    cfg = read_mm_config(model_cfg, package)
    kwargs = plain(model_cfg.get("kwargs")) or {}
    widths = BACKBONES[name](str(model_cfg["arch"]), **kwargs).channels  # built only to read the widths
    cfg.model.backbone = dict(type=name, arch=str(model_cfg["arch"]), **kwargs)
    if cfg.model.get("pretrained"):  # mmseg would pass its ImageNet path to our backbone; ``model.pretrained`` does
        cfg.model.pretrained = None
    if "neck" in cfg.model and "in_channels" in cfg.model.neck:
        cfg.model.neck.in_channels = list(widths)
    else:  # mmseg: the heads read the backbone directly, at ``in_index``
        for head in (cfg.model.get(k) for k in ("decode_head", "auxiliary_head")):
            if head is not None and "in_index" in head:
                index = head.in_index
                head.in_channels = widths[index] if isinstance(index, int) else [widths[i] for i in index]
    return cfg


def set_resize(pipeline: list[dict], scale: Sequence[int] | None) -> list[dict]:
    """The pipeline with every ``Resize`` at ``scale`` (w, h) (``None``: unchanged)."""
    if scale is not None:
        for step in pipeline:
            if step["type"] == "Resize":
                step["scale"] = tuple(int(s) for s in scale)
    return pipeline


class MMModel(nn.Module):
    """An mmdet detector / mmseg segmentor as the PTQ pipeline sees it.

    ``forward(images)`` takes the normalised, padded batch (``calibration_images``) and runs what
    calibration must see: the backbone and neck, or the whole network when the heads are
    quantized too. ``quant_scope()`` is what :func:`~vitquant.models.twin.to_quant_twin` converts:
    the backbone (as in the papers), plus neck and heads with ``quantize_heads``.
    """

    def __init__(self, net: nn.Module, quantize_heads: bool = False) -> None:
        super().__init__()
        self.net, self.quantize_heads = net, quantize_heads

    def quant_scope(self) -> list[nn.Module]:
        if not self.quantize_heads:
            return [self.net.backbone]
        return [m for name, m in self.net.named_children() if name != "data_preprocessor"]

    def forward(self, images: torch.Tensor) -> Any:
        if not self.quantize_heads:
            return self.net.extract_feat(images)
        return self.net._forward(images, dummy_samples(self.net, images))


def dummy_samples(net: nn.Module, images: torch.Tensor) -> list:
    """Data samples carrying only the image geometry, for a tensor-mode forward."""
    sample_type = type(net.data_preprocessor).__module__.split(".")[0]
    if sample_type == "mmseg":
        from mmseg.structures import SegDataSample as Sample
    else:
        from mmdet.structures import DetDataSample as Sample
    shape = tuple(images.shape[-2:])
    meta = {"img_shape": shape, "ori_shape": shape, "pad_shape": shape, "batch_input_shape": shape,
            "scale_factor": (1.0, 1.0)}
    return [Sample(metainfo=meta) for _ in range(len(images))]


def build_dataset(dataset_cfg: Mapping[str, Any], registry_package: str):
    """An mm data set from its config (raises a one-line error for a missing annotation file)."""
    import importlib

    datasets = importlib.import_module(f"{registry_package}.registry").DATASETS
    try:
        return datasets.build(dataset_cfg)
    except FileNotFoundError as e:
        raise UserError(f"data: {e}") from None


@torch.no_grad()
def preprocess(net: nn.Module, dataset, ids: Iterable[int]) -> torch.Tensor:
    """Images ``ids`` of ``dataset`` (its pipeline), normalised and zero-padded (bottom/right, as the
    mm preprocessors pad) to one batch, on CPU. One image at a time: mmseg's test preprocessing
    refuses a batch of different sizes."""
    from mmengine.dataset import pseudo_collate

    images = [net.data_preprocessor(pseudo_collate([dataset[i]]), False)["inputs"][0].cpu() for i in ids]
    h, w = max(x.shape[-2] for x in images), max(x.shape[-1] for x in images)
    return torch.stack([nn.functional.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2])) for x in images])


@torch.no_grad()  # not inference_mode: quantizer buffers must stay usable by autograd later
def run_evaluator(model: nn.Module, loader, evaluator, n: int, device: torch.device) -> dict[str, float]:
    """``net.test_step`` over ``loader`` into the mm ``evaluator``; its metrics dict."""
    net = model.net
    was = next(net.parameters()).device
    net.data_preprocessor.to(device)
    model.eval()
    try:
        for batch in tqdm(loader, desc="evaluate", disable=None, leave=False):
            evaluator.process(data_samples=net.test_step(batch), data_batch=batch)
    finally:
        net.data_preprocessor.to(was)
    return evaluator.evaluate(n)
