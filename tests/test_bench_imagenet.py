"""bench.imagenet: the grid the issue asks for, resumable rows, and the table with the papers' orderings."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.imagenet import METHODS, Cell, agree_values, grid, key, main, verdict, write_markdown
from bench.machine import cpu_name_and_flags

REPO = Path(__file__).resolve().parents[1]


def test_grid_has_every_method_at_w4_w6_and_the_extra_cells():
    cells = grid(list(METHODS), None, [0, 1, 2])
    by = {(c.method, c.bits, c.policy) for c in cells}
    own = {"fqvit": "full", "tsptq": "full"}
    assert all((m, b, own.get(m, "default")) in by for m in METHODS for b in (4, 6))
    assert {m for m, b, _ in by if b == 3} == {"repqvit", "qdrop", "isvit", "aiqvit"}
    assert {(m, b) for m, b, p in by if p == "full"} == \
        {(m, b) for m in ("fqvit", "ptq4vit", "tsptq") for b in (4, 6, 8)}
    assert len(cells) == 3 * len(by) and Cell("isvit", 3, "default", 2) in cells
    assert grid(["repqvit"], [4], [0]) == [Cell("repqvit", 4, "default", 0)]


def row(method: str, bits: int, agree: float, seed: int = 0, policy: str = "default") -> dict:
    return {"method": method, "policy": policy, "w_bits": bits, "a_bits": bits, "seed": seed, "budget": "official",
            "agree_top1": agree, "kl": 1.0, "logit_sqnr_db": 5.0, "calib_cpu_seconds": 10.0, "n_calib": 32,
            "n_eval_images": 301}


def test_table_aggregates_seeds_and_checks_the_orderings(tmp_path):
    rows = [row("repqvit", 4, 30.0), row("repqvit", 4, 34.0, seed=1), row("percentile", 4, 2.0),
            row("ptq4vit", 4, 10.0), row("fqvit", 8, 99.5, policy="full"), row("ptq4vit", 6, 40.0),
            row("percentile", 6, 45.0)]
    text = write_markdown(rows, tmp_path / "imagenet.md")
    assert "| default | repqvit | W4A4 | official | 32 | 2 | 32.0 ± 2.8 |" in text
    assert "| repqvit > ptq4vit (default) | 32.0 ± 2.8 vs 10.0 | yes | not measured yet | — |" in text
    assert "| ptq4vit > percentile (default) | 10.0 vs 2.0 | yes | 40.0 vs 45.0 | no |" in text
    assert "| isvit > repqvit (default) | not measured yet | — | not measured yet | — |" in text
    assert "| fqvit full W8A8 within ~1 point of FP | 99.5 % agreement | yes |" in text
    assert key(rows[0]) != key(rows[1])
    collapsed = write_markdown([row("ptq4vit", 4, 0.3), row("percentile", 4, 1.0)], tmp_path / "c.md")
    assert "| ptq4vit > percentile (default) | 0.3 vs 1.0 | no signal (both < 5 %) |" in collapsed


def test_an_ordering_within_the_seed_spread_is_a_tie():
    """52.8 ± 0.7 vs 51.5 ± 2.3 (repqvit vs ptq4vit, W6A6 on the real ViT-Ti): the means differ by less than the
    seeds' spread √(0.7² + 2.3²) ≈ 2.4, so the seeds cannot order the two; a gap beyond the spread does."""
    assert verdict([52.0, 53.0, 53.4], ">", [54.2, 50.2, 50.2]) == \
        ("52.8 ± 0.7 vs 51.5 ± 2.3", "tie (within the seed spread)")
    assert verdict([56.0, 57.0], ">", [52.0, 53.0])[1] == "yes"
    assert verdict([52.0, 53.0], ">", [56.0, 57.0])[1] == "no"
    assert verdict([48.0, 52.0], ">=", [51.0, 53.0])[1] == "yes"  # d = −2 within the spread of 2.5
    assert verdict([40.0], ">=", [45.0])[1] == "no"


def test_cells_already_in_the_json_are_skipped(tmp_path, monkeypatch, capsys):
    import bench.imagenet as bench

    monkeypatch.setattr(bench, "generate", lambda *a, **k: {"images": {"calib": 112, "eval": 301}})
    monkeypatch.setattr(bench, "WEIGHTS", tmp_path / "w.safetensors")
    (tmp_path / "w.safetensors").write_bytes(b"")
    (tmp_path / "imagenet.json").write_text(json.dumps([row("minmax", 4, 1.0)]))
    ran = []
    monkeypatch.setattr(bench, "run_cell", lambda cell, *a, **k: ran.append(cell) or row(cell.method, cell.bits, 5.0,
                                                                                      cell.seed))
    main(["--methods", "minmax", "--seeds", "0", "--out", str(tmp_path)])
    assert ran == [Cell("minmax", 6, "default", 0)]
    assert len(json.loads((tmp_path / "imagenet.json").read_text())) == 2
    assert "1 rows already" in capsys.readouterr().out


