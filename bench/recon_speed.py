"""Block-reconstruction speed on the ImageNet ViT-T at 224 px: this checkout against a baseline checkout.

Three measurements, each in child processes run alternately from the baseline tree and from this
one (``PYTHONPATH`` = that tree, so each imports its own ``vitquant``), one thread, CPU time of the
process (``time.process_time``), natural images (CIFAR-10 JPEGs resized to 224 px by the model's
transform):

1. **Per iteration** (``--child iteration``): I&S-ViT W4A4 quantizers initialised as its recipe does
   (64 images), then block ``--block`` alone is reconstructed by ``reconstruct_blocks`` on its cached
   FP inputs (a one-block model), at 2 and at 2 + ``--iters`` iterations: the difference divided by
   ``--iters`` is the engine's cost of one iteration (sampling, quantized forward and backward, Adam,
   schedule), in stage 1 (activations quantized, FP inputs) and stage 3 (weights too). Reference:
   the same float block's forward and backward (``lp_loss``, weights requiring gradients) on one
   batch of the same size, timed between the engine runs. Also the quantized block's own forward and
   backward on that batch (no engine), which separates the quantizers' cost from the engine's.
2. **Whole method** (``--child whole``): ``isvit`` at ``--images`` calibration images and each of
   ``--whole-iters`` iterations per unit and stage, seed 0: calibration CPU seconds, peak RSS, and
   ``agree_top1`` = % of ``--eval-images`` CIFAR-10 test images on which the quantized model's argmax
   equals the float model's.

    git worktree add --detach /tmp/recon_base <commit before the change>
    python -m bench.recon_speed --base /tmp/recon_base     # -> bench/results/recon_speed.json, .md
    python -m bench.recon_speed --base /tmp/recon_base --one-at-a-time   # -> recon_speed_alone.json, .md
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SHARED = Path(os.environ.get("VITQUANT_SHARED", REPO.parent / "shared")).resolve()
WEIGHTS = SHARED / "models" / "vit_tiny_augreg_in1k.safetensors"
MODEL = ["model=vit_small", "model.arch=vit_tiny_patch16_224.augreg_in21k_ft_in1k", f"model.checkpoint={WEIGHTS}"]


# ----------------------------------------------------------------------------- children (any tree)
def compose_isvit(images: int, iters: int, eval_images: int, seed: int = 0):
    from hydra import compose, initialize_config_dir

    from vitquant.cli import CONF_DIR
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("calibrate", overrides=[
            "method=isvit", *MODEL, "data=cifar10", f"data.root={SHARED / 'data' / 'cifar10'}", "bits=4",
            f"seed={seed}", "task.num_workers=0", f"task.max_eval_images={eval_images}", "logger=none",
            f"method.n_calib={images}", f"method.iters={iters}"])


def setup(cfg):
    """(task, recipe, float model, quantized twin, calibration images) of a composed run."""
    import torch

    from vitquant.config import bit_widths
    from vitquant.models.quantize import quantized_twin
    from vitquant.runtime import seed_everything
    try:
        from vitquant.pipelines.common import build_recipe
        from vitquant.tasks.base import build_task
    except ImportError:  # a baseline tree before issue #21 moved them out of vitquant.ptq
        from vitquant.ptq import build_recipe, build_task
    torch.set_num_threads(1)
    seed_everything(cfg.seed)
    task = build_task(cfg.task, cfg.model, cfg.data)
    recipe = build_recipe(cfg.method)
    fp = task.build_model()
    qmodel = quantized_twin(fp, recipe, list(cfg.policy.kinds), bit_widths(cfg), cfg.seed)
    images, _ = task.calibration_images(recipe.n_calib, cfg.seed)
    return task, recipe, fp, qmodel, images


def block_input(fp, block, images):
    """The FP input of ``block`` for ``images`` (one forward, stopped after the block)."""
    import torch
    seen = []

    def hook(module, args):
        seen.append(args[0].detach().clone())
        raise StopIteration

    handle = block.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            fp(images)
    except StopIteration:
        pass
    finally:
        handle.remove()
    return seen[0]


def ste_weights(lr: float) -> dict:
    """I&S-ViT's weight training in either engine API: ``hooks=[SteWeights(lr)]`` (issue #22), or the
    keyword ``lr`` of the engine before it (the baseline; STE was its default)."""
    try:
        from vitquant.engines.rounding import SteWeights
    except ImportError:
        return {"lr": lr}
    return {"hooks": [SteWeights(lr)]}


def child_iteration(args) -> dict:
    import torch
    from torch import nn

    from vitquant.engines.context import CalibContext
    from vitquant.engines.range_init import init_ranges
    from vitquant.engines.reconstruction import lp_loss, reconstruct_blocks
    cfg = compose_isvit(args.batch, 1, 10)
    _, _, fp, qmodel, images = setup(cfg)
    device = torch.device("cpu")
    calib = CalibContext(fp, images, device, 0)
    x = block_input(fp, fp.blocks[args.block], images[: args.batch])
    fp_block = copy.deepcopy(fp.blocks[args.block]).train(False)
    target = fp_block(x).detach()

    def float_step() -> None:
        fp_block.requires_grad_(True)
        lp_loss(fp_block(x), target).backward()
        fp_block.zero_grad(set_to_none=True)

    def quant_step(block: nn.Module) -> None:
        trained = [p for n, p in block.named_parameters() if "norm" not in n and "quantizer" not in n]
        for p in trained:
            p.requires_grad_(True)
        lp_loss(block(x), target).backward()
        for p in trained:
            p.grad = None
            p.requires_grad_(False)

    def cpu(fn, repeat: int = 1) -> float:
        start = time.process_time()
        for _ in range(repeat):
            fn()
        return (time.process_time() - start) / repeat

    def measure(block: nn.Module, source: str) -> dict:
        one = nn.Sequential(block)  # a one-unit model: reconstruct_blocks optimises exactly this block
        ctx = CalibContext(nn.Sequential(copy.deepcopy(fp.blocks[args.block])), x, device, 0)

        def engine(iters: int) -> None:
            reconstruct_blocks(one, ctx, iters=iters, batch_size=args.batch, input_source=source, progress=False,
                               **ste_weights(4e-5))

        float_s, quant_s, engine_s = [], [], []
        for _ in range(args.repeats):
            float_s.append(cpu(float_step, 3))
            with torch.enable_grad():
                quant_s.append(cpu(lambda: quant_step(block), 3))
            short, long = cpu(lambda: engine(2)), cpu(lambda: engine(2 + args.iters))
            engine_s.append((long - short) / args.iters)
        f, q, e = statistics.median(float_s), statistics.median(quant_s), statistics.median(engine_s)
        return {"float_s": f, "quant_fwd_bwd_s": q, "engine_iter_s": e, "quant_ratio": q / f,
                "engine_ratio": e / f, "float_all": float_s, "engine_all": engine_s}

    out = {}
    for stage, weights, source in (("stage1", False, "fp"), ("stage3", True, "quantized")):
        init_ranges(qmodel, calib, weights=weights, n_images=args.batch)
        out[stage] = measure(qmodel.blocks[args.block], source)
        print(stage, {k: v for k, v in out[stage].items() if not k.endswith("all")}, file=sys.stderr, flush=True)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def child_memory(args) -> dict:
    """Peak RSS after reconstructing one block (stage 3) for ``--iters`` iterations, then again for
    four times as many in the same process: the high-water mark stays put when memory is flat in
    the number of iterations."""
    import torch
    from torch import nn

    from vitquant.engines.context import CalibContext
    from vitquant.engines.range_init import init_ranges
    from vitquant.engines.reconstruction import reconstruct_blocks
    _, _, fp, qmodel, images = setup(compose_isvit(args.batch, 1, 10))
    device = torch.device("cpu")
    init_ranges(qmodel, CalibContext(fp, images, device, 0), weights=True, n_images=args.batch)
    x = block_input(fp, fp.blocks[args.block], images)
    one = nn.Sequential(qmodel.blocks[args.block])
    ctx = CalibContext(nn.Sequential(copy.deepcopy(fp.blocks[args.block])), x, device, 0)
    peaks = {}
    for iters in (args.iters, 4 * args.iters):
        reconstruct_blocks(one, ctx, iters=iters, batch_size=args.batch, input_source="quantized", progress=False,
                           **ste_weights(4e-5))
        peaks[iters] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_rss_mb_by_iters": peaks}


def child_whole(args) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from vitquant.engines.context import CalibContext
    logged: dict[str, float] = {}
    cfg = compose_isvit(args.images, args.iters, args.eval_images)
    task, recipe, fp, qmodel, images = setup(cfg)
    ctx = CalibContext(fp, images, torch.device("cpu"), cfg.seed, logged.update)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.process_time()
    recipe.calibrate(qmodel, ctx)
    calib_cpu = time.process_time() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    agree = n = 0
    with torch.no_grad():
        for batch, _ in DataLoader(task.eval_dataset(), batch_size=50):
            agree += int((qmodel(batch).argmax(-1) == fp(batch).argmax(-1)).sum())
            n += len(batch)
    state = {k: v for k, v in qmodel.state_dict().items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    checksum = float(sum(v.double().sum() for v in state.values()))
    return {"images": args.images, "iters": args.iters, "calib_cpu_s": calib_cpu, "peak_rss_mb": peak,
            "rss_before_calib_mb": rss_before, "agree_top1": 100.0 * agree / n, "n_eval": n,
            "state_checksum": checksum, "recon_losses": logged}


# ----------------------------------------------------------------------------- parent
def run_children(jobs: list[tuple[Path, list[str]]], one_at_a_time: bool = False) -> list[dict]:
    """Run the children; each reports its own process CPU time.

    Side by side (the default), baseline and new share the machine's load alike, but also its last-level
    cache and memory bandwidth: the element-wise passes over 30–40 MB activations that dominate a
    quantized step run measurably slower beside another such process. ``one_at_a_time`` starts each
    child when the one before has finished, so each has the machine to itself: the CPU time of a run on
    one core of an otherwise idle machine."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "VITQUANT_SHARED": str(SHARED)}

    def start(tree: Path, argv: list[str]) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv], cwd=tree,
                                env={**env, "PYTHONPATH": str(tree)}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def collect(tree: Path, argv: list[str], proc: subprocess.Popen) -> dict:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{argv} in {tree} failed:\n{err[-3000:]}")
        return json.loads(out.strip().splitlines()[-1])

    if one_at_a_time:
        return [collect(tree, argv, start(tree, argv)) for tree, argv in jobs]
    procs = [start(tree, argv) for tree, argv in jobs]
    return [collect(tree, argv, proc) for (tree, argv), proc in zip(jobs, procs)]


