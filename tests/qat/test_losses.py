"""Multi-crop KD losses."""
import torch
import torch.nn.functional as F

from vitquant.qat.losses import dense_from_topk, marginal_smoothing, soft_cross_entropy, teacher_targets


def test_soft_ce_with_one_hot_teacher_is_cross_entropy():
    logits = torch.randn(3 * 4, 10)  # 3 images x 4 crops
    labels = torch.randint(0, 10, (3,)).repeat_interleave(4)
    one_hot = F.one_hot(labels, 10).float()
    assert torch.allclose(soft_cross_entropy(logits, one_hot), F.cross_entropy(logits, labels))


def test_marginal_smoothing_keeps_topk_and_spreads_the_rest():
    p = torch.tensor([[0.5, 0.2, 0.1, 0.1, 0.05, 0.05]])
    out = marginal_smoothing(p, 2)
    assert torch.allclose(out, torch.tensor([[0.5, 0.2, 0.075, 0.075, 0.075, 0.075]]))
    assert torch.allclose(out.sum(-1), torch.ones(1))
    assert torch.equal(marginal_smoothing(p, None), p)
    idx, val = torch.tensor([[1, 0]]), torch.tensor([[0.2, 0.5]])
    assert torch.allclose(dense_from_topk(idx, val, 6), out)


def test_teacher_targets_are_probabilities():
    t = teacher_targets(torch.randn(5, 7), k=3)
    assert torch.allclose(t.sum(-1), torch.ones(5)) and (t >= 0).all()
