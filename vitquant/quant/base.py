"""Base class of every fake quantizer.

A quantizer maps a float tensor ``x`` to its de-quantized value ``x̂`` (fake quantization) so that
the float model simulates integer arithmetic. Its parameters (scales, zero points, shifts, flags)
live in ``state_dict`` — as buffers, or as parameters when a method learns them — so a quantized
checkpoint reloads exactly. Structure that is not a tensor (granularity, bits) travels as
``extra_state``; data-dependent shapes (one scale per channel) are re-created on load.

Granularity: ``tensor`` (one set of parameters), ``channel`` (one per index along ``channel_dim``:
output rows for weights, hidden features for activations) or ``head`` (one per attention head,
dim 1 of a (B, heads, N, D) tensor).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vitquant.errors import UserError
from vitquant.quant.stats import (
    DEFAULT_MAX_ELEMENTS,
    SEARCH_MAX_ELEMENTS,
    Observation,
    RowSampler,
    observe,
    subsample_rows,
)

GRANULARITIES = ("tensor", "channel", "head")


class Quantizer(nn.Module):
    """Fake quantizer: ``init_from`` calibration data, then ``forward`` returns ``x̂``.

    While ``calibrating`` is set, the first tensor an uninitialised quantizer sees initialises it
    (RepQ-ViT/I&S-ViT calibrate this way: one forward over the calibration batch, each layer
    seeing the already quantized output of the layers before it). Outside calibration an
    uninitialised quantizer raises instead of silently fitting itself to evaluation data.

    Every quantizer fits itself from an :class:`~vitquant.quant.stats.Observation` (``initialize``):
    a bounded seeded row sample plus exact extrema, built by the shared observation path
    (``observe`` for one tensor; ``start_observing``/``finish_observing`` to stream micro-batches,
    during which ``forward`` observes ``x`` and quantizes it with the current parameters, if any).
    What a quantizer computes from it (quantiles, searches) is its own; how much of the data it
    holds is the path's.
    """

    def __init__(self, bits: int, granularity: str = "tensor", channel_dim: int = -1,
                 max_elements: int = DEFAULT_MAX_ELEMENTS, search_max_elements: int = SEARCH_MAX_ELEMENTS,
                 seed: int = 0) -> None:
        super().__init__()
        if granularity not in GRANULARITIES:
            raise UserError(f"granularity={granularity!r} is not one of {GRANULARITIES}")
        if not 1 <= int(bits) <= 16:
            raise UserError(f"bits={bits} is out of range 1..16")
        self.bits = int(bits)
        self.granularity = granularity
        self.channel_dim = channel_dim
        self.max_elements = max_elements
        self.search_max_elements = search_max_elements
        self.seed = seed
        self.calibrating = False
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._ready: tuple[torch.Tensor, int] | None = None  # (flag tensor, its version) last seen True
        self._derived: dict[str, tuple[tuple, Any]] = {}  # name -> (key, value), see ``derived``
        self.sampler: RowSampler | None = None  # set while streaming observations (``start_observing``)

    # ----------------------------------------------------------------- layout helpers
    @property
    def axis(self) -> int | None:
        """Dimension that carries separate parameters (None for per-tensor)."""
        return {"tensor": None, "channel": self.channel_dim, "head": 1}[self.granularity]

    def observe(self, x: torch.Tensor) -> Observation:
        """The bounded observation of one calibration tensor (``vitquant.quant.stats``)."""
        return observe(x, self.axis, self.max_elements, self.seed)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """Calibration view of ``x``: (rows, channels), bounded in size by a seeded row subsample."""
        return self.observe(x).rows

    def search_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The rows that score a candidate search: at most ``search_max_elements`` values of ``rows``
        (a seeded row subsample, see ``vitquant.quant.stats``), since each candidate costs a pass."""
        return subsample_rows(rows, self.search_max_elements, self.seed)

    def expand(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Broadcast a per-channel parameter of shape (C,) (or (1,)) against ``x``."""
        if self.axis is None or p.numel() == 1:
            return p.reshape(())
        shape = [1] * x.dim()
        shape[self.axis] = -1
        return p.reshape(shape)

    # ----------------------------------------------------------------- calibration
    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> None:
        """Set every parameter from calibration data ``x`` (weights: the weight tensor itself)."""
        self.init_from_observation(self.observe(x))

    @torch.no_grad()
    def init_from_observation(self, obs: Observation) -> None:
        """Set every parameter from ``obs`` and mark the quantizer initialised."""
        self.initialize(obs)
        self.initialized.fill_(True)

    def initialize(self, obs: Observation) -> None:  # pragma: no cover - abstract
        """Set every parameter from ``obs`` (its row sample ``obs.rows`` and extrema ``obs.lo``/``obs.hi``)."""
        raise NotImplementedError

    def start_observing(self, max_elements: int | None = None) -> None:
        """Stream: until ``finish_observing``, ``forward`` adds its input to a bounded sample (at most
        ``max_elements`` values, default this quantizer's cap) and returns it quantized with the current
        parameters if initialised, else unchanged. Set ``self.sampler.share`` to the fraction of the
        calibration set each forward carries."""
        cap = self.max_elements if max_elements is None else min(self.max_elements, int(max_elements))
        self.sampler = RowSampler(self.axis, cap, self.seed)

    @torch.no_grad()
    def finish_observing(self) -> Observation | None:
        """Initialise from everything streamed since ``start_observing`` (nothing seen: stay as is);
        returns the observation (None when nothing was seen)."""
        sampler, self.sampler = self.sampler, None
        if sampler is None or sampler.n_rows == 0:
            return None
        obs = sampler.observation()
        self.init_from_observation(obs)
        return obs

    def quantize(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Fake-quantize ``x`` with the current parameters (differentiable through STE)."""
        raise NotImplementedError

    def is_ready(self) -> bool:
        """``bool(initialized)``, read from the tensor only when it changed since it was last True.

        Reading a flag on the accelerator is a host sync on every call; the buffer's identity and
        version counter (bumped by ``fill_``/``copy_``/``load_state_dict``) say whether it changed.
        """
        flag = self.initialized
        if self._ready is not None and self._ready[0] is flag and self._ready[1] == flag._version:
            return True
        ready = bool(flag)
        self._ready = (flag, flag._version) if ready else None
        return ready

    def derived(self, name: str, tensors: tuple[torch.Tensor, ...], extra: Any, compute) -> Any:
        """``compute()``, memoised until one of ``tensors`` is replaced or modified in place (identity
        and version counter) or ``extra`` (plain settings such as bits) changes: values derived from
        frozen parameters (clamp bounds) are then computed once, not on every forward."""
        key = (extra, tuple((t, t._version) for t in tensors))
        hit = self._derived.get(name)
        if hit is not None and hit[0][0] == extra and all(
                a is b and va == vb for (a, va), (b, vb) in zip(hit[0][1], key[1])):
            return hit[1]
        value = compute()
        self._derived[name] = (key, value)
        return value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sampler is not None:  # streaming: observe; quantize with warm-start parameters if any
            self.sampler.add(x)
            return self.quantize(x) if self.is_ready() else x
        if not self.is_ready():
            if not self.calibrating:
                raise RuntimeError(f"{type(self).__name__} used before calibration; run a method's "
                                   "range-initialisation stage (or load a quantized checkpoint) first")
            self.init_from(x)
        return self.quantize(x)

    # ----------------------------------------------------------------- state
    def set_param(self, name: str, value: torch.Tensor) -> None:
        """Replace buffer or parameter ``name`` by ``value`` (its shape may change at calibration)."""
        value = value.detach().to(self.initialized.device)
        if isinstance(getattr(self, name, None), nn.Parameter):
            setattr(self, name, nn.Parameter(value.clone(), requires_grad=getattr(self, name).requires_grad))
        else:
            self.register_buffer(name, value.clone())

    def make_learnable(self, *names: str) -> list[nn.Parameter]:
        """Turn buffers ``names`` into trainable parameters (LSQ/QDrop learn activation scales)."""
        out = []
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, nn.Parameter):
                delattr(self, name)
                setattr(self, name, nn.Parameter(value.clone()))
            out.append(getattr(self, name))
        return out

    def get_extra_state(self) -> dict[str, Any]:
        return {"bits": self.bits, "granularity": self.granularity, "channel_dim": self.channel_dim}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.bits = int(state["bits"])
        self.granularity = str(state["granularity"])
        self.channel_dim = int(state["channel_dim"])

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # Calibration decides shapes (one scale per channel): adopt the checkpoint's shapes first.
        for name, tensor in list(self._buffers.items()) + list(self._parameters.items()):
            key = prefix + name
            if tensor is not None and key in state_dict and state_dict[key].shape != tensor.shape:
                self.set_param(name, torch.empty_like(state_dict[key], device=tensor.device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, granularity={self.granularity}"