def test_qat_cells_run_lsq_and_vvtq_and_get_their_own_table(tmp_path, monkeypatch):
    import bench.imagenet as bench

    monkeypatch.setattr(bench, "generate", lambda *a, **k: {"images": {"calib": 112, "eval": 301}})
    monkeypatch.setattr(bench, "WEIGHTS", tmp_path / "w.safetensors")
    (tmp_path / "w.safetensors").write_bytes(b"")
    ran = []

    def fake(method, seed, imageset, epochs, work, max_eval=None):
        ran.append((method, seed))
        return {"method": method, "policy": "keep_ends_8bit", "w_bits": 4, "a_bits": 4, "seed": seed,
                "agree_top1": 40.0 + seed, "kl": 1.0, "logit_sqnr_db": 3.0, "init_agree_top1": 10.0,
                "train_cpu_seconds": 100.0, "steps": 7, "epochs": epochs, "kind": "qat", "budget": f"{epochs} epoch",
                "n_eval_images": 301}

    monkeypatch.setattr(bench, "run_qat_cell", fake)
    main(["--qat", "--seeds", "0", "1", "--out", str(tmp_path)])
    main(["--qat", "--seeds", "0", "1", "--out", str(tmp_path)])  # nothing left to run
    assert ran == [("lsq", 0), ("lsq", 1), ("vvtq", 0), ("vvtq", 1)]
    text = (tmp_path / "imagenet.md").read_text()
    assert "| lsq | keep_ends_8bit | 1 epoch | 7 | 2 | 10.0 ± 0.0 | 40.5 ± 0.7 | 1.000 ± 0.000 |" in text
    assert "| default |" not in text  # QAT rows stay out of the PTQ table


def test_markdown_header_counts_only_the_ptq_evaluations(tmp_path):
    """The PTQ table's header names its evaluation set; a QAT row (from train.py) does not enter it."""
    ptq = {"method": "minmax", "policy": "default", "w_bits": 6, "a_bits": 6, "seed": 0, "budget": "official",
           "n_calib": 32, "agree_top1": 35.0, "kl": 1.3, "logit_sqnr_db": 3.4, "calib_cpu_seconds": 5.0,
           "n_eval_images": 301}
    qat = {"method": "lsq", "policy": "keep_ends_8bit", "w_bits": 4, "a_bits": 4, "seed": 0, "agree_top1": 2.0,
           "kl": 5.0, "logit_sqnr_db": -1.0, "init_agree_top1": 0.0, "train_cpu_seconds": 250.0, "steps": 7,
           "epochs": 1, "kind": "qat", "budget": "1 epoch", "n_eval_images": None}
    text = write_markdown([ptq, qat], tmp_path / "imagenet.md")
    assert "Evaluation: 301 COCO128 object crops" in text and "| lsq | keep_ends_8bit | 1 epoch |" in text


def test_markdown_counts_rows_per_cpu(tmp_path):
    """Same-seed results move between CPUs, so the table says how many rows ran where (older rows: not recorded)."""
    row = {"method": "minmax", "policy": "default", "w_bits": 6, "a_bits": 6, "seed": 0, "budget": "official",
           "n_calib": 32, "agree_top1": 35.0, "kl": 1.3, "logit_sqnr_db": 3.4, "calib_cpu_seconds": 5.0,
           "n_eval_images": 301}
    rows = [{**row, "cpu": "CPU A"}, {**row, "seed": 1, "cpu": "CPU A"}, {**row, "seed": 2}]
    text = write_markdown(rows, tmp_path / "imagenet.md")
    assert "Rows per CPU (same-seed results move by a few images between CPUs): CPU A: 2; not recorded: 1." in text
    assert cpu_name_and_flags()[0]


def test_claims_use_the_largest_budget_of_a_cell():
    """A cell run at two budgets (cpu50it on CPU, then official on a GPU) is judged on the larger one alone."""
    small = [{**row("isvit", 4, 18.0, seed=s), "budget": "cpu50it"} for s in (0, 1)]
    rows = [*small, row("isvit", 4, 60.0), {**row("isvit", 4, 30.0), "budget": "cpu"}]
    assert agree_values(rows, "isvit", 4, "default") == [60.0]
    assert agree_values(rows[:2], "isvit", 4, "default") == [18.0, 18.0]
    assert agree_values(rows, "qdrop", 4, "default") == []


