"""Unlabeled image folders (``data.format=images``): discovery, items, one-line errors, and the commands on them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from vitquant.data.datasets import build_dataset, has_labels
from vitquant.data.transforms import eval_transform
from vitquant.data.unlabeled import NO_LABEL, UnlabeledImages
from vitquant.errors import UserError

INPUT = {"size": 8, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize": False}
REPO = Path(__file__).resolve().parents[2]


def write_images(folder: Path, names: list[str], size: int = 8) -> Path:
    for k, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size), color=(30 * k, 255 - 30 * k, 7 * k)).save(folder / name)
    return folder


def test_images_are_found_recursively_in_path_order(tmp_path):
    write_images(tmp_path / "val", ["b.png", "a.JPG", "sub/c.jpeg", "sub/deeper/d.bmp"])
    (tmp_path / "val" / "notes.txt").write_text("not an image")
    data = build_dataset({"format": "images", "root": str(tmp_path)}, "val", eval_transform(INPUT))
    assert [p.relative_to(tmp_path / "val").as_posix() for p in data.files] == \
        ["a.JPG", "b.png", "sub/c.jpeg", "sub/deeper/d.bmp"]
    image, label = data[1]
    assert label == NO_LABEL and image.shape == (3, 8, 8) and data.targets == [NO_LABEL] * 4
    torch.testing.assert_close(image[:, 0, 0], torch.tensor([-1.0, 1.0, -1.0]))  # b.png: (0, 255, 0)
    assert not has_labels({"format": "images"}) and has_labels({"format": "folder"})


@pytest.mark.parametrize("case", ["missing", "empty", "only_other_files"])
def test_no_images_is_one_line_naming_the_folder(tmp_path, case):
    folder = tmp_path / "val"
    if case != "missing":
        folder.mkdir()
    if case == "only_other_files":
        (folder / "readme.md").write_text("x")
    match = "does not exist" if case == "missing" else "holds no images"
    with pytest.raises(UserError, match=rf"image folder '{folder}' {match}.*set data.root"):
        UnlabeledImages(folder)


def test_corrupt_image_names_the_file(tmp_path):
    write_images(tmp_path, ["ok.png"])
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    data = UnlabeledImages(tmp_path)
    with pytest.raises(UserError, match=r"image '.*broken.jpg' cannot be read.*remove or replace it"):
        data[0]


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


TINY = ["model=vit_cifar", "model.kwargs.depth=1", "model.kwargs.embed_dim=24", "model.kwargs.num_heads=2",
        "model.kwargs.patch_size=8", "data.format=images", "data.train_split=calib", "data.val_split=eval",
        "task.num_workers=0", "method.n_calib=4", "method=minmax", "bits=4", "logger=none"]


def test_calibrate_and_evaluate_on_an_unlabeled_folder_report_fidelity_only(tmp_path):
    """The commands a user types: a run on unlabeled images, its re-evaluation, and an empty folder (one line)."""
    data = tmp_path / "photos"
    write_images(data / "calib", [f"{i}.png" for i in range(4)], size=32)
    write_images(data / "eval", [f"{i}.jpg" for i in range(5)], size=32)
    save_file(VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=1, num_heads=2,
                                num_classes=10).state_dict(), str(tmp_path / "fp.safetensors"))
    proc = run("calibrate.py", *TINY, "data=cifar10", f"data.root={data}", "model.checkpoint=fp.safetensors",
               "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["primary_metric"] == "agree_top1" and "top1" not in metrics
    assert 0 <= metrics["agree_top1"] <= 100 and metrics["kl"] >= 0 and metrics["n_eval_images"] == 5

    proc = run("evaluate.py", "checkpoint=run/quantized.pt", "task.num_workers=0", "hydra.run.dir=eval", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["agree_top1"] == metrics["agree_top1"] and again["kl"] == pytest.approx(metrics["kl"], rel=1e-6)

    (tmp_path / "empty" / "eval").mkdir(parents=True)
    proc = run("evaluate.py", "checkpoint=run/quantized.pt", f"data.root={tmp_path / 'empty'}",
               "task.num_workers=0", "hydra.run.dir=eval2", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: image folder"), proc.stderr
    assert "holds no images" in lines[0] and not (tmp_path / "eval2").exists()


def test_qat_on_an_unlabeled_folder_distills_and_scores_fidelity(tmp_path):
    """train.py on unlabeled images: the float teacher gives the targets, every epoch is scored by agreement with
    the float model; without a teacher there is nothing to learn from (one line, nothing written)."""
    data = tmp_path / "photos"
    write_images(data / "calib", [f"{i}.png" for i in range(8)], size=32)
    write_images(data / "eval", [f"{i}.jpg" for i in range(5)], size=32)
    save_file(VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=1, num_heads=2,
                                num_classes=10).state_dict(), str(tmp_path / "fp.safetensors"))
    qat = [arg for arg in TINY if arg != "method=minmax"] + [
        "qat=lsq", "data=cifar10", f"data.root={data}", "model.checkpoint=fp.safetensors", "qat.epochs=1",
        "qat.batch_size=4", "qat.n_crops=1", "qat.num_workers=0", "device=cpu"]
    proc = run("train.py", *qat, "hydra.run.dir=qat", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "qat" / "metrics.json").read_text())
    assert metrics["primary_metric"] == "agree_top1" and "top1" not in metrics and "fp_agree_top1" not in metrics
    assert 0 <= metrics["agree_top1"] <= 100 and metrics["kl"] >= 0 and "init_agree_top1" in metrics
    assert metrics["n_eval_images"] == 5  # counted, not the max_eval_images option (unset here)
    assert [sorted(k for k in row if k in ("agree_top1", "kl", "logit_sqnr_db")) for row in metrics["history"]] \
        == [["agree_top1", "kl", "logit_sqnr_db"]] * 2

    proc = run("train.py", *qat, "teacher=none", "hydra.run.dir=nolabels", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "teacher=none leaves no targets" in lines[0], proc.stderr
    assert not (tmp_path / "nolabels").exists()
