"""Image classification: a timm model on an image data set, top-1/top-5 on the validation split, and,
given the float model as reference, label-free fidelity metrics (:mod:`vitquant.tasks.fidelity`).

Calibration images are drawn from the *train* split but pass through the *evaluation* transform,
as in the PTQ-ViT codes (spec ``protocol.md`` §0); see :mod:`vitquant.data.calibration`.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from vitquant.data.calibration import calibration_ids, load_images
from vitquant.data.datasets import FORMATS, build_dataset, has_labels
from vitquant.data.transforms import eval_transform
from vitquant.errors import UserError
from vitquant.models.build import build_model
from vitquant.tasks.base import Task
from vitquant.tasks.fidelity import FIDELITY_KEYS, Fidelity


class ClassificationTask(Task):
    """Model + data of one classification benchmark (a timm model, :data:`~vitquant.data.datasets.FORMATS` data).

    ``max_eval_images`` keeps N evenly spaced validation images for quick runs: folder data sets
    are ordered by class, so a strided subset covers every class where the first N would not.
    """

    can_train: ClassVar[bool] = True
    compares_to_reference: ClassVar[bool] = True

    def __init__(self, model_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any], batch_size: int = 100,
                 num_workers: int = 0, max_eval_images: int | None = None):
        self.model_cfg, self.data_cfg = model_cfg, data_cfg
        self.batch_size, self.num_workers, self.max_eval_images = batch_size, num_workers, max_eval_images
        self.transform = eval_transform(model_cfg["input"])
        self._datasets: dict[str, Dataset] = {}

    @classmethod
    def check_config(cls, task_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any],
                     data_cfg: Mapping[str, Any]) -> None:
        """A timm model (no ``model.mm_config``) on an image-classification data set."""
        name = task_cfg.get("name")
        if model_cfg.get("mm_config") is not None:
            raise UserError(f"task={name} needs a timm classification model, but model={model_cfg.get('name')} is a "
                            f"detection/segmentation network (model.mm_config={model_cfg['mm_config']}); use "
                            "task=detection, instance_segmentation or semantic_segmentation with it, or a "
                            "classification model (e.g. model=deit_tiny)")
        if data_cfg.get("format") not in FORMATS:
            raise UserError(f"task={name} needs a classification data set, but data={data_cfg.get('name')} has "
                            f"data.format={data_cfg.get('format')} (valid: {', '.join(FORMATS)}); use e.g. "
                            "data=imagenet or data=cifar10")

    def build_model(self, load_weights: bool = True) -> nn.Module:
        """The float model in eval mode (``load_weights=False``: architecture only)."""
        return build_model(self.model_cfg, load_weights=load_weights)

    def dataset(self, split: str) -> Dataset:
        """A split with the evaluation transform (built once: folder scans are not free)."""
        if split not in self._datasets:
            self._datasets[split] = build_dataset(self.data_cfg, split, self.transform)
        return self._datasets[split]

    def calibration_images(self, n: int, seed: int) -> tuple[torch.Tensor, list[int]]:
        """``n`` seeded training images (evaluation transform), (n, C, H, W) on CPU, and their ids."""
        train = self.dataset(self.data_cfg["train_split"])
        ids = calibration_ids(len(train), n, seed)
        return load_images(train, ids), ids

    def eval_dataset(self) -> Dataset:
        val = self.dataset(self.data_cfg["val_split"])
        if self.max_eval_images is None:
            return val
        n = min(int(self.max_eval_images), len(val))
        return Subset(val, torch.linspace(0, len(val) - 1, n).round().long().tolist())

    @property
    def metric_keys(self) -> tuple[str, ...]:
        """Quality metrics, primary first: top-1/top-5 on labeled data, only the fidelity ones on unlabeled."""
        return ("top1", "top5") if has_labels(self.data_cfg) else FIDELITY_KEYS

    @property
    def primary_metric(self) -> str:
        return self.metric_keys[0]

    @property
    def primary_needs_reference(self) -> bool:
        """Unlabeled data: the primary metric (``agree_top1``) is measured against the float model."""
        return not has_labels(self.data_cfg)

    @torch.no_grad()  # not inference_mode: quantizer buffers must stay usable by autograd later
    def evaluate(self, model: nn.Module, device: torch.device | str = "cpu",
                 reference: nn.Module | None = None) -> dict[str, float | int]:
        """Top-1/top-5 accuracy (percent) of ``model`` on the validation split (or its subset).

        With ``reference`` (the float model) both run on each batch, in one pass over the data, and the
        label-free fidelity metrics of :mod:`vitquant.tasks.fidelity` are added (``agree_top1``, ``kl``,
        ``logit_sqnr_db``) with the reference's own accuracy (``fp_top1``, ``fp_top5``) and forward times
        (``model_seconds``, ``reference_seconds``: forward passes only, CUDA synchronised). Unlabeled data
        (``data.format=images``) gives only the fidelity metrics, so it needs a reference.
        """
        device = torch.device(device)
        labeled = has_labels(self.data_cfg)
        if not labeled and reference is None:
            raise UserError(f"data.format={self.data_cfg['format']} has no labels: only fidelity metrics against "
                            "the float model can be measured, and no float model was given (keep eval_fp=true "
                            "for calibrate.py, fidelity=true for evaluate.py)")
        loader = DataLoader(self.eval_dataset(), batch_size=self.batch_size, shuffle=False,
                            num_workers=self.num_workers, pin_memory=device.type == "cuda")
        models = {"": model} if reference is None else {"": model, "fp_": reference}
        for m in models.values():
            m.eval()
        hits = {prefix: torch.zeros(2, dtype=torch.long) for prefix in models}
        seconds = dict.fromkeys(models, 0.0)
        fidelity, n = Fidelity(), 0
        for images, labels in tqdm(loader, desc="evaluate", disable=None, leave=False):
            images = images.to(device, non_blocking=True)
            logits = {}
            for prefix, m in models.items():
                start = time.perf_counter()
                logits[prefix] = m(images)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds[prefix] += time.perf_counter() - start
                if labeled:
                    hits[prefix] += topk_hits(logits[prefix].cpu(), labels)
            if reference is not None:
                fidelity.update(logits["fp_"], logits[""])
            n += len(labels)
        out: dict[str, float | int] = {"n_images": n}
        for prefix in models:
            if labeled:
                out[f"{prefix}top1"], out[f"{prefix}top5"] = (100.0 * int(h) / max(n, 1) for h in hits[prefix])
        if reference is not None:
            out.update(fidelity.result(), model_seconds=seconds[""], reference_seconds=seconds["fp_"])
        return out


def topk_hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(top-1 hits, top-5 hits) of one batch (top-5 is top-k when there are fewer than 5 classes)."""
    hits = logits.topk(min(5, logits.shape[-1]), dim=-1).indices == labels[:, None]
    return torch.stack([hits[:, 0].sum(), hits.any(dim=-1).sum()])
