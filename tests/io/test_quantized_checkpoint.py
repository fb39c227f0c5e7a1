"""io/quantized_checkpoint: the format reader knows no method (the twins restore themselves)."""
from pathlib import Path


def test_the_checkpoint_loader_knows_no_method():
    """Structure added by methods restores itself (#22.3): the loader imports only errors and io helpers."""
    import ast

    import vitquant.io.quantized_checkpoint as loader

    tree = ast.parse(Path(loader.__file__).read_text())
    ours = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and (node.module or "").startswith("vitquant")}
    assert ours <= {"vitquant.errors", "vitquant.io.atomic"}, ours
