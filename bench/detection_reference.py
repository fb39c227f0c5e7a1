"""Train the reference detector (``model=mask_rcnn_swin_micro``) on COCO128 into the cache.

No pretrained detector exists here, so a micro Swin Mask R-CNN is trained from scratch on the first
``IMAGES`` (32) COCO128 images at 256 px (AdamW, one thread, a budget of CPU minutes) until its AP on
those same images is clearly above zero: on 2 shared cores, 25 minutes are a few hundred steps,
too few to fit all 128 images from scratch. The benchmark evaluates on the same 32 images
(``task.max_eval_images=32``) and measures the AP *drop* under quantization, not generalisation.
``python -m bench.detection_reference [--minutes 25]``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from vitquant.cli import CONF_DIR
from vitquant.io.atomic import save_torch, write_json
from vitquant.runtime import seed_everything

SCALE = [256, 256]
IMAGES = 32


def compose_run(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("calibrate", overrides=["task=instance_segmentation", "model=mask_rcnn_swin_micro",
                                               "data=coco128", f"task.image_scale=[{SCALE[0]},{SCALE[1]}]",
                                               f"task.max_eval_images={IMAGES}", *overrides])


def train(minutes: float, lr: float, batch_size: int, seed: int, init: Path | None = None
          ) -> tuple[torch.nn.Module, list[dict]]:
    """Train for ``minutes`` of this process's CPU time (from scratch, or from ``init``'s weights);
    returns the wrapped detector and a loss log. CPU time, not wall clock: on shared cores the
    wall clock says little about the work done."""
    from mmengine.dataset import pseudo_collate

    from vitquant.ptq import build_task
    from vitquant.tasks.mm_common import build_dataset, set_resize

    cfg = compose_run("model.checkpoint=null")
    task = build_task(cfg.task, cfg.model, cfg.data)
    model = task.build_model(load_weights=False)
    net = model.net
    if init is not None:
        net.load_state_dict(torch.load(init, map_location="cpu", weights_only=True))
    root = cfg.data.root
    pipeline = set_resize(list(task.mm_cfg.train_dataloader.dataset.pipeline), SCALE)
    train_set = build_dataset(dict(type="CocoDataset", data_root=root, ann_file=cfg.data.train_ann,
                                   data_prefix=dict(img=cfg.data.train_images), pipeline=pipeline,
                                   indices=IMAGES), "mmdet")
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True, collate_fn=pseudo_collate,
                                         generator=generator, drop_last=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    net.train()
    log, step, start, wall = [], 0, time.process_time(), time.time()
    while time.process_time() - start < minutes * 60:
        for batch in loader:
            warm = min(1.0, (step + 1) / 100)
            for group in optimizer.param_groups:
                group["lr"] = lr * warm
            data = net.data_preprocessor(batch, True)
            loss, parts = net.parse_losses(net(**data, mode="loss"))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
            optimizer.step()
            step += 1
            if step % 20 == 0:
                entry = {"step": step, "cpu_minutes": (time.process_time() - start) / 60,
                         "wall_minutes": (time.time() - wall) / 60, **{k: float(v) for k, v in parts.items()}}
                log.append(entry)
                print(json.dumps(entry), flush=True)
            if time.process_time() - start >= minutes * 60:
                break
    return model.eval(), log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=25.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--init", type=Path, default=None, help="continue from these weights (may be --out)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seed_everything(args.seed)
    out = args.out or Path(compose_run().model.checkpoint)
    if out.is_file() and args.init is None:
        print(f"reference detector: {out}")
        return
    model, log = train(args.minutes, args.lr, args.batch_size, args.seed, args.init)
    from vitquant.ptq import build_task

    cfg = compose_run()
    metrics = build_task(cfg.task, cfg.model, cfg.data).evaluate(model)
    print(json.dumps(metrics))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_torch(out, model.net.state_dict())
    meta = out.with_suffix(".json")
    previous = json.loads(meta.read_text()) if args.init and meta.is_file() else None
    write_json(meta, {"previous": previous, "init": str(args.init), "cpu_minutes": args.minutes, "lr": args.lr,
                      "batch_size": args.batch_size, "seed": args.seed, "scale": SCALE, "images": IMAGES,
                      "metrics": metrics, "log": log})
    print(f"reference detector -> {out}")


if __name__ == "__main__":
    main()
