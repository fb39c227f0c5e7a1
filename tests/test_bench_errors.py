"""The benchmark commands a user types answer bad input with one ``error:`` line and exit code 2."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(module: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "VITQUANT_SHARED": str(tmp_path / "nothing"), "VITQUANT_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def one_error_line(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert all(w in lines[0] for w in words), lines[0]


def test_quality_with_an_unknown_entry_names_it_and_the_known_ones(tmp_path):
    proc = run("bench.quality", "--entries", "isvit", "nosuchmethod", "--out", str(tmp_path), tmp_path=tmp_path)
    one_error_line(proc, "nosuchmethod", "--entries", "isvit")
    assert not any(tmp_path.glob("*.json"))


def test_references_without_the_shared_folder_says_what_to_set(tmp_path):
    one_error_line(run("bench.references", tmp_path=tmp_path), "VITQUANT_SHARED", "train_reference.py")
    assert not (tmp_path / "cache").exists()


def test_train_memory_without_a_baseline_tree_says_how_to_make_one(tmp_path):
    one_error_line(run("bench.train_memory", "--base", str(tmp_path / "nowhere"), "--out", str(tmp_path),
                       tmp_path=tmp_path), "--base", "git worktree add")
    assert not any(tmp_path.glob("*.json"))


def test_train_memory_with_no_epochs_names_the_value(tmp_path):
    one_error_line(run("bench.train_memory", "--base", str(tmp_path), "--epochs", "0", "--out", str(tmp_path),
                       tmp_path=tmp_path), "--epochs 0", "at least one epoch")
    assert not any(tmp_path.glob("*.json"))


def test_recon_speed_without_a_baseline_tree_says_how_to_make_one(tmp_path):
    for base in ([], ["--base", str(tmp_path / "nowhere")]):
        one_error_line(run("bench.recon_speed", *base, "--one-at-a-time", "--out", str(tmp_path), tmp_path=tmp_path),
                       "--base", "git worktree add")
    assert not any(tmp_path.glob("recon_speed*"))


def test_recon_speed_without_the_shared_model_says_what_to_set(tmp_path):
    (tmp_path / "base" / "vitquant").mkdir(parents=True)
    proc = run("bench.recon_speed", "--base", str(tmp_path / "base"), "--out", str(tmp_path), tmp_path=tmp_path)
    one_error_line(proc, "vit_tiny_augreg_in1k.safetensors", "VITQUANT_SHARED")
    assert not any(tmp_path.glob("recon_speed*"))
