"""`pip install .` works: the INSTALLED wheel (configs inside the package) runs from any directory.

The wheel is built from a copy of the sources and installed with ``--no-deps`` into a fresh venv that sees
this environment's packages (torch, timm, ...) through a ``.pth`` line, but not this checkout: the ``.pth``
files of this environment (its editable vitquant) are not processed there, ``PYTHONPATH`` is unset and
the commands run in a temporary directory.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import REPO, TINY_RUN

pytestmark = pytest.mark.wheel


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A venv with the vitquant wheel installed; returns its ``bin`` folder."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "vitquant", src / "vitquant", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "--no-index", "--no-build-isolation", str(src),
                    "-w", str(root / "dist")], check=True, capture_output=True, timeout=600)
    wheel = next((root / "dist").glob("vitquant-*.whl"))
    env = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=300)
    site = subprocess.run([env / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(site) / "project_deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([*pip, "--python", str(env / "bin" / "python"), "install", "--quiet", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, timeout=600)
    return env / "bin"


def run(venv: Path, command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environ.update({"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", **env})
    return subprocess.run([str(venv / command[0]), *command[1:]], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=1200)


def test_the_installed_package_is_imported_with_its_configs(venv, tmp_path):
    proc = run(venv, ["python", "-c", "import vitquant.cli as c; print(c.__file__); print(sorted(p.name for p in "
                      "(c.CONF_DIR / 'model').glob('*.yaml'))[:3]); print((c.CONF_DIR / 'model_input/timm.yaml')"
                      ".is_file())"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    where, models, input_yaml = proc.stdout.splitlines()
    assert Path(where).is_relative_to(venv.parent) and not Path(where).is_relative_to(REPO)
    assert models.startswith("['cascade_mask_rcnn") and input_yaml == "True"


def test_console_script_calibrates_from_another_directory(venv, tmp_path, image_folder):
    """`vitquant-calibrate` with the configs from the wheel; a timm argument via model.kwargs without `+`."""
    proc = run(venv, ["vitquant-calibrate", *TINY_RUN, f"data.root={image_folder}", "method=minmax",
                      "model.kwargs.qkv_bias=false", "hydra.run.dir=run"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["method"] == "minmax"
    assert "qkv_bias: false" in (tmp_path / "run" / "config.yaml").read_text()
    proc = run(venv, ["python", "-c", "import torch; s = torch.load('run/quantized.pt', weights_only=True)"
                      "['state_dict']; print(any(k.endswith('qkv.bias') for k in s), any('qkv' in k for k in s))"],
               cwd=tmp_path)
    assert proc.stdout.split() == ["False", "True"], proc.stderr


def test_module_entry_point_reports_bad_input_in_one_line(venv, tmp_path):
    proc = run(venv, ["python", "-m", "vitquant.cli.calibrate", "model.kwarg.depth=2", "hydra.run.dir=out"],
               cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and "model.kwarg.depth" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_demo_runs_from_the_wheel(venv, tmp_path):
    """`vitquant-demo` (= python -m vitquant.demo): trains the digits model into a fresh cache, prints the table."""
    proc = run(venv, ["vitquant-demo"], cwd=tmp_path, VITQUANT_CACHE=str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| minmax", "| percentile"))]
    assert len(rows) == 4 and float(rows[0].split("|")[3]) > 80.0, proc.stdout
    assert (tmp_path / "outputs" / "demo" / "percentile_w4a4" / "metrics.json").exists()
