"""Quant twins of ``nn.Linear`` and ``nn.Conv2d``: a weight site and (for Linear) an input site.

They subclass the float layers and keep the same parameter names, so a twin model's state dict
is the float model's plus quantizer state, and code that checks ``isinstance(m, nn.Linear)``
still works.

Twins rebuild their own structure from a checkpoint (``_load_from_state_dict``), so a loader needs
no knowledge of the method that changed them: a stored ``bias`` the layer lacks (a LayerNorm folded into
a bias-free linear, RepQ-ViT on Swin's patch-merging reduction) is re-created, and so is a stored
output branch (``LinearBranch``, e.g. AIQViT's low-rank compensation) from its own extra state.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vitquant.errors import UserError
from vitquant.nn.site import QuantSite

BRANCH = "branch"  # the attribute (and state-dict prefix) of a QuantLinear's output branch


class LinearBranch(nn.Module):
    """A module that computes a ``QuantLinear``'s output instead of ``Q_w(W)·x̂ + b``: ``forward(layer, x̂)``.

    Subclasses register a name (``@LinearBranch.register("lowrank")``), stored in their extra state, and
    rebuild themselves from a checkpoint with ``from_state`` (shapes from the stored tensors). Registration
    is how a method adds structure to a linear layer without the layer, or the checkpoint loader, knowing it.
    """

    kinds: ClassVar[dict[str, type[LinearBranch]]] = {}
    kind: ClassVar[str] = ""
    legacy_prefix: ClassVar[str | None] = None  # where checkpoints before registration kept it (then no kind)

    @classmethod
    def register(cls, kind: str) -> Callable[[type[LinearBranch]], type[LinearBranch]]:
        def add(branch: type[LinearBranch]) -> type[LinearBranch]:
            branch.kind = kind
            cls.kinds[kind] = branch
            return branch
        return add

    @classmethod
    def from_state(cls, layer: QuantLinear, state: dict[str, Any], prefix: str) -> LinearBranch:
        """A branch of the shapes stored under ``prefix`` in ``state`` (values are loaded afterwards)."""
        raise NotImplementedError(f"{cls.__name__} must implement from_state")

    def get_extra_state(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Structure was taken from the extra state by ``from_state``; nothing is left to set."""

    @classmethod
    def stored(cls, layer: QuantLinear, state: dict[str, Any], prefix: str) -> LinearBranch | None:
        """The branch a checkpoint holds for the layer at ``prefix`` (None without one). Keys of a registered
        kind's ``legacy_prefix`` are moved under ``branch.`` first, so older checkpoints load too."""
        for kind, branch in cls.kinds.items():
            old = f"{prefix}{branch.legacy_prefix}." if branch.legacy_prefix else None
            for key in [k for k in state if old and k.startswith(old)]:
                state[f"{prefix}{BRANCH}.{key[len(old):]}"] = state.pop(key)
                state.setdefault(f"{prefix}{BRANCH}._extra_state", {"kind": kind})
        extra = state.get(f"{prefix}{BRANCH}._extra_state")
        if extra is None:
            return None
        if extra.get("kind") not in cls.kinds:
            raise UserError(f"{prefix}{BRANCH}: the checkpoint holds a {extra.get('kind')!r} branch, which no "
                            f"imported module registers (known: {sorted(cls.kinds)})")
        return cls.kinds[extra["kind"]].from_state(layer, state, f"{prefix}{BRANCH}.")


class QuantLinear(nn.Linear):
    """y = Q_a(x) · Q_w(W)ᵀ + b, or, with a ``branch`` (``LinearBranch``), the branch's output on Q_a(x)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 input_kind: str = "linear_in", is_end: bool = False) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.input_site = QuantSite(input_kind, channel_dim=-1, is_end=is_end)
        self.weight_site = QuantSite("weight", channel_dim=0, is_end=is_end)
        self.register_module(BRANCH, None)

    @classmethod
    def from_float(cls, linear: nn.Linear, input_kind: str, is_end: bool = False) -> QuantLinear:
        twin = cls(linear.in_features, linear.out_features, linear.bias is not None, input_kind, is_end)
        twin.weight, twin.bias = linear.weight, linear.bias
        return twin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_site(x)
        if self.branch is not None:
            return self.branch(self, x)
        return F.linear(x, self.weight_site(self.weight), self.bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # Structure a calibration added: a folded bias, an output branch (module docstring).
        if self.bias is None and prefix + "bias" in state_dict:
            self.bias = nn.Parameter(torch.zeros_like(state_dict[prefix + "bias"], device=self.weight.device))
        if self.branch is None:
            branch = LinearBranch.stored(self, state_dict, prefix)
            if branch is not None:
                self.branch = branch.to(self.weight.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


class QuantConv2d(nn.Conv2d):
    """Patch-embedding convolution: quantized weight, float input (the image is already 8-bit)."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, is_end: bool = True) -> QuantConv2d:
        twin = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                   conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        twin.weight, twin.bias = conv.weight, conv.bias
        twin.weight_site = QuantSite("weight", channel_dim=0, is_end=is_end)
        return twin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight_site(self.weight), self.bias)
