"""Label-free fidelity metrics: hand-computed values, accumulation, and the classification task's one pass."""
from __future__ import annotations

import copy
import math
from functools import partial

import pytest
import torch
from PIL import Image
from test_classification import TINY, AlwaysClass0

from vitquant.engines.context import CalibContext
from vitquant.engines.range_init import init_ranges
from vitquant.errors import UserError
from vitquant.methods.recipe import BitWidths, Recipe
from vitquant.models.quantize import quantized_twin
from vitquant.nn import SITE_KINDS, set_quant_state
from vitquant.quant.uniform import UniformQuantizer
from vitquant.tasks.classification import ClassificationTask
from vitquant.tasks.fidelity import FIDELITY_KEYS, Fidelity, kl_per_image

# Row 1: p = (1/2, 1/2), q = (3/4, 1/4): same argmax (ties break to index 0), KL = ½·ln(4/3).
# Row 2: p = softmax(2, 0), q = softmax(0, 2): argmax differs, KL = (p₁ − p₂)·2 = 2·tanh(1).
REFERENCE = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
QUANTIZED = torch.tensor([[math.log(3.0), 0.0], [0.0, 2.0]])


def test_hand_computed_metrics():
    torch.testing.assert_close(kl_per_image(REFERENCE, QUANTIZED),
                               torch.tensor([0.5 * math.log(4 / 3), 2 * math.tanh(1.0)], dtype=torch.float64))
    fidelity = Fidelity()
    fidelity.update(REFERENCE, QUANTIZED)
    result = fidelity.result()
    assert result["agree_top1"] == 50.0
    assert result["kl"] == pytest.approx((0.5 * math.log(4 / 3) + 2 * math.tanh(1.0)) / 2, rel=1e-7)  # float32 inputs
    # signal Σz² = 4; noise Σ(z − ẑ)² = ln²3 + 4 + 4
    assert result["logit_sqnr_db"] == pytest.approx(10 * math.log10(4 / (math.log(3.0) ** 2 + 8)), rel=1e-6)


def test_batches_accumulate_like_one_pass():
    torch.manual_seed(1)
    ref, q = torch.randn(10, 7), torch.randn(10, 7)
    whole, parts = Fidelity(), Fidelity()
    whole.update(ref, q)
    for i in range(0, 10, 3):
        parts.update(ref[i:i + 3], q[i:i + 3])
    assert parts.n == 10 and parts.result() == pytest.approx(whole.result(), rel=1e-9)


def test_identical_logits_agree_fully_with_zero_kl_and_infinite_sqnr():
    logits = torch.randn(5, 1000) * 10
    fidelity = Fidelity()
    fidelity.update(logits, logits.clone())
    assert fidelity.result() == {"agree_top1": 100.0, "kl": 0.0, "logit_sqnr_db": math.inf}


def test_other_classifier_shape_is_refused():
    with pytest.raises(RuntimeError, match="differ in shape"):
        Fidelity().update(torch.zeros(2, 3), torch.zeros(2, 4))


@pytest.fixture
def tiny_folders(tmp_path) -> dict[str, dict]:
    """The same 6 images as a labeled folder (3 classes) and as an unlabeled one."""
    for cls in range(3):
        for i in range(2):
            path = tmp_path / "val" / f"c{cls}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), color=(80 * cls, 60 * i, 30)).save(path)
    return {"labeled": {"format": "folder", "root": str(tmp_path), "train_split": "val", "val_split": "val"},
            "unlabeled": {"format": "images", "root": str(tmp_path), "train_split": "val", "val_split": "val"}}


def test_quantizers_off_agree_fully_with_zero_kl_and_on_do_not(tiny_folders):
    task = ClassificationTask(TINY, tiny_folders["labeled"], batch_size=4)
    fp = task.build_model()
    recipe = Recipe("t", {"weight": partial(UniformQuantizer, granularity="channel"),
                          "activation": partial(UniformQuantizer)}, [init_ranges], n_calib=4)
    q = quantized_twin(fp, recipe, list(SITE_KINDS), BitWidths(4, 4, 4, 4), seed=0)
    recipe.calibrate(q, CalibContext(fp, task.calibration_images(4, seed=0)[0], torch.device("cpu"), 0))
    quantized = task.evaluate(q, "cpu", reference=fp)
    assert quantized["kl"] > 1e-6 and quantized["logit_sqnr_db"] < 60
    set_quant_state(q, weights=False, activations=False)
    metrics = task.evaluate(q, "cpu", reference=fp)
    assert metrics["agree_top1"] == 100.0 and metrics["kl"] < 1e-10 and metrics["logit_sqnr_db"] > 80
    assert metrics["top1"] == metrics["fp_top1"] and metrics["n_images"] == 6
    assert metrics["model_seconds"] > 0 and metrics["reference_seconds"] > 0


def test_labeled_evaluation_keeps_accuracy_and_adds_fidelity(tiny_folders):
    task = ClassificationTask(TINY, tiny_folders["labeled"], batch_size=4)
    plain = task.evaluate(AlwaysClass0(), "cpu")
    assert plain == {"top1": 100 / 3, "top5": 100.0, "n_images": 6} and task.metric_keys == ("top1", "top5")
    fp = task.build_model()
    with_ref = task.evaluate(AlwaysClass0(), "cpu", reference=fp)
    assert with_ref["top1"] == plain["top1"] and set(FIDELITY_KEYS) <= set(with_ref)
    assert with_ref["fp_top1"] == task.evaluate(fp, "cpu")["top1"]


def test_unlabeled_evaluation_reports_only_fidelity(tiny_folders):
    task = ClassificationTask(TINY, tiny_folders["unlabeled"], batch_size=4)
    assert task.metric_keys == FIDELITY_KEYS
    fp = task.build_model()
    metrics = task.evaluate(copy.deepcopy(fp), "cpu", reference=fp)
    assert "top1" not in metrics and "fp_top1" not in metrics
    assert metrics["agree_top1"] == 100.0 and metrics["kl"] == 0.0 and metrics["n_images"] == 6
    with pytest.raises(UserError, match="data.format=images has no labels.*float model"):
        task.evaluate(fp, "cpu")


def test_fidelity_of_a_constant_model_is_its_agreement_with_fp(tiny_folders):
    task = ClassificationTask(TINY, tiny_folders["unlabeled"], batch_size=4)
    fp = task.build_model()
    images = torch.stack([task.dataset("val")[i][0] for i in range(6)])
    with torch.no_grad():
        fp_class0 = float((fp(images).argmax(-1) == 0).float().mean()) * 100
    assert task.evaluate(AlwaysClass0(), "cpu", reference=fp)["agree_top1"] == pytest.approx(fp_class0)

