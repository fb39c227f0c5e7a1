"""Semantic segmentation on mmsegmentation 1.x: mIoU, aAcc, mAcc (percent, mmseg's ``IoUMetric``).

Same interface and plumbing as :mod:`vitquant.tasks.detection` (:mod:`vitquant.tasks.mm_common`):
any mmseg config by name or path with its backbone replaced by ``TimmSwin``, the backbone quantized
(``quantize_heads``: the decode/auxiliary heads' conv/linear layers too), calibration images from
the train split through the test pipeline. ``data.num_classes`` (when set) resizes the heads.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitquant.data.calibration import calibration_ids
from vitquant.tasks.mm_checkpoint import load_detector_checkpoint
from vitquant.tasks.mm_common import (
    MMModel,
    build_dataset,
    load_mm_config,
    preprocess,
    require,
    run_evaluator,
    set_resize,
)

METRICS = ("mIoU", "aAcc", "mAcc")


class SegmentationTask:
    """Model + data of one semantic-segmentation benchmark (mmseg folder layout, ``data/*.yaml``)."""

    def __init__(self, model_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any], batch_size: int = 1,
                 num_workers: int = 0, max_eval_images: int | None = None, image_scale: list[int] | None = None,
                 quantize_heads: bool = False) -> None:
        require("mmseg")
        from mmseg.utils import register_all_modules

        register_all_modules(init_default_scope=True)
        self.model_cfg, self.data_cfg = model_cfg, data_cfg
        self.batch_size, self.num_workers, self.max_eval_images = batch_size, num_workers, max_eval_images
        self.quantize_heads = quantize_heads
        self.mm_cfg = load_mm_config(model_cfg, "mmseg")
        if data_cfg.get("num_classes"):
            for key in ("decode_head", "auxiliary_head"):
                if self.mm_cfg.model.get(key) is not None:
                    self.mm_cfg.model[key].num_classes = int(data_cfg["num_classes"])
        self.pipeline = set_resize(list(self.mm_cfg.test_dataloader.dataset.pipeline), image_scale)
        for step in self.pipeline:
            if step["type"] == "LoadAnnotations":
                step["reduce_zero_label"] = bool(data_cfg["reduce_zero_label"])
        self.metric_keys = list(METRICS)
        self.primary_metric = "mIoU"
        self._datasets: dict[str, Any] = {}

    def build_model(self, load_weights: bool = True) -> nn.Module:
        """The float segmentor (wrapped for PTQ) in eval mode, with ``model.checkpoint`` loaded."""
        from mmseg.registry import MODELS

        net = MODELS.build(self.mm_cfg.model)
        checkpoint = self.model_cfg.get("checkpoint")
        if checkpoint and load_weights:
            load_detector_checkpoint(net, checkpoint)
        return MMModel(net, self.quantize_heads).eval()

    def dataset(self, split: str):
        """``train``/``val`` split (``root/<split>_images``, ``root/<split>_masks``) through the test pipeline."""
        if split not in self._datasets:
            data = self.data_cfg
            cfg = dict(type=data["dataset_type"], data_root=str(Path(data["root"])), pipeline=self.pipeline,
                       data_prefix=dict(img_path=data[f"{split}_images"], seg_map_path=data[f"{split}_masks"]),
                       img_suffix=data["img_suffix"], seg_map_suffix=data["seg_map_suffix"],
                       reduce_zero_label=bool(data["reduce_zero_label"]), test_mode=True)
            if data.get("classes"):
                cfg["metainfo"] = dict(classes=tuple(data["classes"]))
            if split == "val" and self.max_eval_images is not None:
                cfg["indices"] = int(self.max_eval_images)
            self._datasets[split] = build_dataset(cfg, "mmseg")
        return self._datasets[split]

    def calibration_images(self, n: int, seed: int) -> tuple[torch.Tensor, list[int]]:
        """``n`` seeded training images through the test pipeline, normalised and padded to one batch."""
        train = self.dataset("train")
        ids = calibration_ids(len(train), n, seed)
        return preprocess(self.build_model(load_weights=False).net, train, ids), ids

    def evaluate(self, model: nn.Module, device: torch.device | str = "cpu") -> dict[str, float | int]:
        """mIoU, aAcc, mAcc (percent) of ``model`` on the validation split."""
        from mmengine.dataset import DefaultSampler, pseudo_collate
        from mmengine.evaluator import Evaluator
        from torch.utils.data import DataLoader

        val = self.dataset("val")
        evaluator = Evaluator(dict(type="IoUMetric", iou_metrics=["mIoU"]))
        evaluator.dataset_meta = val.metainfo
        loader = DataLoader(val, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=pseudo_collate,
                            sampler=DefaultSampler(val, shuffle=False))
        raw = run_evaluator(model, loader, evaluator, len(val), torch.device(device))
        return {**{k: float(raw[k]) for k in METRICS}, "n_images": len(val)}
