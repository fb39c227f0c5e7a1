"""Label-free fidelity of a quantized classifier to its float reference, accumulated batch by batch.

No labels are needed: each metric compares the quantized model's logits ``z_q`` with the float model's
``z_fp`` on the same images, so it can be measured on any natural images (ImageNet models here have no
ImageNet images). Over ``N`` images with ``p = softmax(z_fp)`` and ``q = softmax(z_q)``:

- ``agree_top1`` = 100 · (1/N) Σᵢ [argmax z_fp,i = argmax z_q,i]: the percentage of images on which the
  quantized model predicts the float model's class. It is the top-1 of the quantized model against the float
  model's predictions as labels; a model with perfect top-1 agreement has the float model's top-1 on any data.
- ``kl`` = (1/N) Σᵢ KL(pᵢ ‖ qᵢ) = (1/N) Σᵢ Σ_c pᵢc (log pᵢc − log qᵢc), in nats: how much probability mass the
  quantized model moves away from the float model's belief, including below the top class (the knowledge
  distillation loss of QAT, so PTQ and QAT are measured on the same scale). Computed from log-softmax in
  float64, so a class with p = 0 in float32 contributes exactly 0.
- ``logit_sqnr_db`` = 10 · log₁₀(Σᵢ ‖z_fp,i‖² / Σᵢ ‖z_fp,i − z_q,i‖²): signal-to-quantization-noise ratio of
  the logits over the whole set (ratio of sums, so a few images with tiny logits do not dominate); +inf when
  the logits are identical.

Ties in argmax break the same way for both models (``torch.argmax``: the first maximal index).
"""
from __future__ import annotations

import math

import torch

FIDELITY_KEYS = ("agree_top1", "kl", "logit_sqnr_db")


def kl_per_image(reference_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(reference) ‖ softmax(logits)) per row, in nats, computed in float64."""
    log_p = torch.log_softmax(reference_logits.double(), dim=-1)
    log_q = torch.log_softmax(logits.double(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


class Fidelity:
    """Running sums of the fidelity metrics; ``update`` per batch, ``result`` at the end."""

    def __init__(self) -> None:
        self.n = self.agree = 0
        self.kl_sum = self.signal = self.noise = 0.0

    def update(self, reference_logits: torch.Tensor, logits: torch.Tensor) -> None:
        reference_logits, logits = reference_logits.detach().float().cpu(), logits.detach().float().cpu()
        if reference_logits.shape != logits.shape:
            raise RuntimeError(f"reference logits {tuple(reference_logits.shape)} and model logits "
                               f"{tuple(logits.shape)} differ in shape: not the same classifier")
        self.n += len(logits)
        self.agree += int((reference_logits.argmax(-1) == logits.argmax(-1)).sum())
        self.kl_sum += float(kl_per_image(reference_logits, logits).sum())
        self.signal += float(reference_logits.double().pow(2).sum())
        self.noise += float((reference_logits.double() - logits.double()).pow(2).sum())

    def result(self) -> dict[str, float]:
        n = max(self.n, 1)
        if self.noise == 0.0:
            sqnr = math.inf
        elif self.signal == 0.0:
            sqnr = -math.inf
        else:
            sqnr = 10.0 * math.log10(self.signal / self.noise)
        return {"agree_top1": 100.0 * self.agree / n, "kl": self.kl_sum / n, "logit_sqnr_db": sqnr}
