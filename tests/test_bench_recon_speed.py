"""bench.recon_speed: the whole-run CPU time is extrapolated only when no run reached the target, the
table names the CPU it ran on and whether the children ran side by side or one at a time."""
from __future__ import annotations

import pytest

import bench.recon_speed as recon_speed
from bench.recon_speed import extrapolate, markdown, run_children

STAGE = {"float_s": 0.5, "quant_fwd_bwd_s": 0.7, "quant_ratio": 1.4, "engine_iter_s": 0.6, "engine_ratio": 1.2}


def whole(tree: str, iters: int, cpu_s: float) -> dict:
    return {"tree": tree, "images": 128, "iters": iters, "calib_cpu_s": cpu_s, "process_cpu_s": cpu_s + 20,
            "peak_rss_mb": 3000, "agree_top1": 50.0, "n_eval": 200, "state_checksum": 1.0}


def result(runs: list[dict], target: int) -> dict:
    return {"base_commit": "aaa", "commit": "bbb", "block": 0, "batch": 64, "target_iters": target,
            "cpu": "Some Xeon", "cpu_isa": ["amx_tile", "avx512f"], "memory": {},
            "iteration": {"base": {"stage1": STAGE, "stage3": STAGE}}, "whole": runs}


def test_extrapolation_is_linear_between_two_runs_and_per_block_from_one():
    runs = [whole("base", 2, 100.0), whole("base", 12, 200.0), whole("new", 2, 100.0)]
    iteration = {"new": {"stage1": STAGE, "stage3": STAGE}}
    est = extrapolate(runs, iteration, target=102)
    assert est["base"] == pytest.approx(1100.0)  # 100 + 100 iterations at 10 s each
    assert est["new"] == pytest.approx(100.0 + 100 * 12 * 2 * 0.6)


def test_table_says_measured_when_a_run_reached_the_target_and_extrapolated_otherwise():
    measured = markdown(result([whole("base", 100, 1800.0)], target=100))
    assert "CPU: Some Xeon (amx_tile, avx512f)." in measured
    assert "at 100 iterations, measured: base 30.0" in measured and "extrapolated" not in measured
    res = result([whole("base", 2, 120.0)], target=100)
    res["whole_estimate"] = extrapolate(res["whole"], res["iteration"], 100)
    assert "extrapolated to 100 iterations" in markdown(res)


def test_table_says_how_the_children_shared_the_machine():
    assert "side by side" in markdown(result([whole("base", 100, 1800.0)], target=100))
    alone = result([whole("base", 100, 1800.0)], target=100)
    alone["one_at_a_time"] = True
    assert "alone on the machine" in markdown(alone) and "side by side" not in markdown(alone)


class FakeChild:
    """A child process that reports how many children were alive while it ran."""
    alive = 0
    most = 0

    def __init__(self, cmd, **_) -> None:
        FakeChild.alive += 1
        FakeChild.most = max(FakeChild.most, FakeChild.alive)
        self.returncode = 0

    def communicate(self):
        FakeChild.alive -= 1
        return '{"ok": 1}\n', ""


@pytest.mark.parametrize("one_at_a_time, most", [(False, 3), (True, 1)])
def test_children_run_side_by_side_or_one_at_a_time(monkeypatch, tmp_path, one_at_a_time, most):
    monkeypatch.setattr(recon_speed.subprocess, "Popen", FakeChild)
    FakeChild.alive = FakeChild.most = 0
    rows = run_children([(tmp_path, ["--child", "whole"])] * 3, one_at_a_time)
    assert rows == [{"ok": 1}] * 3 and FakeChild.most == most
