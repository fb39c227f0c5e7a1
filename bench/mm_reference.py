"""Train the micro mm reference models on COCO128 into the cache: the detector and the segmentor.

No pretrained detector or segmentor exists here, so each is trained from scratch on the first
``IMAGES`` (32) COCO128 images at 256 px (AdamW, one thread, a budget of CPU minutes) until its
metric on those same images is clearly above chance; on 2 shared cores a few CPU minutes are a few
hundred steps, too few to fit all 128 images from scratch. The benchmarks evaluate on the same 32
images (``task.max_eval_images=32``) and measure the *drop* under quantization, not generalisation.

- ``detection``: ``model=mask_rcnn_swin_micro`` on ``data=coco128`` (box/mask AP).
- ``segmentation``: ``model=upernet_swin_micro`` on ``data=coco128_semseg`` (mIoU; the set is
  derived from COCO128's instance masks first when missing, :mod:`bench.coco128_semseg`).
- ``segmentation_vit``: ``model=upernet_vit_micro`` (plain ViT backbone, MultiLevelNeck) on the same set.

One training loop serves both: ``net.parse_losses(net(**data, mode='loss'))`` is the mm interface
of every mmdet detector and mmseg segmentor. ``python -m bench.mm_reference {detection,segmentation}
[--minutes M] [--init FILE]``.
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from vitquant.cli import CONF_DIR
from vitquant.io.atomic import save_torch, write_json
from vitquant.runtime import seed_everything

SCALE = [256, 256]
IMAGES = 32


@dataclass(frozen=True)
class Reference:
    """One reference model: its Hydra overrides, how its training set is built, its defaults."""

    overrides: tuple[str, ...]
    train_set: Callable  # (task, cfg) -> an mm data set of the first IMAGES training images, train pipeline
    minutes: float
    lr: float
    batch_size: int


def detection_train_set(task, cfg):
    """COCO128's first images through mmdet's train pipeline (random flip), resized to ``SCALE``."""
    from vitquant.tasks.mm_common import build_dataset, set_resize

    pipeline = set_resize(list(task.mm_cfg.train_dataloader.dataset.pipeline), SCALE)
    return build_dataset(dict(type="CocoDataset", data_root=cfg.data.root, ann_file=cfg.data.train_ann,
                              data_prefix=dict(img=cfg.data.train_images), pipeline=pipeline, indices=IMAGES),
                         "mmdet")


def segmentation_train_set(task, cfg):
    """The first images through the *test* pipeline (resize to ``SCALE``, the evaluation's view) with
    the masks loaded before the resize (resized with the image) and a random flip: the ADE20K train
    pipeline's 512-px random crops would cut the 256-px images."""
    from vitquant.tasks.mm_common import build_dataset

    data = cfg.data
    load_image, *steps, pack = task.pipeline
    annotations = [s for s in steps if s["type"] == "LoadAnnotations"]
    pipeline = [load_image, *annotations, *[s for s in steps if s["type"] != "LoadAnnotations"],
                dict(type="RandomFlip", prob=0.5), pack]
    return build_dataset(dict(type=data.dataset_type, data_root=data.root, pipeline=pipeline,
                              data_prefix=dict(img_path=data.train_images, seg_map_path=data.train_masks),
                              img_suffix=data.img_suffix, seg_map_suffix=data.seg_map_suffix,
                              reduce_zero_label=bool(data.reduce_zero_label), indices=IMAGES,
                              metainfo=dict(classes=tuple(data.classes))), "mmseg")


REFERENCES = {
    "detection": Reference(("task=instance_segmentation", "model=mask_rcnn_swin_micro", "data=coco128"),
                           detection_train_set, minutes=25.0, lr=1e-3, batch_size=2),
    "segmentation": Reference(("task=semantic_segmentation", "model=upernet_swin_micro", "data=coco128_semseg"),
                              segmentation_train_set, minutes=8.0, lr=1e-3, batch_size=4),
    "segmentation_vit": Reference(("task=semantic_segmentation", "model=upernet_vit_micro", "data=coco128_semseg"),
                                  segmentation_train_set, minutes=8.0, lr=1e-3, batch_size=4),
}


def compose_run(kind: str, *overrides: str):
    """The calibrate config of reference ``kind`` at the benchmark's scale and image count."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("calibrate", overrides=[*REFERENCES[kind].overrides, f"task.image_scale=[{SCALE[0]},{SCALE[1]}]",
                                               f"task.max_eval_images={IMAGES}", *overrides])


def fit(net: torch.nn.Module, train_set, minutes: float, lr: float, batch_size: int, seed: int) -> list[dict]:
    """Train the mm ``net`` for ``minutes`` of this process's CPU time (AdamW, weight decay 0.05,
    linear warm-up over 100 steps, gradient norm clipped at 10); returns a loss log every 20 steps.
    CPU time, not wall clock: on shared cores the wall clock says little about the work done."""
    from mmengine.dataset import pseudo_collate

    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True, collate_fn=pseudo_collate,
                                         generator=generator, drop_last=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    net.train()
    log, step, start, wall = [], 0, time.process_time(), time.time()
    while time.process_time() - start < minutes * 60:
        for batch in loader:
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / 100)
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
    net.eval()
    return log


def train(kind: str, minutes: float, lr: float, batch_size: int, seed: int, init: Path | None = None
          ) -> tuple[torch.nn.Module, list[dict]]:
    """Reference ``kind`` trained from scratch (or from ``init``'s weights); the wrapped model and its loss log."""
    from vitquant.tasks.base import build_task

    cfg = compose_run(kind, "model.checkpoint=null")
    task = build_task(cfg.task, cfg.model, cfg.data)
    model = task.build_model(load_weights=False)
    if init is not None:
        model.net.load_state_dict(torch.load(init, map_location="cpu", weights_only=True))
    preprocessor = model.net.data_preprocessor
    if hasattr(preprocessor, "seg_pad_val"):  # mmseg pads a training batch to a fixed size: ours, not ADE20K's 512
        preprocessor.size = (SCALE[1], SCALE[0])
    log = fit(model.net, REFERENCES[kind].train_set(task, cfg), minutes, lr, batch_size, seed)
    return model, log


def ensure_data(kind: str) -> None:
    """Derive the semantic-segmentation set from COCO128 when the segmentation reference needs it."""
    if REFERENCES[kind].train_set is segmentation_train_set:
        from bench.coco128_semseg import SHARED, generate

        out = Path(compose_run(kind).data.root)
        if not (out / "annotations").is_dir():
            generate(SHARED / "data" / "coco128", out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(REFERENCES))
    parser.add_argument("--minutes", type=float, default=None, help="CPU minutes (default: the kind's)")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--init", type=Path, default=None, help="continue from these weights (may be --out)")
    args = parser.parse_args()
    ref = REFERENCES[args.kind]
    minutes = ref.minutes if args.minutes is None else args.minutes
    lr = ref.lr if args.lr is None else args.lr
    batch_size = ref.batch_size if args.batch_size is None else args.batch_size
    torch.set_num_threads(1)
    seed_everything(args.seed)
    out = args.out or Path(compose_run(args.kind).model.checkpoint)
    if out.is_file() and args.init is None:
        print(f"reference {args.kind}: {out}")
        return
    ensure_data(args.kind)
    model, log = train(args.kind, minutes, lr, batch_size, args.seed, args.init)
    from vitquant.tasks.base import build_task

    cfg = compose_run(args.kind)
    metrics = build_task(cfg.task, cfg.model, cfg.data).evaluate(model)
    print(json.dumps(metrics))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_torch(out, model.net.state_dict())
    meta = out.with_suffix(".json")
    previous = json.loads(meta.read_text()) if args.init and meta.is_file() else None
    write_json(meta, {"previous": previous, "init": str(args.init), "cpu_minutes": minutes, "lr": lr,
                      "batch_size": batch_size, "seed": args.seed, "scale": SCALE, "images": IMAGES,
                      "metrics": metrics, "log": log})
    print(f"reference {args.kind} -> {out}")


if __name__ == "__main__":
    main()
