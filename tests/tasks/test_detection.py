"""Detection / instance segmentation on mmdet (COCO128): calibrate → evaluate, twins, AP, bad inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("mmdet", reason="needs the mm stack (make setup-mm)")
pytestmark = pytest.mark.mm

from mm_pair import TINY_MM_SWIN  # noqa: E402

TINY_DET = ["task=instance_segmentation", "model=mask_rcnn_swin_micro", "data=coco128", *TINY_MM_SWIN]


@pytest.fixture
def det_cfg(shared_dir, tmp_path):
    from conftest import run_config_factory

    return run_config_factory([*TINY_DET, f"data.root={shared_dir / 'data' / 'coco128'}"], tmp_path)


def test_calibrate_then_evaluate_gives_the_same_ap(det_cfg, tmp_path):
    from vitquant.pipelines.calibrate import run_calibration
    from vitquant.pipelines.evaluate import run_evaluation

    metrics = run_calibration(det_cfg("method=isvit", "bits=4", "method.iters=1", "method.batch_size=2",
                                      "eval_fp=false"))
    keys = [f"{m}_{k}" for m in ("bbox", "segm") for k in ("mAP", "AP50", "AP75")]
    assert metrics["primary_metric"] == "bbox_mAP" and all(metrics[k] >= 0 and f"fp_{k}" in metrics for k in keys)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["segm_AP50"] == metrics["segm_AP50"]
    again = run_evaluation(det_cfg(f"checkpoint={tmp_path / 'run' / 'quantized.pt'}", "task=instance_segmentation",
                                   "task.max_eval_images=2", "task.image_scale=[128,128]", name="evaluate", out="ev"))
    assert {k: again[k] for k in keys} == {k: metrics[k] for k in keys}


def test_backbone_is_quantized_and_heads_stay_float(det_cfg):
    from vitquant.config import bit_widths
    from vitquant.models.quantize import quantized_twin
    from vitquant.nn import QuantLinear
    from vitquant.pipelines.common import build_recipe
    from vitquant.tasks.base import build_task

    cfg = det_cfg("method=percentile")
    task = build_task(cfg.task, cfg.model, cfg.data)
    fp = task.build_model()
    q = quantized_twin(fp, build_recipe(cfg.method), list(cfg.policy.kinds), bit_widths(cfg), 0)
    assert any(isinstance(m, QuantLinear) for m in q.net.backbone.modules())
    assert not any(isinstance(m, QuantLinear) for n, m in q.net.named_children() if n != "backbone"
                   for m in m.modules())
    heads = quantized_twin(build_task({**cfg.task, "quantize_heads": True}, cfg.model, cfg.data).build_model(),
                           build_recipe(cfg.method), list(cfg.policy.kinds), bit_widths(cfg), 0)
    assert any(isinstance(m, QuantLinear) for m in heads.net.roi_head.modules())


def test_quantizers_off_give_the_float_detector(det_cfg):
    """Twins with every quantizer disabled predict exactly what the float detector predicts."""
    from mm_pair import float_and_twin_predictions
    from omegaconf import open_dict

    cfg = det_cfg("method=percentile")
    with open_dict(cfg):  # keep every detection of the random detector
        cfg.model.mm_overrides["model.test_cfg.rcnn.score_thr"] = 0.0
    a, b = (out.pred_instances for out in float_and_twin_predictions(cfg))
    assert len(a) > 0
    for key in ("bboxes", "scores", "labels", "masks"):
        torch.testing.assert_close(a[key], b[key])


def test_ap_equals_pycocotools(det_cfg, shared_dir):
    """The adapter's AP is pycocotools' COCOeval on the same predictions (jittered ground truth)."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from vitquant.tasks.base import build_task

    cfg = det_cfg("task=detection", "task.max_eval_images=4")
    task = build_task(cfg.task, cfg.model, cfg.data)
    coco = COCO(str(shared_dir / "data" / "coco128" / "annotations" / "instances_train2017.json"))
    cat_ids = coco.getCatIds()
    rng = np.random.default_rng(0)
    detections = []

    class Oracle(torch.nn.Module):
        """Predicts each ground-truth box, shifted by a few pixels, with a random score."""

        def __init__(self):
            super().__init__()
            self.data_preprocessor = torch.nn.Identity()
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        @property
        def net(self):  # the adapter reads model.net, as on MMModel
            return self

        def test_step(self, batch):
            out = []
            for sample in batch["data_samples"]:
                anns = coco.loadAnns(coco.getAnnIds(imgIds=sample.img_id, iscrowd=False))
                boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                   a["bbox"][1] + a["bbox"][3]] for a in anns]).reshape(-1, 4)
                boxes = boxes + rng.normal(0, 4, boxes.shape)
                scores = rng.uniform(0.1, 1, len(anns))
                labels = [cat_ids.index(a["category_id"]) for a in anns]
                for box, score, a in zip(boxes, scores, anns):
                    x0, y0, x1, y1 = box.tolist()
                    detections.append({"image_id": sample.img_id, "category_id": a["category_id"],
                                       "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)})
                pred = DetDataSample(metainfo=sample.metainfo)
                pred.pred_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32),
                                                   scores=torch.tensor(scores, dtype=torch.float32),
                                                   labels=torch.tensor(labels, dtype=torch.long))
                out.append(pred)
            return out

    ours = task.evaluate(Oracle())
    ev = COCOeval(coco, coco.loadRes(detections), "bbox")
    ev.params.imgIds = sorted({d["image_id"] for d in detections})
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ours["bbox_mAP"] > 10
    assert ours["bbox_mAP"] == pytest.approx(100 * ev.stats[0], abs=0.05)  # CocoMetric rounds to 3 decimals
    assert ours["bbox_AP50"] == pytest.approx(100 * ev.stats[1], abs=0.05)
    assert ours["bbox_AP75"] == pytest.approx(100 * ev.stats[2], abs=0.05)


def test_missing_annotation_file_is_one_line_error(det_cfg, shared_dir, capsys):
    from vitquant.cli import preflight
    from vitquant.config import validate_calibrate

    argv = [*TINY_DET, f"data.root={shared_dir / 'data' / 'coco128'}", "data.train_ann=annotations/missing.json"]
    with pytest.raises(SystemExit) as exit_info:
        preflight("calibrate", validate_calibrate, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: data.train_ann=")


def test_classification_checkpoint_is_one_line_error(det_cfg, tmp_path, capsys):
    from vitquant.cli import guarded
    from vitquant.pipelines.calibrate import run_calibration

    path = tmp_path / "swin_tiny.pth"
    torch.save({"patch_embed.proj.weight": torch.zeros(96, 3, 4, 4), "head.fc.weight": torch.zeros(1000, 768)}, path)
    with pytest.raises(SystemExit) as exit_info:
        guarded(run_calibration)(det_cfg(f"model.checkpoint={path}"))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "classification or backbone-only" in err[0]
    assert not (tmp_path / "run").exists()
