"""Object detection and instance segmentation on mmdet 3.x: COCO box (and mask) AP.

Same interface as :class:`~vitquant.tasks.classification.ClassificationTask`. The model is any
mmdet config (``model.mm_config``) with its backbone replaced by the timm Swin (``TimmSwin``);
PTQ quantizes that backbone (``quantize_heads``: the neck's and heads' conv/linear layers too).
Calibration images are drawn from the *train* split and pass through the *test* pipeline, as for
classification (spec ``protocol.md`` §0). Evaluation is mmdet's ``CocoMetric``; AP values are
reported in percent: ``bbox_mAP`` (AP@[.5:.95]), ``bbox_AP50``, ``bbox_AP75`` and, with
``metrics=[bbox, segm]``, the same for ``segm``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitquant.data.calibration import calibration_ids
from vitquant.errors import UserError
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

AP_KEYS = {"mAP": "mAP", "AP50": "mAP_50", "AP75": "mAP_75"}  # ours -> CocoMetric's suffix


class DetectionTask:
    """Model + data of one COCO-style detection benchmark (``metrics``: ``[bbox]`` or ``[bbox, segm]``).

    ``image_scale`` (w, h) overrides the test ``Resize`` (the mm config's, (1333, 800) for COCO);
    ``max_eval_images`` keeps the first N validation images for quick runs.
    """

    def __init__(self, model_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any], metrics: Sequence[str] = ("bbox",),
                 batch_size: int = 1, num_workers: int = 0, max_eval_images: int | None = None,
                 image_scale: Sequence[int] | None = None, quantize_heads: bool = False) -> None:
        require("mmdet")
        from mmdet.utils import register_all_modules

        register_all_modules(init_default_scope=True)
        self.model_cfg, self.data_cfg = model_cfg, data_cfg
        self.metrics = list(metrics)
        self.batch_size, self.num_workers, self.max_eval_images = batch_size, num_workers, max_eval_images
        self.quantize_heads = quantize_heads
        self.mm_cfg = load_mm_config(model_cfg, "mmdet")
        self.pipeline = set_resize(list(self.mm_cfg.test_dataloader.dataset.pipeline), image_scale)
        self.metric_keys = [f"{m}_{k}" for m in self.metrics for k in AP_KEYS]
        self.primary_metric = self.metric_keys[0]
        self._datasets: dict[str, Any] = {}

    # ----------------------------------------------------------------------------- model
    def build_model(self, load_weights: bool = True) -> nn.Module:
        """The float detector (wrapped for PTQ) in eval mode, with ``model.checkpoint`` loaded."""
        from mmdet.registry import MODELS

        net = MODELS.build(self.mm_cfg.model)
        if "segm" in self.metrics and not getattr(net, "with_mask", False):
            raise UserError(f"task=instance_segmentation needs a model with a mask head; {self.model_cfg['name']} "
                            "has none (use task=detection)")
        checkpoint = self.model_cfg.get("checkpoint")
        if checkpoint and load_weights:
            load_detector_checkpoint(net, checkpoint)
        return MMModel(net, self.quantize_heads).eval()

    # ----------------------------------------------------------------------------- data
    def dataset(self, split: str):
        """``train``/``val`` split of ``data`` through the test pipeline (built once)."""
        if split not in self._datasets:
            root = Path(self.data_cfg["root"])
            cfg = dict(type="CocoDataset", data_root=str(root), ann_file=self.data_cfg[f"{split}_ann"],
                       data_prefix=dict(img=self.data_cfg[f"{split}_images"]), test_mode=True,
                       pipeline=self.pipeline)
            if split == "val" and self.max_eval_images is not None:
                cfg["indices"] = int(self.max_eval_images)
            self._datasets[split] = build_dataset(cfg, "mmdet")
        return self._datasets[split]

    def calibration_images(self, n: int, seed: int) -> tuple[torch.Tensor, list[int]]:
        """``n`` seeded training images, resized by the test pipeline, normalised and padded to one batch."""
        train = self.dataset("train")
        ids = calibration_ids(len(train), n, seed)
        net = self.build_model(load_weights=False).net  # only its data preprocessor is used
        return preprocess(net, train, ids), ids

    # ----------------------------------------------------------------------------- evaluation
    def evaluate(self, model: nn.Module, device: torch.device | str = "cpu") -> dict[str, float | int]:
        """COCO AP (percent) of ``model`` on the validation split: ``<bbox|segm>_<mAP|AP50|AP75>``."""
        from mmengine.dataset import DefaultSampler, pseudo_collate
        from mmengine.evaluator import Evaluator
        from torch.utils.data import DataLoader

        val = self.dataset("val")
        ann_file = str(Path(self.data_cfg["root"]) / self.data_cfg["val_ann"])
        evaluator = Evaluator(dict(type="CocoMetric", ann_file=ann_file, metric=self.metrics, format_only=False))
        evaluator.dataset_meta = val.metainfo
        # CocoMetric scores every image of the annotation file unless told otherwise (max_eval_images)
        evaluator.metrics[0].img_ids = [val.get_data_info(i)["img_id"] for i in range(len(val))]
        loader = DataLoader(val, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=pseudo_collate,
                            sampler=DefaultSampler(val, shuffle=False))
        raw = run_evaluator(model, loader, evaluator, len(val), torch.device(device))
        # CocoMetric returns nothing when no image has a detection (an untrained detector): AP 0
        out: dict[str, float | int] = {f"{m}_{k}": 100.0 * float(raw.get(f"coco/{m}_{suffix}", 0.0))
                                       for m in self.metrics for k, suffix in AP_KEYS.items()}
        out["n_images"] = len(val)
        return out
