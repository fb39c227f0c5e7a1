"""`make demo`: trains the digits model on first use, caches it, and prints the quantization table."""
from __future__ import annotations

from vitquant import demo


def test_demo_trains_caches_and_prints_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VITQUANT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "RUNS", [("minmax", 8), ("percentile", 4)])
    demo.main()
    out = capsys.readouterr().out
    assert (tmp_path / "cache" / "vit_digits.safetensors").exists()
    rows = [line for line in out.splitlines() if line.startswith("| minmax") or line.startswith("| percentile")]
    assert len(rows) == 2
    fp_top1 = float(rows[0].split("|")[3])
    assert fp_top1 > 80.0, "the demo model did not learn the digits"
    assert (tmp_path / "outputs" / "demo" / "percentile_w4a4" / "metrics.json").exists()