def extrapolate(whole: list[dict], iteration: dict, target: int, blocks: int = 12) -> dict[str, float]:
    """Calibration CPU seconds at ``target`` iterations per tree: the cost is a fixed part (range init,
    caching, the patch-embed and head units) plus a part linear in the iterations. From two whole runs,
    the slope between them; from one, the measured engine cost of an iteration of a block in each
    stage times the ``blocks`` blocks (the two layer-wise units' iterations are left out: an
    underestimate by their share)."""
    out = {}
    for tree in sorted({w["tree"] for w in whole}):
        runs = sorted((w["iters"], w["calib_cpu_s"]) for w in whole if w["tree"] == tree)
        (i0, c0), (i1, c1) = runs[0], runs[-1]
        if i1 > i0:
            out[tree] = c0 + (target - i0) * (c1 - c0) / (i1 - i0)
        elif tree in iteration:
            per_iteration = blocks * sum(iteration[tree][stage]["engine_iter_s"] for stage in ("stage1", "stage3"))
            out[tree] = c0 + (target - i0) * per_iteration
    return out


def git_head(tree: Path) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True,
                          text=True).stdout.strip()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", choices=("iteration", "whole", "memory"))
    parser.add_argument("--base", type=Path, help="checkout of the baseline commit")
    parser.add_argument("--block", type=int, default=0)
    parser.add_argument("--batch", type=int, default=64, help="I&S-ViT's reconstruction batch")
    parser.add_argument("--iters", type=int, default=10, help="iterations timed per engine measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--whole-iters", type=int, nargs="*", default=[3])
    parser.add_argument("--target-iters", type=int, default=100,
                        help="iteration count the whole-run CPU time is extrapolated to (linear in iterations)")
    parser.add_argument("--eval-images", type=int, default=200)
    parser.add_argument("--iteration-from", type=Path,
                        help="take the per-iteration results from this JSON ({tree: result}) instead of measuring")
    parser.add_argument("--memory-iters", type=int, default=5, help="memory check: this many, then 4× as many")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="run the children one after another, each alone on the machine (default: side by side)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.child == "iteration":
        print(json.dumps({**child_iteration(args), "process_cpu_s": time.process_time()}))
        return {}
    if args.child == "memory":
        print(json.dumps({**child_memory(args), "process_cpu_s": time.process_time()}))
        return {}
    if args.child == "whole":
        print(json.dumps({**child_whole(args), "process_cpu_s": time.process_time()}))
        return {}
    # the parent's own imports; a child's tree (the baseline) may predate them
    from bench.machine import cpu_name_and_kernel_isa
    from vitquant.cli import fail
    from vitquant.io.atomic import write_json, write_text
    if args.base is None or not (args.base / "vitquant").is_dir():
        fail(f"--base {args.base} holds no vitquant package; pass a worktree of the baseline commit "
             "(git worktree add --detach <dir> <commit>)")
    for needed in (WEIGHTS, SHARED / "data" / "cifar10"):
        if not needed.exists():
            fail(f"{needed} not found; set VITQUANT_SHARED to the folder holding models/ and data/")
    trees = {"base": args.base.resolve(), "new": REPO}
    cpu, isa = cpu_name_and_kernel_isa()
    res: dict = {"base_commit": git_head(trees["base"]), "commit": git_head(REPO), "block": args.block,
                 "cpu": cpu, "cpu_isa": isa,
                 "batch": args.batch, "target_iters": args.target_iters, "one_at_a_time": args.one_at_a_time,
                 "iteration": {}, "whole": []}
    memory_argv = ["--child", "memory", "--block", str(args.block), "--batch", str(args.batch),
                   "--iters", str(args.memory_iters)]
    jobs = [(name, iters) for iters in args.whole_iters for name in trees]
    rows = run_children([(trees[name], memory_argv) for name in trees]
                        + [(trees[name], ["--child", "whole", "--images", str(args.images), "--iters", str(iters),
                                          "--eval-images", str(args.eval_images)]) for name, iters in jobs],
                        args.one_at_a_time)
    res["memory"] = dict(zip(trees, rows[: len(trees)]))
    for (name, _), row in zip(jobs, rows[len(trees):]):
        res["whole"].append({"tree": name, **row})
        print(name, {k: v for k, v in row.items() if k != "recon_losses"}, flush=True)
    if args.iteration_from:  # read after the runs above: it may be written while they run
        res["iteration"] = json.loads(args.iteration_from.read_text())
    else:
        argv = ["--child", "iteration", "--block", str(args.block), "--batch", str(args.batch),
                "--iters", str(args.iters), "--repeats", str(args.repeats)]
        for name, row in zip(trees, run_children([(tree, argv) for tree in trees.values()], args.one_at_a_time)):
            res["iteration"][name] = row
            print(name, row, flush=True)
    res["whole_estimate"] = extrapolate(res["whole"], res["iteration"], args.target_iters)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "recon_speed_alone" if args.one_at_a_time else "recon_speed"  # the two ways of sharing the machine
    write_json(args.out / f"{stem}.json", res)
    write_text(args.out / f"{stem}.md", markdown(res))
    return res


