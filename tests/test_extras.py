"""A missing optional package (pip extra) is one `error:` line naming `pip install 'vitquant[<extra>]'`."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

from vitquant.errors import UserError
from vitquant.extras import MissingExtraError, require


def block(monkeypatch, *modules: str) -> None:
    """Make ``modules`` unimportable in this process (a ``None`` in ``sys.modules`` halts their import)."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_require_returns_the_module_or_names_the_extra(monkeypatch):
    assert require("json", "none").dumps(1) == "1"
    block(monkeypatch, "pandas")
    with pytest.raises(MissingExtraError, match=r"pandas is not installed.*pip install 'vitquant\[report\]'") as e:
        require("pandas", "report")
    assert isinstance(e.value, UserError) and isinstance(e.value, ImportError)


def test_a_broken_dependency_of_an_installed_package_keeps_its_traceback(tmp_path, monkeypatch):
    (tmp_path / "half_installed.py").write_text("import not_a_real_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as e:
        require("half_installed", "report")
    assert not isinstance(e.value, MissingExtraError)


def test_wandb_logger_without_wandb(monkeypatch, tmp_path):
    from vitquant.io.logger import RunLogger

    monkeypatch.delenv("WANDB_MODE", raising=False)
    block(monkeypatch, "wandb")
    assert RunLogger({"name": "wandb", "mode": "disabled"}, {}, str(tmp_path), "r", "calibrate").run is None
    with pytest.raises(MissingExtraError, match=r"vitquant\[wandb\]"):
        RunLogger({"name": "wandb", "mode": "offline"}, {}, str(tmp_path), "r", "calibrate")


def test_report_without_pandas_is_one_line(monkeypatch, capsys, tmp_path):
    from vitquant.analysis import report

    block(monkeypatch, "pandas")
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: pandas is not installed; it comes with an optional part of vitquant: " \
                  "pip install 'vitquant[report]'"


def test_diagnostics_plot_without_matplotlib(monkeypatch, tmp_path):
    from vitquant.analysis.diagnostics import plot_sqnr

    block(monkeypatch, "matplotlib", "matplotlib.pyplot")
    with pytest.raises(MissingExtraError, match=r"vitquant\[report\]"):
        plot_sqnr([], tmp_path / "sites.png")


def test_demo_without_scikit_learn_is_one_line(tmp_path):
    """`python -m vitquant.demo` as a user types it, with a stand-in `sklearn` that is not there."""
    shim = tmp_path / "shim" / "sklearn"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'sklearn'\", name='sklearn')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim.parent), str(REPO)]), "OMP_NUM_THREADS": "1",
           "VITQUANT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "vitquant.demo"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "error: sklearn is not installed; it comes with an optional part of vitquant: pip install 'vitquant[demo]'")
    assert not (tmp_path / "cache").exists()
