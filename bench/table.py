"""Markdown table of benchmark rows, seeds aggregated as mean ± std."""
from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from vitquant.io.atomic import write_text

GROUP = ("model", "policy", "variant", "w_bits", "a_bits", "budget")


def mean_std(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def write_table(rows: list[dict], path: Path) -> str:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r.get(k, r["method"]) if k == "variant" else r.get(k) for k in GROUP)].append(r)
    lines = ["| model | policy | method | W/A | budget | seeds | FP top-1 | top-1 | drop | calib s | peak MB | "
             "eval time ratio (quant/FP) |", "|" + "---|" * 12]
    for key in sorted(groups, key=lambda k: (k[0], k[1], -k[3], k[2])):
        g = groups[key]
        model, policy, method, w, a, budget = key
        def stat(name: str, digits: int = 2) -> str:
            return mean_std([r[name] for r in g], digits)  # noqa: B023 - used within this iteration

        drops = mean_std([r["fp_top1"] - r["top1"] for r in g])
        ratio = mean_std([r["eval_seconds"] / r["fp_eval_seconds"] for r in g])
        lines.append(f"| {model} | {policy} | {method} | W{w}A{a} | {budget} | {len(g)} | {stat('fp_top1')} "
                     f"| {stat('top1')} | {drops} | {stat('calib_seconds', 1)} | {stat('peak_memory_mb', 0)} "
                     f"| {ratio} |")
    text = "\n".join(lines) + "\n"
    write_text(path, text)
    return text
