"""A PTQ method as a recipe: which quantizer each site kind gets, and ordered calibration stages.

Methods differ in a handful of choices ("log√2 for post-Softmax, channel-wise post-LN, then
reparameterize"), so a method is data — a Hydra config that instantiates this class with
quantizer factories and stage callables from ``vitquant.engines`` — plus at most a small file.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from vitquant.engines.context import CalibContext
from vitquant.errors import UserError
from vitquant.nn.site import ACTIVATION_KINDS, QuantSite, iter_sites, set_quant_state
from vitquant.quant.base import Quantizer

log = logging.getLogger(__name__)
QuantizerFactory = Callable[..., Quantizer]
Stage = Callable[[nn.Module, CalibContext], None]


@dataclass(frozen=True)
class BitWidths:
    """Bits per site: weights, activations, and the patch-embed/classifier (“end”) layers."""

    w: int
    a: int
    end_w: int
    end_a: int

    def for_site(self, site: QuantSite) -> int:
        if site.is_weight:
            return self.end_w if site.is_end else self.w
        return self.end_a if site.is_end else self.a


class Recipe:
    """Quantizer per site kind + ordered stages.

    ``quantizers`` maps a site kind to a factory ``f(bits=, channel_dim=, seed=) -> Quantizer``;
    the key ``activation`` is the fallback for activation kinds the method does not name.
    ``kind_bits`` pins the bits of a kind (FQ-ViT's 4-bit attention probabilities). Any other
    keyword (``iters``, ``batch_size``, ``lr``) is a method-wide option that the stage configs
    interpolate (``iters: ${method.iters}``), so ``method.iters=200`` changes every stage at once.
    """

    def __init__(self, name: str, quantizers: Mapping[str, QuantizerFactory], stages: Sequence[Stage],
                 n_calib: int, kind_bits: Mapping[str, int] | None = None, **options: object) -> None:
        unknown = set(quantizers) - set(ACTIVATION_KINDS) - {"weight", "activation"}
        if unknown:
            raise UserError(f"method {name}: unknown site kinds {sorted(unknown)}; "
                             f"valid: weight, activation, {', '.join(ACTIVATION_KINDS)}")
        self.name = name
        self.quantizers = dict(quantizers)
        self.stages = list(stages)
        self.n_calib = int(n_calib)
        self.kind_bits = dict(kind_bits or {})
        self.options = options

    def factory_for(self, kind: str) -> QuantizerFactory | None:
        if kind in self.quantizers:
            return self.quantizers[kind]
        return self.quantizers.get("weight" if kind == "weight" else "activation")

    def attach(self, model: nn.Module, kinds: Sequence[str], bits: BitWidths, seed: int = 0) -> None:
        """Give every site whose kind the policy enables its quantizer; others stay float.

        A recipe without quantizers (``fp``) is the float model whatever the policy says.
        """
        enabled = set(kinds) if self.quantizers else set()
        for name, site in iter_sites(model):
            factory = self.factory_for(site.kind) if site.kind in enabled else None
            if site.kind in enabled and factory is None:
                raise UserError(f"method {self.name} has no quantizer for site kind {site.kind!r} ({name}), "
                                 "which the policy quantizes; add it to the method's quantizers")
            n_bits = self.kind_bits.get(site.kind, bits.for_site(site))
            site.quantizer = self.build(factory, site.kind, n_bits, site.channel_dim, seed) if factory else None
        for kind in sorted(set(self.quantizers) - enabled - {"activation"}):
            log.warning("method %s: its %s quantizer has no site under this policy (kind not quantized)",
                        self.name, kind)

    def build(self, factory: QuantizerFactory, kind: str, bits: int, channel_dim: int, seed: int) -> Quantizer:
        try:
            return factory(bits=bits, channel_dim=channel_dim, seed=seed)
        except (TypeError, UserError) as e:  # an option the (swapped-in) quantizer does not take, or a bad value
            raise UserError(f"method {self.name}: quantizer for site kind {kind!r}: {e}") from None

    def calibrate(self, model: nn.Module, ctx: CalibContext) -> None:
        """Run the stages in order, then leave every quantizer on."""
        for stage in self.stages:
            log.info("method %s: stage %s", self.name, getattr(stage, "func", stage).__name__)
            stage(model, ctx)
        set_quant_state(model, weights=True, activations=True)
