"""Semantic segmentation on mmsegmentation 1.x: mIoU, aAcc, mAcc (percent, mmseg's ``IoUMetric``).

Same interface and plumbing as :mod:`vitquant.tasks.detection` (:class:`~vitquant.tasks.mm_task.MMTask`):
any mmseg config by name or path with its backbone replaced by ``TimmSwin``, the backbone quantized
(``quantize_heads``: the decode/auxiliary heads' conv/linear layers too), calibration images from
the train split through the test pipeline. ``data.num_classes`` (when set) resizes the heads.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vitquant.tasks.mm_task import MMTask

METRICS = ("mIoU", "aAcc", "mAcc")


class SegmentationTask(MMTask):
    """Model + data of one semantic-segmentation benchmark (mmseg folder layout, ``data/*.yaml``)."""

    package = "mmseg"
    data_format = "mmseg"
    example_model = "upernet_swin_tiny"
    example_data = "ade20k"
    metric_keys = METRICS
    primary_metric = "mIoU"

    def __init__(self, model_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any], **options: Any) -> None:
        super().__init__(model_cfg, data_cfg, **options)
        if data_cfg.get("num_classes"):
            for key in ("decode_head", "auxiliary_head"):
                if self.mm_cfg.model.get(key) is not None:
                    self.mm_cfg.model[key].num_classes = int(data_cfg["num_classes"])
        for step in self.pipeline:
            if step["type"] == "LoadAnnotations":
                step["reduce_zero_label"] = bool(data_cfg["reduce_zero_label"])

    def dataset_config(self, split: str) -> dict[str, Any]:
        """``root/<split>_images`` and ``root/<split>_masks`` (``data.*`` names the folders and suffixes)."""
        data = self.data_cfg
        cfg = dict(type=data["dataset_type"], data_root=str(Path(data["root"])), pipeline=self.pipeline,
                   data_prefix=dict(img_path=data[f"{split}_images"], seg_map_path=data[f"{split}_masks"]),
                   img_suffix=data["img_suffix"], seg_map_suffix=data["seg_map_suffix"],
                   reduce_zero_label=bool(data["reduce_zero_label"]), test_mode=True)
        if data.get("classes"):
            cfg["metainfo"] = dict(classes=tuple(data["classes"]))
        return cfg

    def make_evaluator(self, val) -> Any:
        from mmengine.evaluator import Evaluator

        return Evaluator(dict(type="IoUMetric", iou_metrics=["mIoU"]))

    def read_metrics(self, raw: dict[str, float]) -> dict[str, float]:
        """mIoU, aAcc, mAcc (percent, as mmseg's ``IoUMetric`` gives them)."""
        return {k: float(raw[k]) for k in METRICS}
