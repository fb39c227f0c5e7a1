"""Calibration memory at detection resolution: Mask R-CNN Swin-T, COCO128, the README's route.

Each cell is one child process (so its peak RSS, ``VmHWM``, is its own) that builds the task of
``calibrate.py task=instance_segmentation model=mask_rcnn_swin_tiny method=percentile bits=8
data=coco128`` (default 1333×800 test scale, random weights: memory does not depend on them), draws
``n`` calibration images and runs the method's range initialisation, then reports the peak RSS, the
RSS before calibration (model, data set, images) and the calibration CPU time. ``bounded`` is the
default (micro-batches of at most ``batch_pixels`` pixels streamed into bounded samples);
``one_batch`` forces the single forward of every image (``batch_pixels=None``, bounded statistics),
which is what the README's command ran before (plus a full-size permutation per large site), for the
cells that fit (``--one-batch-images``).

The agreement cell compares, on a case small enough for unbounded statistics (``--agree-scale``,
``--agree-images``), the quantizer parameters and the quantized backbone+neck features of

* ``unbounded``: one forward, every value kept (``max_elements`` 2^62, no subsampling anywhere);
* ``one_batch``: one forward, the default caps (2^24 values per site, subsampled where larger);
* ``streamed``: micro-batches of ``--agree-batch`` images (warm start, then streamed 2^22-value samples),

as the relative difference of every activation quantizer's scale to ``unbounded`` (median, 99th
percentile, max) and the features' SQNR against the float model on held-out training images.

    python -m bench.calib_memory            # -> bench/results/calib_memory.json, .md
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SHARED = Path(os.environ.get("VITQUANT_SHARED", REPO.parent / "shared")).resolve()
COMMAND = ["task=instance_segmentation", "model=mask_rcnn_swin_tiny", "method=percentile", "bits=8", "data=coco128"]


def rss_mb(field: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def setup(n: int, scale: list[int] | None):
    """Task, recipe, float model, quant twin and ``n`` calibration images of the README's command."""
    import torch
    from hydra import compose, initialize_config_dir

    from vitquant.cli import CONF_DIR
    from vitquant.config import bit_widths
    from vitquant.models.quantize import quantized_twin
    from vitquant.pipelines.common import build_recipe
    from vitquant.tasks.base import build_task

    torch.set_num_threads(1)
    overrides = [*COMMAND, f"data.root={SHARED / 'data' / 'coco128'}", f"method.n_calib={n}", "out_dir=unused"]
    if scale:
        overrides.append(f"task.image_scale=[{scale[0]},{scale[1]}]")
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("calibrate", overrides=overrides)
    task = build_task(cfg.task, cfg.model, cfg.data)
    recipe = build_recipe(cfg.method)
    fp = task.build_model()
    images, _ = task.calibration_images(n, cfg.seed)
    return task, recipe, fp, lambda r: quantized_twin(fp, r, list(cfg.policy.kinds), bit_widths(cfg), cfg.seed), images


def with_stage(recipe, **options):
    """``recipe`` (the ``percentile`` method: one option-free ``init_ranges`` stage) with that stage called
    with ``options``."""
    from vitquant.engines.range_init import init_ranges

    (stage,) = recipe.stages
    assert stage.func is init_ranges and not stage.args and not stage.keywords, stage
    recipe.stages = [partial(init_ranges, **options)]
    return recipe


def memory_cell(n: int, mode: str) -> dict:
    """Peak RSS and CPU time of range initialisation on ``n`` images (child process)."""
    import torch

    from vitquant.engines.context import CalibContext

    torch.manual_seed(0)
    _, recipe, fp, twin, images = setup(n, None)
    if mode == "one_batch":
        with_stage(recipe, batch_pixels=None)
    q = twin(recipe)
    ctx = CalibContext(fp, images, torch.device("cpu"), 0)
    before = rss_mb("VmRSS")
    cpu, wall = time.process_time(), time.perf_counter()
    recipe.calibrate(q, ctx)
    return {"images": n, "mode": mode, "image_shape": list(images.shape[1:]),
            "images_per_forward": ctx.metrics["range_init_batch_images"],
            "rss_before_calib_mb": round(before), "peak_rss_mb": round(rss_mb("VmHWM")),
            "calib_cpu_s": round(time.process_time() - cpu, 1), "calib_wall_s": round(time.perf_counter() - wall, 1)}


def agreement_cell(n: int, scale: list[int], batch: int, held_out: int) -> dict:
    """Quantizer parameters and feature SQNR of unbounded / one_batch / streamed calibration (child process)."""
    import torch

    from vitquant.engines.context import CalibContext
    from vitquant.nn.site import quantized_sites

    torch.manual_seed(0)
    task, recipe, fp, twin, images = setup(n + held_out, scale)
    calib, test = images[:n], images[n:]
    pixels = batch * math.prod(images.shape[2:])
    variants = {"unbounded": dict(batch_pixels=None), "one_batch": dict(batch_pixels=None),
                "streamed": dict(batch_pixels=pixels)}
    with torch.no_grad():
        ref = [f.float() for f in fp(test)]
    out, scales = {}, {}
    for name, options in variants.items():
        r = with_stage(build_like(recipe), **options)
        if name == "unbounded":
            every = dict(max_elements=1 << 62, search_max_elements=1 << 62)
            r.quantizers = {k: partial(f, **every) for k, f in r.quantizers.items()}
        q = twin(r)
        cpu = time.process_time()
        r.calibrate(q, CalibContext(fp, calib, torch.device("cpu"), 0))
        cpu = time.process_time() - cpu
        scales[name] = {n_: s.quantizer.scale.detach().clone() for n_, s in quantized_sites(q)
                        if not s.is_weight and hasattr(s.quantizer, "scale")}
        with torch.no_grad():
            feats = q(test)
        noise = sum(float((f - g).pow(2).sum()) for f, g in zip(ref, feats))
        signal = sum(float(f.pow(2).sum()) for f in ref)
        out[name] = {"calib_cpu_s": round(cpu, 1), "feature_sqnr_db": round(10 * math.log10(signal / noise), 2)}
    for name in ("one_batch", "streamed"):
        rel = torch.cat([((scales[name][k] - v).abs() / v.abs().clamp_min(1e-12)).flatten()
                         for k, v in scales["unbounded"].items()])
        out[name].update({"scale_rel_diff_median": float(rel.median()), "scale_rel_diff_p99": float(rel.quantile(0.99)),
                          "scale_rel_diff_max": float(rel.max()), "n_scales": rel.numel()})
    return {"images": n, "held_out": held_out, "image_shape": list(images.shape[1:]), "batch": batch, **out}


