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

from vitquant.errors import UserError
from vitquant.tasks.mm_common import read_mm_config
from vitquant.tasks.mm_task import MMTask

METRICS = ("bbox", "segm")  # CocoMetric's box and mask AP
AP_KEYS = {"mAP": "mAP", "AP50": "mAP_50", "AP75": "mAP_75"}  # ours -> CocoMetric's suffix


class DetectionTask(MMTask):
    """Model + data of one COCO-style detection benchmark (``metrics``: ``[bbox]`` or ``[bbox, segm]``).

    ``image_scale`` (w, h) overrides the test ``Resize`` (the mm config's, (1333, 800) for COCO);
    ``max_eval_images`` keeps the first N validation images for quick runs.
    """

    package = "mmdet"
    data_format = "coco"
    example_model = "mask_rcnn_swin_tiny"
    example_data = "coco"

    def __init__(self, model_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any], metrics: Sequence[str] = ("bbox",),
                 **options: Any) -> None:
        super().__init__(model_cfg, data_cfg, **options)
        self.metrics = list(metrics)
        self.metric_keys = tuple(f"{m}_{k}" for m in self.metrics for k in AP_KEYS)
        self.primary_metric = self.metric_keys[0]

    @classmethod
    def check_config(cls, task_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any],
                     data_cfg: Mapping[str, Any]) -> None:
        """As :meth:`MMTask.check_config`, plus: ``metrics`` are COCO's, and mask AP needs a mask head."""
        metrics = list(task_cfg.get("metrics") or ("bbox",))
        if metrics[0] != "bbox" or not set(metrics) <= set(METRICS):
            raise UserError(f"task.metrics={metrics}: use [bbox] (task=detection) or [bbox, segm] "
                            "(task=instance_segmentation)")
        super().check_config(task_cfg, model_cfg, data_cfg)
        net = read_mm_config(model_cfg, cls.package).model
        if "segm" in metrics and not ((net.get("roi_head") or {}).get("mask_head") or net.get("mask_head")):
            raise UserError(f"task={task_cfg.get('name')} needs a model with a mask head; "
                            f"model={model_cfg.get('name')} has none (use task=detection, or a Mask R-CNN model "
                            "such as model=mask_rcnn_swin_tiny)")

    def dataset_config(self, split: str) -> dict[str, Any]:
        """COCO json + image folder of ``split`` (``data.<split>_ann``, ``data.<split>_images``)."""
        return dict(type="CocoDataset", data_root=str(Path(self.data_cfg["root"])),
                    ann_file=self.data_cfg[f"{split}_ann"], data_prefix=dict(img=self.data_cfg[f"{split}_images"]),
                    test_mode=True, pipeline=self.pipeline)

    def make_evaluator(self, val) -> Any:
        from mmengine.evaluator import Evaluator

        ann_file = str(Path(self.data_cfg["root"]) / self.data_cfg["val_ann"])
        evaluator = Evaluator(dict(type="CocoMetric", ann_file=ann_file, metric=self.metrics, format_only=False))
        # CocoMetric scores every image of the annotation file unless told otherwise (max_eval_images)
        evaluator.metrics[0].img_ids = [val.get_data_info(i)["img_id"] for i in range(len(val))]
        return evaluator

    def read_metrics(self, raw: dict[str, float]) -> dict[str, float]:
        """COCO AP in percent: ``<bbox|segm>_<mAP|AP50|AP75>``; CocoMetric returns nothing when no image
        has a detection (an untrained detector): AP 0."""
        return {f"{m}_{k}": 100.0 * float(raw.get(f"coco/{m}_{suffix}", 0.0))
                for m in self.metrics for k, suffix in AP_KEYS.items()}