def markdown(res: dict) -> str:
    lines = [f"# Block reconstruction speed: ViT-T (ImageNet, timm `vit_tiny_patch16_224`) at 224 px, "
             f"I&S-ViT W4A4, block {res['block']}, batch {res['batch']}, 1 thread, process CPU time", "",
             f"CPU: {res.get('cpu', 'not recorded')} "
             f"({', '.join(res.get('cpu_isa', [])) or 'ISA flags not recorded'}).",
             "",
             f"Baseline `{res['base_commit']}`, this tree `{res['commit']}`. Ratios are against the same block's "
             "float forward + backward on the same batch, measured in the same process. "
             + ("Each measurement ran alone on the machine, one process after another (`--one-at-a-time`)."
                if res.get("one_at_a_time") else
                "Baseline and new ran side by side, one process each, sharing the machine's cache and memory "
                "bandwidth."), ""]
    if res["iteration"]:
        lines += ["| tree | stage | float fwd+bwd s | quantized fwd+bwd s | ratio | engine s/iteration | ratio |",
                  "|---|---|---|---|---|---|---|"]
        for name, it in res["iteration"].items():
            for stage in ("stage1", "stage3"):
                r = it[stage]
                lines.append(f"| {name} | {stage} | {r['float_s']:.3f} | {r['quant_fwd_bwd_s']:.3f} | "
                             f"{r['quant_ratio']:.2f} | {r['engine_iter_s']:.3f} | {r['engine_ratio']:.2f} |")
    if res.get("memory"):
        lines += ["", "Peak RSS (MB) of a process that reconstructs the block (stage 3) for n iterations, then 4n:", "",
                  "| tree | " + " | ".join(f"after {k} it." for k in next(iter(res["memory"].values()))[
                      "peak_rss_mb_by_iters"]) + " |", "|---|---|---|"]
        lines += [f"| {name} | " + " | ".join(f"{v:.0f}" for v in m["peak_rss_mb_by_iters"].values()) + " |"
                  for name, m in res["memory"].items()]
    if res["whole"]:
        lines += ["", "Whole `isvit` (both reconstruction stages, every unit), seed 0:", "",
                  "| tree | images | iterations | calibration CPU s | process CPU s | peak RSS MB | agree_top1 % "
                  "(CIFAR-10 test images vs FP argmax) | quantized state checksum |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {w['tree']} | {w['images']} | {w['iters']} | {w['calib_cpu_s']:.0f} | {w['process_cpu_s']:.0f} "
                  f"| {w['peak_rss_mb']:.0f} | {w['agree_top1']:.1f} ({w['n_eval']}) | {w['state_checksum']:.6f} |"
                  for w in res["whole"]]
    measured = {w["tree"]: w["calib_cpu_s"] for w in res["whole"] if w["iters"] == res["target_iters"]}
    if measured:
        lines += ["", f"Calibration CPU minutes at {res['target_iters']} iterations, measured: " + ", ".join(
            f"{tree} {sec / 60:.1f}" for tree, sec in measured.items())]
    elif res.get("whole_estimate"):
        lines += ["", f"Calibration CPU minutes extrapolated to {res['target_iters']} iterations (the run's own CPU "
                  "time + the further iterations at the engine's measured cost per block iteration, 12 blocks × "
                  "2 stages; patch-embed and head iterations left out): " + ", ".join(
                      f"{tree} {sec / 60:.1f}" for tree, sec in res["whole_estimate"].items())]
    if res["iteration"]:
        floor = 2 * 12 * res["target_iters"] * statistics.mean(
            it[stage]["float_s"] for it in res["iteration"].values() for stage in ("stage1", "stage3"))
        lines += ["", "Notes: *quantized fwd+bwd* is the quantized block's own forward and backward (no engine, no "
                  "heap setting); *engine s/iteration* is one `reconstruct_blocks` iteration (sampling, forward, "
                  "backward, Adam, schedule). The float forward and backward alone of 12 blocks × 2 stages × "
                  f"{res['target_iters']} iterations at batch {res['batch']} cost {floor / 60:.1f} CPU minutes here: "
                  "the floor of any reconstruction at the recipe's batch size on this CPU."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
