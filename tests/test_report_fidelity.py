"""``vitquant.analysis.report --metric`` on the label-free fidelity metrics of unlabeled evaluations."""
from __future__ import annotations

import json

from vitquant.analysis.report import main


def write_run(folder, method: str, agree: float, kl: float) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({
        "model": "vit_tiny_in1k", "method": method, "policy": "default", "w_bits": 4, "a_bits": 4, "seed": 0,
        "agree_top1": agree, "kl": kl, "logit_sqnr_db": 3.0, "primary_metric": "agree_top1"}))


def test_agreement_has_an_fp_row_and_kl_bolds_the_lowest(tmp_path):
    write_run(tmp_path / "runs" / "a", "repqvit", 31.0, 2.5)
    write_run(tmp_path / "runs" / "b", "percentile", 4.0, 5.0)
    assert main([str(tmp_path / "runs"), "--metric", "agree_top1", "--out", str(tmp_path / "agree")]) == 0
    text = (tmp_path / "agree" / "report.md").read_text()
    assert "| vit_tiny_in1k | FP | 100.00 | 100.00 |" in text and "**31.00**" in text
    assert main([str(tmp_path / "runs"), "--metric", "kl", "--out", str(tmp_path / "kl")]) == 0
    text = (tmp_path / "kl" / "report.md").read_text()
    assert "**2.50**" in text and "**5.00**" not in text and "| FP |" not in text
