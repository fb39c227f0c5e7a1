"""Stage-by-stage diagnosis of a PTQ method (I&S-ViT by default) on a reference model.

Runs the method's stages one at a time, as ``Recipe.calibrate`` would, and after each stage
evaluates top-1 with the quantizers in the state that stage leaves (I&S-ViT: activations only
through stage-1 reconstruction and the reparameterization, weights too from their range init on),
records the per-unit reconstruction losses that the stage logs (``recon/<unit>/loss``, the loss of
the last step), then evaluates the finished model (every quantizer on) and the same model with one
group of end sites in float (classifier input, classifier weights, patch-embed weights), which
says what each end unit at the target bits costs. The reduced CPU budget of ``bench/plan.py`` is
the default.

    python -m bench.isvit_stages --model vit_cifar_nofinalnorm --bits 3 --seed 0
    python -m bench.isvit_stages --model vit_cifar --method qdrop --set method.n_calib=256
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from bench.plan import ENTRIES
from bench.references import cifar_root, reference_checkpoint
from vitquant.cli import CONF_DIR
from vitquant.config import bit_widths, resolve_device
from vitquant.engines.context import CalibContext
from vitquant.models.quantize import quantized_twin
from vitquant.nn.site import iter_sites, set_quant_state
from vitquant.pipelines.common import build_recipe
from vitquant.runtime import seed_everything
from vitquant.tasks.base import build_task

# Sites evaluated in float on the finished model, one group at a time: (label, site-name test)
END_GROUPS = (
    ("classifier input in float", lambda name, site: site.is_end and not site.is_weight),
    ("classifier weights in float", lambda name, site: site.is_end and site.is_weight and name.startswith("head")),
    ("patch-embed weights in float", lambda name, site: site.is_end and site.is_weight
     and name.startswith("patch_embed")),
)


def compose_run(model: str, method: str, bits: int, seed: int, overrides: list[str]) -> DictConfig:
    """The calibrate config of one benchmark cell (reference checkpoint, CIFAR-10, the given overrides)."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("calibrate", overrides=[
            f"method={method}", f"model={model}", "data=cifar10", f"data.root={cifar_root()}",
            f"model.checkpoint={reference_checkpoint(model)}", f"bits={bits}", f"seed={seed}",
            "task.num_workers=0", "logger=none", *overrides])
    with open_dict(cfg):
        cfg.out_dir = None
    return cfg


def stage_label(stage) -> str:
    """``reconstruct_blocks(input_source=fp, SteWeights)``: the stage function and the options (and
    reconstruction hooks) that tell stages apart."""
    keys = ("input_source", "weights", "include_reduction")
    keywords = getattr(stage, "keywords", {})
    options = ", ".join([f"{k}={v}" for k, v in keywords.items() if k in keys]
                        + [type(h).__name__ for h in keywords.get("hooks", ())])
    return f"{getattr(stage, 'func', stage).__name__}({options})"


def quant_state(model: torch.nn.Module) -> str:
    on = {site.is_weight for _, site in iter_sites(model) if site.enabled and site.quantizer is not None}
    return "W+A" if on == {True, False} else "W" if on == {True} else "A" if on == {False} else "FP"


def diagnose(cfg: DictConfig, per_stage: bool = True) -> dict:
    """Top-1 after each stage (unless ``per_stage=False``), per-unit reconstruction losses, and the
    end-site ablations."""
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    task = build_task(cfg.task, cfg.model, cfg.data)
    recipe = build_recipe(cfg.method)
    fp_model = task.build_model().to(device)
    qmodel = quantized_twin(fp_model, recipe, list(cfg.policy.kinds), bit_widths(cfg), cfg.seed)
    images, _ = task.calibration_images(recipe.n_calib, cfg.seed)
    logged: dict[str, float] = {}
    ctx = CalibContext(fp_model, images, device, cfg.seed, logged.update)
    report = {"model": cfg.model.name, "method": cfg.method.name, "w_bits": cfg.w_bits, "a_bits": cfg.a_bits,
              "seed": cfg.seed, "fp_top1": task.evaluate(fp_model, device)["top1"], "stages": []}
    for stage in recipe.stages:
        logged.clear()
        stage(qmodel, ctx)
        row = {"stage": stage_label(stage), "quantized": quant_state(qmodel),
               "top1": task.evaluate(qmodel, device)["top1"] if per_stage else None,
               "unit_loss": {k.split("/")[1]: v for k, v in logged.items() if k.startswith("recon/")}}
        report["stages"].append(row)
        print(f"{row['stage']:60s} {row['quantized']:4s} top-1 {row['top1']}", flush=True)
    set_quant_state(qmodel, weights=True, activations=True)
    report["top1"] = task.evaluate(qmodel, device)["top1"]
    report["ablations"] = {}
    for label, test in END_GROUPS:
        sites = [site for name, site in iter_sites(qmodel) if site.quantizer is not None and test(name, site)]
        for site in sites:
            site.enabled = False
        report["ablations"][label] = task.evaluate(qmodel, device)["top1"]
        for site in sites:
            site.enabled = True
        print(f"{label:60s} top-1 {report['ablations'][label]:.2f}", flush=True)
    print(f"final top-1 {report['top1']:.2f} (FP {report['fp_top1']:.2f})", flush=True)
    return report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_cifar_nofinalnorm")
    ap.add_argument("--method", default="isvit")
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], help="extra calibrate overrides (after the CPU budget)")
    ap.add_argument("--full", action="store_true", help="official budget instead of the plan entry's CPU budget")
    ap.add_argument("--final-only", action="store_true", help="skip the evaluation after each stage")
    ap.add_argument("--out", type=Path, default=None, help="append the report as one JSON line")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if reference_checkpoint(args.model) is None:
        raise SystemExit(f"error: no reference checkpoint for {args.model}; run `make reference`")
    budget = [] if args.full else next((list(e.cpu) for e in ENTRIES if e.name == args.method), [])
    report = diagnose(compose_run(args.model, args.method, args.bits, args.seed, [*budget, *args.set]),
                      per_stage=not args.final_only)
    report["overrides"] = args.set
    if args.out is not None:
        with args.out.open("a") as f:
            f.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
