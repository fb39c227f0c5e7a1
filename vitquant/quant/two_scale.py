"""TSPTQ-ViT's value-aware two-scaled scaling factors (V-2SF) for post-Softmax and post-GELU.

Spec: ``specs/tsptq.md`` ("our implementable reading"; the paper has no code). A b-bit code is one
flag bit (the MSB) plus b−1 bits. Small, dense values use the fine scale S₁ and keep their least
significant bits; the rare large ones use the coarse scale S₂ = 2^k·S₁ and keep the most
significant bits, so de-quantization is a shift apart between the two regions::

    flag = x ≥ B                                   (region boundary B, below)
    q    = clamp(round(x / S₁), lo₁, hi₁)          flag 0   (fine)
    q    = clamp(round(x / S₂), 0, 2^(b−1) − 1)    flag 1   (coarse)
    x̂   = q · (S₂ if flag else S₁)

* post-Softmax (``signed_fine=False``): the fine field is unsigned, lo₁, hi₁ = 0, 2^(b−1) − 1 and
  B = 2^(b−1)·S₁.
* post-GELU (``signed_fine=True``): GELU's negative values (≥ −0.17) are all small, i.e. exactly
  the dense region the fine scale serves, while the coarse region only ever holds positives. So
  the fine field is a (b−1)-bit two's-complement number: lo₁, hi₁ = −2^(b−2), 2^(b−2) − 1 and
  B = 2^(b−2)·S₁, covering [−2^(b−2)·S₁, 2^(b−2)·S₁). A sign (rather than an offset/zero point)
  keeps x = 0 ↦ code 0 and the integer accumulation free of a zero-point term, which is what the
  power-of-two ratio between the scales is for; it costs the fine positives one bit of range,
  which the coarse region takes over.

Calibration: S₁ and k are searched on the calibration tensor by output MSE ‖x − x̂‖² over a grid:
for k ∈ 0..``max_shift`` and a top value t = α·max(x) (α on ``grid`` points in (0, 1]),
S₁ = t / ((2^(b−1) − 1)·2^k), so the coarse region ends at t (clipping when α < 1). With
``granularity='head'`` every head chooses independently. The Hessian-guided metric of PTQ4ViT is
available through ``vitquant.engines.hessian_search``, which uses ``candidates``/``set_candidate``.
"""
from __future__ import annotations

import torch

from vitquant.errors import UserError
from vitquant.quant.base import Quantizer
from vitquant.quant.select import select
from vitquant.quant.stats import Observation, least_error
from vitquant.quant.ste import round_ste


class TwoRegionQuantizer(Quantizer):
    """Two uniform grids sharing the b−1 code bits, picked per element by a flag bit.

    Subclasses define ``regions(x, *params)`` → (flag, S₁, range₁, S₂, range₂), name their (C,)
    parameters in ``param_names`` and list ``candidates(rows)`` (tuples of (C,) tensors from a
    (rows, C) calibration view). ``initialize`` keeps, per tensor/head, the candidate with the least
    ‖x − x̂‖²; the Hessian-guided search stage (PTQ4ViT) scores the same candidates with its own
    metric and calls ``set_candidate``. Shared by V-2SF and PTQ4ViT's twin uniform quantizer.
    """

    param_names: tuple[str, ...] = ()

    def regions(self, x: torch.Tensor, *params: torch.Tensor):  # pragma: no cover - abstract
        raise NotImplementedError

    def candidates(self, rows: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def codes(self, x: torch.Tensor, *params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(code, step, flag): straight-through rounded codes, the step of each element, the flags."""
        flag, s1, range1, s2, range2 = self.regions(x, *params)
        fine, coarse = torch.clamp(round_ste(x / s1), *range1), torch.clamp(round_ste(x / s2), *range2)
        code = select(flag, coarse, fine)
        return code, select(flag, s2.expand(flag.shape), s1.expand(flag.shape)), flag

    def fake_quant(self, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        code, step, _ = self.codes(x, *params)
        return code * step

    def params(self) -> tuple[torch.Tensor, ...]:
        """The current (C,) parameters, in ``param_names`` order."""
        return tuple(getattr(self, n) for n in self.param_names)

    def quantize_with(self, x: torch.Tensor, params: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Fake-quantize ``x`` (any layout) with candidate ``params`` of shape (C,)."""
        return self.fake_quant(x, *(self.expand(p, x) for p in params))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize_with(x, self.params())

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer (b−1)-bit fields and flag bits (the MSB) of ``x``; for tests and integer export."""
        code, _, flag = self.codes(x, *(self.expand(p, x) for p in self.params()))
        return code.to(torch.int64), flag

    def set_candidate(self, *params: torch.Tensor) -> None:
        for name, value in zip(self.param_names, params, strict=True):
            self.set_param(name, value)
        self.initialized.fill_(True)

    def initialize(self, obs: Observation) -> None:
        rows = obs.rows
        sample = self.search_rows(rows)
        mse = lambda *p: (self.fake_quant(sample, *p) - sample).pow(2).mean(0)  # noqa: E731
        self.set_candidate(*least_error(self.candidates(rows), mse))


class TwoScaleQuantizer(TwoRegionQuantizer):
    """V-2SF: fine scale S₁ (``scale``) and coarse S₂ = 2^k·S₁ (``shift`` = k), one flag bit."""

    param_names = ("scale", "shift")

    def __init__(self, bits: int, granularity: str = "tensor", channel_dim: int = -1,
                 signed_fine: bool = False, max_shift: int = 8, grid: int = 20, **kw) -> None:
        super().__init__(bits, granularity, channel_dim, **kw)
        if self.bits < (3 if signed_fine else 2):
            raise UserError(f"bits={bits} leaves no magnitude bits besides the flag (and sign)")
        self.signed_fine = bool(signed_fine)
        self.max_shift = int(max_shift)
        self.grid = int(grid)
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("shift", torch.zeros(1))

    @property
    def fine_range(self) -> tuple[int, int]:
        half = 2 ** (self.bits - 1)
        return (-half // 2, half // 2 - 1) if self.signed_fine else (0, half - 1)

    @property
    def coarse_range(self) -> tuple[int, int]:
        return 0, 2 ** (self.bits - 1) - 1

    def boundary(self, scale: torch.Tensor) -> torch.Tensor:
        """Smallest value that goes to the coarse region: (hi₁ + 1)·S₁."""
        return (self.fine_range[1] + 1) * scale

    def regions(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor):
        coarse = x >= self.boundary(scale)
        return coarse, scale, self.fine_range, scale * torch.pow(2.0, shift), self.coarse_range

    def candidates(self, rows: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        top = rows.abs().max(dim=0).values.clamp_min(1e-8)
        alphas = torch.linspace(1.0 / self.grid, 1.0, self.grid).tolist()
        out = []
        for k in range(self.max_shift + 1):
            shift = torch.full_like(top, float(k))
            out += [(a * top / (self.coarse_range[1] * 2 ** k), shift) for a in alphas]
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, signed_fine={self.signed_fine}, max_shift={self.max_shift}"
