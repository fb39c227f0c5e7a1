"""The core package never imports OpenMMLab code: only the task adapters may (the [mm] extra is optional)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "vitquant"
MM = ("mmcv", "mmdet", "mmengine", "mmseg")
ADAPTERS = {"detection.py", "segmentation.py", "mm_common.py", "mm_task.py", "mm_swin.py", "mm_checkpoint.py"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return names | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}


def test_only_task_adapters_import_mm():
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if any(m.split(".")[0] in MM for m in imported_modules(p))
                 and not (p.parent.name == "tasks" and p.name in ADAPTERS)]
    assert not offenders
