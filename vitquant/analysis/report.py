"""Sweep results as a paper table and plots: ``python -m vitquant.analysis.report <sweep dirs or run dirs>``.

Reads every job of one or more Hydra multirun folders (or single run folders, or a W&B project with
``--wandb ENTITY/PROJECT``) and writes, next to the sweep (or in ``--out``), and prints:

- ``report.md`` / ``report.csv``: rows model × bits (an FP row on top of each model), columns methods, cells the
  mean ± std over seeds of ``--metric`` (``top1`` by default; any key of ``metrics.json`` such as ``bbox_mAP``,
  ``mIoU`` or the label-free ``agree_top1``, ``kl``, ``logit_sqnr_db``), the best method of each row in bold (the
  lowest ``kl``);
- ``<metric>_vs_bits.png`` (one panel per model, one line per method, the FP value dashed) and
  ``drop_vs_calib_time.png`` (FP − quantized against calibration seconds, each method × model × bits a point);
- the jobs that failed or never ran. A sweep's expected jobs are expanded from its ``multirun.yaml`` with
  Hydra's own parser; a job without ``metrics.json`` is *failed* with the error line that vitquant's launchers
  recorded in ``failed_jobs.json`` (an exception, a one-line user error, a job cancelled or killed by Slurm,
  with its Slurm state), else with the last error line of its logs or of submitit's; a job without a folder
  nor a record is *missing* (never launched). Nothing is silently dropped.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitquant.extras import require
from vitquant.io.atomic import atomic_write, write_text
from vitquant.launch.cells import last_error_line, read_failures, read_texts, sweep_job_overrides

if TYPE_CHECKING:
    import pandas as pd

# Fidelity metrics (vitquant.tasks.fidelity) compare a model with its float self: the float model's own value is
# known without a run (it agrees with itself on every image), and for a divergence the smaller value is better.
FP_VALUE = {"agree_top1": 100.0}
LOWER_IS_BETTER = ("kl",)
FP = "FP"


@dataclass
class Job:
    """One run of a sweep: where it lives, its overrides, and its metrics or why there are none."""

    where: str
    overrides: str = ""
    metrics: dict[str, Any] | None = None
    status: str = "ok"          # ok | failed | missing
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------- folders
def last_log_error(files: Iterable[Path]) -> str:
    """The last line that looks like an error in ``files`` (logs), or ''."""
    return last_error_line(read_texts(files))


def expected_jobs(sweep: Path) -> list[str] | None:
    """The sweep's job overrides in job-number order, expanded from ``multirun.yaml`` like Hydra's basic sweeper;
    None when that is not possible (another sweeper)."""
    from omegaconf import OmegaConf

    try:
        return sweep_job_overrides(OmegaConf.load(sweep / "multirun.yaml").hydra)
    except Exception:  # noqa: BLE001 - a sweep we cannot expand is still read from its folders
        return None


def submitit_errors(sweep: Path) -> dict[int, str]:
    """Job number → last error line of its submitit logs (``<sweep>/.submitit/<id>/``), for jobs that left them.

    The job number is found in submitit's ``*_submitted.pkl`` as the ``job_id_for_<num>`` argument that Hydra's
    submitit launcher passes each job; the bytes are searched, never unpickled. Errors whose job cannot be found
    stay listed, unattributed (keys −1, −2, ...).
    """
    errors: dict[int, str] = {}
    for folder in sorted(p for p in (sweep / ".submitit").glob("*") if p.is_dir()):
        error = last_log_error(sorted(folder.glob("*_log.err")) + sorted(folder.glob("*_log.out")))
        if not error:
            continue
        found = [re.search(rb"job_id_for_(\d+)", p.read_bytes()) for p in folder.glob("*_submitted.pkl")]
        num = int(found[0].group(1)) if found and found[0] else -1 - sum(k < 0 for k in errors)
        errors[num] = error
    return errors


def read_sweep(sweep: Path) -> list[Job]:
    expected, recorded = expected_jobs(sweep), read_failures(sweep)
    folders = {int(p.name): p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()}
    numbers = sorted(set(folders) | set(range(len(expected or []))))
    jobs = [read_run(folders[n], expected[n] if expected and n < len(expected) else "") if n in folders
            else Job(str(sweep / str(n)), expected[n] if expected else "", status="missing")
            for n in numbers]
    for n, job in zip(numbers, jobs):  # the launcher's record: the job's own error line, also for killed jobs
        if job.status != "ok" and n in recorded:
            job.status, job.error = "failed", f"{recorded[n]['state']}: {recorded[n]['error']}"
    if any(j.status != "ok" and not j.error for j in jobs) and (sweep / ".submitit").is_dir():
        errors = submitit_errors(sweep)
        for n, job in zip(numbers, jobs):
            if job.status != "ok" and not job.error and n in errors:
                job.status, job.error = "failed", errors.pop(n)  # e.g. a user error, whose folder was removed
        jobs += [Job(str(sweep / ".submitit"), "(job number unknown)", status="failed", error=e)
                 for k, e in errors.items() if k < 0]
    return jobs


def read_run(folder: Path, overrides: str = "") -> Job:
    import json

    metrics_file = folder / "metrics.json"
    if metrics_file.is_file():
        return Job(str(folder), overrides, json.loads(metrics_file.read_text()))
    return Job(str(folder), overrides, status="failed",
               error=last_log_error(sorted(folder.glob("*.log")) + sorted(folder.glob("*.err"))) or "no metrics.json")


def read_folders(paths: Iterable[str | Path]) -> list[Job]:
    """Jobs of every sweep (folder with ``multirun.yaml``) and run (folder with ``metrics.json``) under ``paths``."""
    jobs: list[Job] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: not a folder (give sweep or run folders)")
        if (path / "multirun.yaml").is_file():
            jobs += read_sweep(path)
        elif (path / "metrics.json").is_file() or (path / "config.yaml").is_file():
            jobs.append(read_run(path))
        else:
            sweeps = sorted(p.parent for p in path.rglob("multirun.yaml"))
            runs = sorted(p.parent for p in path.rglob("metrics.json") if not any(s in p.parents for s in sweeps))
            if not sweeps and not runs:
                raise FileNotFoundError(f"{path}: no sweep (multirun.yaml) or run (metrics.json) found")
            jobs += read_folders(sweeps + runs)
    return jobs


# --------------------------------------------------------------------------------------------------------- W&B
def read_wandb(project: str, group: str | None = None, api: Any = None) -> list[Job]:
    """Jobs from a W&B project (``ENTITY/PROJECT``), optionally one group (sweep): metrics from each run's
    summary; a run that did not finish, or finished without metrics, is failed."""
    if api is None:
        api = require("wandb", "wandb").Api()
    jobs = []
    for run in api.runs(project, filters={"group": group} if group else None):
        summary = dict(getattr(run.summary, "_json_dict", run.summary))
        where = f"wandb:{project}/{run.id} ({run.name})"
        if run.state == "finished" and "model" in summary:
            jobs.append(Job(where, run.group or "", summary))
        else:
            jobs.append(Job(where, run.group or "", status="failed", error=f"W&B state {run.state}"))
    return jobs


# ------------------------------------------------------------------------------------------------------- table
def bits_label(m: dict[str, Any]) -> str:
    return f"W{m.get('w_bits')}A{m.get('a_bits')}"


def frame(jobs: list[Job], metric: str) -> pd.DataFrame:
    """One row per successful job: model, bits, method, seed, the metric, its FP value and calibration time."""
    pd = require("pandas", "report")
    rows = []
    for job in jobs:
        m = job.metrics
        if job.status != "ok" or m is None:
            continue
        if m.get(metric) is None:
            job.status, job.error = "failed", f"metrics.json has no {metric!r} (keys: {', '.join(sorted(m))})"
            continue
        rows.append({"model": m.get("model"), "policy": m.get("policy"), "method": m.get("method"),
                     "bits": bits_label(m), "w_bits": m.get("w_bits"), "a_bits": m.get("a_bits"),
                     "seed": m.get("seed"), "value": float(m[metric]),
                     "fp": fp_value(m, metric),
                     "calib_seconds": m.get("calib_seconds")})
    df = pd.DataFrame(rows, columns=["model", "policy", "method", "bits", "w_bits", "a_bits", "seed", "value",
                                     "fp", "calib_seconds"])
    if df["policy"].nunique() > 1:  # compare methods only under one policy: keep them apart
        df["method"] = df["method"] + "/" + df["policy"].astype(str)
    return df


def fp_value(m: dict[str, Any], metric: str) -> float | None:
    """The float model's value of ``metric``: ``fp_<metric>`` of the run, else the known one of a fidelity metric."""
    value = m.get(f"fp_{metric}", FP_VALUE.get(metric))
    return None if value is None else float(value)


