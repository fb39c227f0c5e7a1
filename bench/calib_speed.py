"""Calibration speed and memory: this checkout against a baseline checkout, same commands, one run.

Each cell is one ``calibrate.py`` process on the CIFAR reference ViT (reduced budget: ``--iters``
reconstruction iterations, ``--images`` calibration images, top-1 on ``--eval-images`` test images),
run alternately from the baseline tree and from this one. Both the calibration wall time
(``calib_seconds`` of ``metrics.json``) and the CPU time of the whole process (``getrusage`` of the
child: model build, calibration, evaluation) are recorded; the speedup is the ratio of CPU times,
which a shared, loaded machine distorts much less than wall time. Then
the peak memory (process RSS peak, ``peak_memory_mb``) of reconstruction (``isvit``) at several
calibration-set sizes and iteration counts, from this tree.

    git worktree add --detach /tmp/perf_base <commit before the change>
    python -m bench.calib_speed --base /tmp/perf_base      # -> bench/results/calib_speed.json, .md
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.references import cifar_root, reference_checkpoint
from vitquant.io.atomic import write_json, write_text

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
METHODS = {"isvit": 4, "qdrop": 4, "ptq4vit": 6}  # method -> bits
RECONSTRUCTION = ("isvit", "qdrop")


def calibrate(tree: Path, method: str, bits: int, overrides: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix="calib_speed_"))
    cmd = [sys.executable, "calibrate.py", f"method={method}", "model=vit_cifar", "data=cifar10",
           f"data.root={cifar_root()}", f"model.checkpoint={reference_checkpoint('vit_cifar')}", f"bits={bits}",
           "seed=0", "eval_fp=false", "task.num_workers=0", f"hydra.run.dir={out}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} in {tree} failed:\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {**json.loads((out / "metrics.json").read_text()), "process_cpu_seconds": cpu}


def git_head(tree: Path) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True,
                          text=True).stdout.strip()


def budget(method: str, images: int, iters: int, eval_images: int) -> list[str]:
    extra = [f"method.n_calib={images}", f"method.iters={iters}"] if method in RECONSTRUCTION else []
    return [*extra, f"task.max_eval_images={eval_images}"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="checkout of the baseline commit")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--eval-images", type=int, default=2000)
    parser.add_argument("--memory-images", type=int, nargs="*", default=[128, 256, 512, 1024])
    parser.add_argument("--memory-iters", type=int, nargs="*", default=[20, 80])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows, memory = [], []
    for method in args.methods:
        overrides = budget(method, args.images, args.iters, args.eval_images)
        base = calibrate(args.base, method, METHODS[method], overrides)
        new = calibrate(REPO, method, METHODS[method], overrides)
        rows.append({"method": method, "bits": METHODS[method], "overrides": overrides,
                     "base_calib_s": round(base["calib_seconds"], 1), "new_calib_s": round(new["calib_seconds"], 1),
                     "base_cpu_s": round(base["process_cpu_seconds"], 1),
                     "new_cpu_s": round(new["process_cpu_seconds"], 1),
                     "speedup": round(base["process_cpu_seconds"] / new["process_cpu_seconds"], 2),
                     "base_top1": base["top1"], "new_top1": new["top1"],
                     "base_peak_mb": round(base["peak_memory_mb"]), "new_peak_mb": round(new["peak_memory_mb"])})
        print(rows[-1], flush=True)
    for images in args.memory_images:
        for iters in (args.memory_iters if images == args.images else args.memory_iters[:1]):
            m = calibrate(REPO, "isvit", 4, budget("isvit", images, iters, 100))
            memory.append({"images": images, "iters": iters, "peak_mb": round(m["peak_memory_mb"]),
                           "calib_s": round(m["calib_seconds"], 1), "cpu_s": round(m["process_cpu_seconds"], 1)})
            print(memory[-1], flush=True)
    res = {"base": str(args.base), "base_commit": git_head(args.base), "commit": git_head(REPO),
           "images": args.images, "iters": args.iters, "eval_images": args.eval_images,
           "rows": rows, "memory": memory}
    write_json(args.out / "calib_speed.json", res)
    write_text(args.out / "calib_speed.md", markdown(res))
    return res


def markdown(res: dict) -> str:
    lines = [f"# Calibration speed (CIFAR reference ViT, {res['images']} calibration images, {res['iters']} "
             f"iterations per unit and stage, top-1 on {res['eval_images']} test images, seed 0, 1 thread)", "",
             "| method | W/A | CPU s before | CPU s after | speedup (CPU) | calib wall s before | after "
             "| top-1 before | top-1 after | peak MB before | after |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['method']} | W{r['bits']}A{r['bits']} | {r['base_cpu_s']} | {r['new_cpu_s']} | "
                     f"{r['speedup']} | {r['base_calib_s']} | {r['new_calib_s']} | {r['base_top1']:.2f} | "
                     f"{r['new_top1']:.2f} | {r['base_peak_mb']} | {r['new_peak_mb']} |")
    lines += ["", "Peak memory of isvit calibration (process RSS peak):", "",
              "| images | iterations | peak MB | calibration wall s | process CPU s |", "|---|---|---|---|---|"]
    lines += [f"| {m['images']} | {m['iters']} | {m['peak_mb']} | {m['calib_s']} | {m['cpu_s']} |"
              for m in res["memory"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
