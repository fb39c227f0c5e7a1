"""Distillation losses of multi-crop KD (FKD / VVTQ).

Soft cross-entropy of the student logits z against teacher probabilities p, averaged over crops::

    L = −(1/M) Σ_m Σ_c p_mc · log softmax(z_m)_c

With a one-hot p this is exactly the hard-label cross-entropy. ``marginal_smoothing`` is FKD's
``marginal_smoothing_k5`` storage: keep the top-k probabilities, spread the remaining mass
uniformly over the other C − k classes, (1 − Σ top-k)/(C − k) each.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Mean over rows of −Σ p·log softmax(z) (``Soft_CrossEntropy`` of FKD)."""
    return -(target_probs * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def dense_from_topk(indices: torch.Tensor, values: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Dense (…, C) probabilities from top-k (indices, probabilities), the rest spread uniformly."""
    k = indices.shape[-1]
    rest = ((1.0 - values.sum(-1, keepdim=True)) / max(n_classes - k, 1)).clamp_min(0.0)
    dense = rest.expand(*values.shape[:-1], n_classes).clone()
    return dense.scatter(-1, indices.long(), values.to(dense.dtype))


def marginal_smoothing(probs: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the top-``k`` probabilities and spread the rest uniformly (``k=None``: unchanged)."""
    if k is None or k >= probs.shape[-1]:
        return probs
    top = probs.topk(int(k), dim=-1)
    return dense_from_topk(top.indices, top.values, probs.shape[-1])


def teacher_targets(teacher_logits: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Teacher probabilities for the soft cross-entropy (optionally marginally smoothed)."""
    return marginal_smoothing(teacher_logits.float().softmax(-1), k)
