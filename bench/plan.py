"""What ``make bench`` runs: one entry per method (or method variant), with its grid and budget.

Every reconstruction method runs at the same reduced CPU budget unless ``--full`` (official
budgets, for a GPU): 256 calibration images, 200 iterations per block and per stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field

CPU_BUDGET = "256 img, 200 it/block/stage"
CPU_RECON = ["method.n_calib=256", "method.iters=200"]


@dataclass(frozen=True)
class Entry:
    """One benchmark row family: ``method`` (+ ``overrides``) at each bits × policy × seed."""

    name: str                      # row label (``variant`` column); the method's own name by default
    method: str
    bits: tuple[int, ...]
    seeds_by_bits: dict[int, tuple[int, ...]] = field(default_factory=dict)  # default: seed 0
    policies: tuple[str, ...] = ("default",)
    cpu: tuple[str, ...] = ()      # reduced-budget overrides (default run)
    full: tuple[str, ...] = ()     # official-budget overrides (--full)
    budget: str = "official"       # budget label of the default run

    def seeds(self, bits: int) -> tuple[int, ...]:
        return self.seeds_by_bits.get(bits, (0,))


THREE = (0, 1, 2)
AIQVIT_ABLATIONS = [  # the paper's ablation: each component switched off in turn
    ("no lowrank", "method.lowrank=false"),
    ("fixed rank", "method.rank_search=false"),
    ("log√2 post-Softmax", "quantizer@method.quantizers.post_softmax=logsqrt2"),
    ("no curriculum", "method.curriculum=false"),
]
ENTRIES = [
    Entry("minmax", "minmax", (8, 6, 4, 3)),
    Entry("percentile", "percentile", (8, 6, 4, 3)),
    Entry("repqvit", "repqvit", (6, 4, 3), {3: THREE, 4: THREE}),
    Entry("isvit", "isvit", (6, 4, 3), {3: THREE, 4: THREE}, cpu=tuple(CPU_RECON), budget=CPU_BUDGET),
    Entry("isvit(no exp. rounding)", "isvit", (6, 4, 3),
          cpu=(*CPU_RECON, "method.quantizers.post_softmax.round_exponent=false"),
          full=("method.quantizers.post_softmax.round_exponent=false",), budget=CPU_BUDGET),
    Entry("isvit(log√2 softmax)", "isvit", (4, 3),
          cpu=(*CPU_RECON, "quantizer@method.quantizers.post_softmax=logsqrt2"),
          full=("quantizer@method.quantizers.post_softmax=logsqrt2",), budget=CPU_BUDGET),
    Entry("qdrop", "qdrop", (6, 4, 3), {3: THREE, 4: THREE}, cpu=tuple(CPU_RECON), budget=CPU_BUDGET),
    Entry("aiqvit", "aiqvit", (4, 3), {3: THREE}, cpu=tuple(CPU_RECON), budget=CPU_BUDGET),
    *(Entry(f"aiqvit({label})", "aiqvit", (4, 3), cpu=(*CPU_RECON, switch), full=(switch,), budget=CPU_BUDGET)
      for label, switch in AIQVIT_ABLATIONS),
    Entry("tsptq", "tsptq", (8, 6, 4), policies=("full", "default")),
    Entry("ptq4vit", "ptq4vit", (8, 6, 4), policies=("default", "full")),
    Entry("fqvit", "fqvit", (8, 6, 4), policies=("full", "default")),
    Entry("fqvit(8/8/4 attn)", "fqvit", (8,), policies=("full",), cpu=("+method.kind_bits.post_softmax=4",),
          full=("+method.kind_bits.post_softmax=4",)),
]