def cell(mean: float, std: float, n: int, digits: int) -> str:
    if n > 1 and not math.isnan(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (over seeds) and count per (model, bits, method); the FP row of each model as method 'FP'."""
    stats = (df.groupby(["model", "w_bits", "a_bits", "bits", "method"], sort=False)
               .agg(mean=("value", "mean"), std=("value", "std"), n=("value", "size"),
                    fp=("fp", "mean"), calib_seconds=("calib_seconds", "mean")).reset_index())
    stats["drop"] = stats["fp"] - stats["mean"]
    return stats


def tables(stats: pd.DataFrame, digits: int = 2, lower_is_better: bool = False) -> tuple[str, pd.DataFrame]:
    """(markdown, wide numeric frame): rows model × bits with an FP row on top, columns methods; the best
    method (highest mean, or lowest with ``lower_is_better``) in bold."""
    pd = require("pandas", "report")
    methods = list(dict.fromkeys(stats["method"]))
    header = ["model", "bits", *methods]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    wide = []
    for model, by_model in stats.groupby("model", sort=False):
        fp = by_model.groupby("method", sort=False)["fp"].mean()
        if fp.notna().any():
            lines.append(f"| {model} | {FP} | " + " | ".join(
                f"{fp[m]:.{digits}f}" if m in fp and not math.isnan(fp[m]) else "" for m in methods) + " |")
            wide.append({"model": model, "bits": FP, **{m: fp.get(m) for m in methods}})
        order = by_model.sort_values(["w_bits", "a_bits"], ascending=False)
        for bits, row in order.groupby("bits", sort=False):
            by_method = row.set_index("method")
            best = by_method["mean"].min() if lower_is_better else by_method["mean"].max()
            cells = []
            for m in methods:
                if m not in by_method.index:
                    cells.append("")
                    continue
                r = by_method.loc[m]
                text = cell(r["mean"], r["std"], int(r["n"]), digits)
                cells.append(f"**{text}**" if r["mean"] == best and len(by_method) > 1 else text)
            lines.append(f"| {model} | {bits} | " + " | ".join(cells) + " |")
            wide.append({"model": model, "bits": bits,
                         **{m: by_method["mean"].get(m) for m in methods},
                         **{f"{m}_std": by_method["std"].get(m) for m in methods},
                         **{f"{m}_n": by_method["n"].astype("Int64").get(m) for m in methods}})
    return "\n".join(lines), pd.DataFrame(wide)


def problems_markdown(jobs: list[Job]) -> str:
    """The jobs that did not finish, with only the overrides that vary across the sweep."""
    bad = [j for j in jobs if j.status != "ok"]
    if not bad:
        return f"All {len(jobs)} jobs finished."
    common = set.intersection(*(set(j.overrides.split()) for j in jobs)) if len(jobs) > 1 else set()
    lines = [f"{len(bad)} of {len(jobs)} jobs did not finish:", "",
             "| status | job | overrides | error |", "|---|---|---|---|"]
    for j in bad:
        error = j.error.replace("|", "\\|")[:300]
        overrides = " ".join(o for o in j.overrides.split() if o not in common)
        lines.append(f"| {j.status} | {j.where} | {overrides} | {error} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- plots
def plot(stats: pd.DataFrame, metric: str, out: Path) -> list[Path]:
    """``<metric>_vs_bits.png`` and ``drop_vs_calib_time.png`` in ``out``."""
    require("matplotlib", "report").use("Agg")
    plt = require("matplotlib.pyplot", "report")

    def save(fig, name: str) -> Path:
        fig.tight_layout()
        path = atomic_write(out / name, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
        plt.close(fig)
        return path

    models = list(dict.fromkeys(stats["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        by_model = stats[stats["model"] == model]
        for method, rows in by_model.groupby("method", sort=False):
            rows = rows.sort_values("w_bits")
            ax.errorbar(rows["w_bits"], rows["mean"], yerr=rows["std"].fillna(0), marker="o", capsize=3,
                        label=method)
        fp = by_model["fp"].mean()
        if not math.isnan(fp):
            ax.axhline(fp, color="k", linestyle="--", linewidth=1, label=FP)
        ticks = sorted(by_model["w_bits"].unique())
        ax.set_xticks(ticks, ["/".join(sorted(set(by_model.loc[by_model["w_bits"] == w, "bits"]))) for w in ticks])
        ax.set_title(model)
        ax.set_xlabel("weight/activation bits")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    paths = [save(fig, f"{metric}_vs_bits.png")]

    fig, ax = plt.subplots(figsize=(6, 4.2))
    markers = dict(zip(models, "osD^vP*X"))
    timed = stats.dropna(subset=["calib_seconds", "drop"])
    for i, (method, rows) in enumerate(timed.groupby("method", sort=False)):
        for k, (_, r) in enumerate(rows.iterrows()):
            ax.scatter(r["calib_seconds"], r["drop"], color=f"C{i}", marker=markers.get(r["model"], "o"),
                       label=None if k else method)
            ax.annotate(r["bits"], (r["calib_seconds"], r["drop"]), fontsize=6, xytext=(3, 2),
                        textcoords="offset points")
    for model, marker in markers.items():
        ax.scatter([], [], color="gray", marker=marker, label=model)
    if len(timed) and (timed["calib_seconds"] > 0).all():
        ax.set_xscale("log")
    ax.set_xlabel("calibration time (s)")
    ax.set_ylabel(f"{metric} drop vs FP")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    paths.append(save(fig, "drop_vs_calib_time.png"))
    return paths


# -------------------------------------------------------------------------------------------------------- main
def report(jobs: list[Job], out: Path, metric: str = "top1", title: str = "") -> str:
    """Write ``report.md``, ``report.csv`` and the plots to ``out``; return the markdown."""
    df = frame(jobs, metric)
    parts = [f"# {title or 'Sweep report'}", "",
             f"`{metric}`: mean ± std over seeds (n per cell in report.csv); best method per row in bold.", ""]
    if len(df):
        stats = summarize(df)
        markdown, wide = tables(stats, lower_is_better=metric in LOWER_IS_BETTER)
        write_text(out / "report.csv", wide.to_csv(index=False, float_format="%.4g"))
        figures = plot(stats, metric, out)
        parts += [markdown, "", *[f"![{p.stem}]({p.name})" for p in figures], ""]
    else:
        parts += ["No finished job.", ""]
    parts += ["## Failed or missing jobs", "", problems_markdown(jobs), ""]
    text = "\n".join(parts)
    write_text(out / "report.md", text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitquant.analysis.report", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="*", help="sweep folders (with multirun.yaml) or run folders")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs of a W&B project instead")
    parser.add_argument("--group", help="with --wandb: only this group (one sweep)")
    parser.add_argument("--metric", default="top1", help="metrics.json key to tabulate (top1, bbox_mAP, "
                        "mIoU..., or the label-free agree_top1, kl, logit_sqnr_db)")
    parser.add_argument("--out", help="output folder (default: the sweep folder when one is given, else ./report)")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    try:
        for module in ("pandas", "matplotlib"):  # the report's extra, checked before reading anything
            require(module, "report")
        if bool(args.paths) == bool(args.wandb):
            raise ValueError("give sweep/run folders or --wandb ENTITY/PROJECT (one of the two)")
        jobs = read_wandb(args.wandb, args.group) if args.wandb else read_folders(args.paths)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.paths[0]) if len(args.paths) == 1 else Path("report")
    title = args.title or (f"{args.wandb} {args.group or ''}".strip() if args.wandb else
                           ", ".join(Path(p).name for p in args.paths))
    print(report(jobs, out, args.metric, title))
    print(f"\nwritten to {out}/ (report.md, report.csv, plots)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
