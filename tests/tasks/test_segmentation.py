"""Semantic segmentation on mmseg (a COCO128-derived set): data, calibrate → evaluate, twins, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("mmseg", reason="needs the mm stack (make setup-mm)")
pytestmark = pytest.mark.mm

from mm_pair import TINY_MM_SWIN  # noqa: E402

TINY_SEG = ["task=semantic_segmentation", "model=upernet_swin_micro", "data=coco128_semseg", *TINY_MM_SWIN]


@pytest.fixture
def seg_cfg(semseg_root, tmp_path):
    from conftest import run_config_factory

    return run_config_factory([*TINY_SEG, f"data.root={semseg_root}"], tmp_path)


def test_derived_set_has_the_annotated_classes_and_masks(semseg_root, shared_dir):
    from pycocotools.coco import COCO

    coco = COCO(str(shared_dir / "data" / "coco128" / "annotations" / "instances_train2017.json"))
    classes = json.loads((semseg_root / "classes.json").read_text())
    assert len(classes) == 81 and classes[0] == "background" and classes[1] == "person"
    image_id = sorted(coco.getImgIds())[0]
    name = coco.loadImgs(image_id)[0]["file_name"].replace(".jpg", ".png")
    labels = np.array(Image.open(semseg_root / "annotations" / "training" / name))
    anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=image_id)), key=lambda a: a["area"])
    smallest = anns[0]  # painted last: all its pixels carry its class
    expected = classes.index(coco.loadCats(smallest["category_id"])[0]["name"])
    assert (labels[coco.annToMask(smallest).astype(bool)] == expected).all()
    covered = np.zeros_like(labels, dtype=bool)
    for ann in anns:
        covered |= coco.annToMask(ann).astype(bool)
    assert (labels[~covered] == 0).all() and set(np.unique(labels[covered])) <= set(range(1, 81)) | {255}


def test_calibrate_then_evaluate_gives_the_same_miou(seg_cfg, tmp_path):
    from vitquant.pipelines.calibrate import run_calibration
    from vitquant.pipelines.evaluate import run_evaluation

    metrics = run_calibration(seg_cfg("method=repqvit", "bits=4", "eval_fp=false"))
    assert metrics["primary_metric"] == "mIoU" and 0 <= metrics["mIoU"] <= 100 and "fp_aAcc" in metrics
    again = run_evaluation(seg_cfg(f"checkpoint={tmp_path / 'run' / 'quantized.pt'}", "task=semantic_segmentation",
                                   "task.max_eval_images=2", "task.image_scale=[128,128]", name="evaluate", out="ev"))
    assert {k: again[k] for k in ("mIoU", "aAcc", "mAcc")} == {k: metrics[k] for k in ("mIoU", "aAcc", "mAcc")}


def test_quantizers_off_give_the_float_segmentor(seg_cfg):
    from mm_pair import float_and_twin_predictions

    a, b = float_and_twin_predictions(seg_cfg("method=percentile"))
    torch.testing.assert_close(a.seg_logits.data, b.seg_logits.data)


def test_missing_mask_folder_is_one_line_error(semseg_root, capsys):
    from vitquant.cli import preflight
    from vitquant.config import validate_calibrate

    argv = [*TINY_SEG, f"data.root={semseg_root}", "data.train_masks=annotations/nowhere"]
    with pytest.raises(SystemExit) as exit_info:
        preflight("calibrate", validate_calibrate, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: data.train_masks=")


def test_reference_trainer_steps_a_segmentor(seg_cfg):
    """bench.mm_reference's shared loop trains an mmseg segmentor (one step on the derived set's masks)."""
    from bench.mm_reference import fit, segmentation_train_set
    from vitquant.tasks.base import build_task

    cfg = seg_cfg()
    task = build_task(cfg.task, cfg.model, cfg.data)
    net = task.build_model(load_weights=False).net
    net.data_preprocessor.size = (128, 128)
    before = net.decode_head.conv_seg.weight.detach().clone()
    fit(net, segmentation_train_set(task, cfg), minutes=1e-4, lr=1e-3, batch_size=2, seed=0)
    assert not net.training
    assert not torch.equal(before, net.decode_head.conv_seg.weight)