def build_like(recipe):
    """A fresh copy of ``recipe`` (same quantizer factories and stages)."""
    from vitquant.methods.recipe import Recipe

    return Recipe(recipe.name, dict(recipe.quantizers), list(recipe.stages), recipe.n_calib, recipe.kind_bits)


def child(spec: dict) -> dict:
    """Run one cell in a fresh interpreter; its JSON result."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "bench.calib_memory", "--cell", json.dumps(spec)], cwd=REPO,
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {**spec, "error": lines[-1] if lines else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(res: dict) -> str:
    lines = ["# Calibration memory: Mask R-CNN Swin-T, COCO128, `method=percentile bits=8`, default 1333×800 scale",
             "", "One child process per cell (peak RSS = its `VmHWM`), CPU, one thread, random weights.", "",
             "| images | mode | images per forward | RSS before calibration MB | peak RSS MB | calibration CPU s |",
             "|---|---|---|---|---|---|"]
    for r in res["memory"]:
        if "error" in r:
            lines.append(f"| {r['images']} | {r['mode']} | failed: {r['error']} | | | |")
            continue
        lines.append(f"| {r['images']} | {r['mode']} | {r['images_per_forward']} | {r['rss_before_calib_mb']} | "
                     f"{r['peak_rss_mb']} | {r['calib_cpu_s']} |")
    a = res.get("agreement")
    if a and "error" not in a:
        lines += ["", f"Agreement with unbounded statistics ({a['images']} images at {a['image_shape'][1]}×"
                      f"{a['image_shape'][2]}, streamed in micro-batches of {a['batch']}; feature SQNR vs float "
                      f"on {a['held_out']} held-out images):", "",
                  "| statistics | feature SQNR dB | scale rel. diff median | p99 | max | calibration CPU s |",
                  "|---|---|---|---|---|---|"]
        for name in ("unbounded", "one_batch", "streamed"):
            v = a[name]
            diffs = ("—", "—", "—") if name == "unbounded" else tuple(
                f"{v[k]:.2e}" for k in ("scale_rel_diff_median", "scale_rel_diff_p99", "scale_rel_diff_max"))
            lines.append(f"| {name} | {v['feature_sqnr_db']} | {' | '.join(diffs)} | {v['calib_cpu_s']} |")
    elif a:
        lines += ["", f"Agreement cell failed: {a['error']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--one-batch-images", type=int, nargs="*", default=[8],
                        help="also measure the single forward (the previous behaviour) at these counts")
    parser.add_argument("--agree-images", type=int, default=6)
    parser.add_argument("--agree-scale", type=int, nargs=2, default=[448, 256])
    parser.add_argument("--agree-batch", type=int, default=2)
    parser.add_argument("--agree-held-out", type=int, default=2)
    parser.add_argument("--skip-agreement", action="store_true")
    parser.add_argument("--resume", action="store_true",
                        help="keep the cells of an earlier calib_memory.json that did not fail; run the rest")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.cell:
        spec = json.loads(args.cell)
        kind = spec.pop("kind")
        result = memory_cell(**spec) if kind == "memory" else agreement_cell(**spec)
        print(json.dumps(result))
        return result
    from vitquant.io.atomic import write_json, write_text

    earlier = json.loads((args.out / "calib_memory.json").read_text()) \
        if args.resume and (args.out / "calib_memory.json").exists() else {}
    done = {(c["images"], c["mode"]): c for c in earlier.get("memory", []) if "error" not in c}
    res: dict = {"command": COMMAND, "memory": list(done.values())}
    agreement = earlier.get("agreement")
    if agreement and "error" not in agreement:
        res["agreement"] = agreement

    def save() -> None:  # after every cell: an interrupted run keeps what it measured (--resume goes on)
        res["memory"].sort(key=lambda c: (c["mode"] != "bounded", c["images"]))
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "calib_memory.json", res)
        write_text(args.out / "calib_memory.md", markdown(res))

    if "agreement" not in res and not args.skip_agreement:  # the small case first: minutes, not an hour
        res["agreement"] = child({"kind": "agreement", "n": args.agree_images, "scale": args.agree_scale,
                                  "batch": args.agree_batch, "held_out": args.agree_held_out})
        print(res["agreement"], flush=True)
        save()
    cells = [(n, "bounded") for n in args.images] + [(n, "one_batch") for n in args.one_batch_images]
    for n, mode in cells:
        if (n, mode) in done:
            continue
        res["memory"].append(child({"kind": "memory", "n": n, "mode": mode}))
        print(res["memory"][-1], flush=True)
        save()
    save()
    return res


if __name__ == "__main__":
    main()