def test_command_without_the_shared_model_is_one_error_line_and_exit_2(tmp_path):
    """What a user outside this workplace types: ``python -m bench.imagenet`` with no shared folder."""
    out = tmp_path / "results"
    env = {**os.environ, "VITQUANT_SHARED": str(tmp_path / "nothing")}
    run = subprocess.run([sys.executable, "-m", "bench.imagenet", "--out", str(out), "--seeds", "0"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "VITQUANT_SHARED" in lines[0]
    assert not out.exists()


def test_a_child_reports_its_own_peak_memory_and_its_error():
    from bench.imagenet import run_child

    small = run_child([sys.executable, "-c", "pass"], REPO)
    big = run_child([sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"], REPO)
    assert 0 < small < big and big - small > 250  # MB, the child's own maximum
    try:
        run_child([sys.executable, "-c", "import sys; sys.exit('boom here')"], REPO)
    except RuntimeError as e:
        assert "boom here" in str(e)
    else:
        raise AssertionError("a failing child must raise")


def test_train_memory_runs_every_cell_from_both_trees_and_compares_the_models(tmp_path, monkeypatch):
    import bench.train_memory as tm

    monkeypatch.setattr(tm, "generate", lambda *a, **k: {"images": {"calib": 112}})
    monkeypatch.setattr(tm, "WEIGHTS", tmp_path / "w.safetensors")
    monkeypatch.setattr(tm, "git_head", lambda tree: tree.name)
    (tmp_path / "w.safetensors").write_bytes(b"")
    base = tmp_path / "base"
    base.mkdir()
    (base / "train.py").write_text("")
    ran = []

    def fake_qat(method, seed, imageset, epochs, work, max_eval=None, tree=None, init=None):
        ran.append((method, tree, init and init.parent == ptq_out[-1]))
        return {"steps": 7, "agree_top1": 3.0, "kl": 3.5, "train_cpu_seconds": 100.0,
                "peak_rss_mb": 6000 if tree == base else 3000, "state_sha256": "ab" * 32}

    ptq_out = []

    def fake_ptq(cell, imageset, n_calib, full, work, max_eval=None, recon_iters=None, tree=None, out=None):
        ran.append((cell.method, tree, out is not None))
        if cell.method == "percentile":  # the PTQ result the init cell fine-tunes
            assert (n_calib, recon_iters, out.parent) == (112, None, work)
            ptq_out.append(out)
            return {}
        qdrop = cell.method == "qdrop"  # at its cpu50it budget; ptq4vit at its own
        assert (cell.bits, n_calib, recon_iters, full) == ((4, 64, 50, False) if qdrop else (4, 112, None, False))
        cpu = 600.0 if tree == base else 450.0
        return {"budget": "cpu50it" if qdrop else "official", "n_calib": n_calib, "agree_top1": 13.0, "kl": 2.0,
                "calib_cpu_seconds": cpu, "peak_rss_mb": 3000,
                "state_sha256": "cd" * 32 if tree == base else "ef" * 32}

    monkeypatch.setattr(tm, "run_qat_cell", fake_qat)
    monkeypatch.setattr(tm, "run_cell", fake_ptq)
    res = tm.main(["--base", str(base), "--out", str(tmp_path)])
    trees = (base, tm.REPO)
    assert ran == [(c, t, None) for c in ("lsq", "vvtq") for t in trees] + \
        [x for t in trees for x in (("percentile", t, True), ("lsq", t, True))] + \
        [(m, t, False) for m in ("qdrop", "ptq4vit") for t in trees]
    assert res["ratios"]["lsq"] == {"peak_rss": 0.5, "cpu": 1.0, "same_state": True}
    text = (tmp_path / "train_memory.md").read_text()
    assert "| ptq_init | 0.50 | 1.00 | True |" in text and "| qdrop | 1.00 | 0.75 | False |" in text
    assert "| ptq4vit | PTQ W4A4, official, 112 images |" in text
    ran.clear()
    res = tm.main(["--base", str(base), "--out", str(tmp_path), "--cells", "qdrop"])  # the others are kept
    assert [c for c, *_ in ran] == ["qdrop", "qdrop"]
    assert list(res["ratios"]) == ["lsq", "vvtq", "ptq_init", "qdrop", "ptq4vit"]
