"""A 2-cell PTQ sweep through ``hydra/launcher=slurm``; the same command again skips the finished cell."""
import json

import pytest
from conftest import TINY_RUN

from .jobs import finish, job_logs, slurm_env, start

pytestmark = pytest.mark.cluster


def test_ptq_sweep_on_slurm_lands_in_a_stable_folder_and_skips_finished_cells(slurm_cluster, image_folder, tmp_path):
    args = ["-m", "hydra/launcher=slurm", "method=minmax,percentile", *TINY_RUN, f"data.root={image_folder}",
            "eval_fp=false"]
    env = slurm_env(slurm_cluster)
    finish(start(["calibrate.py", *args], tmp_path, env))
    [sweep] = (tmp_path / "multirun" / "calibrate").iterdir()
    cells = {int(p.parent.name): json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")}
    assert sorted(cells) == [0, 1] and [cells[i]["method"] for i in (0, 1)] == ["minmax", "percentile"]
    assert all((sweep / str(i) / "quantized.pt").is_file() for i in (0, 1))

    # cell 1 as if its job had died before writing metrics.json: the same command finishes only that cell
    finished = (sweep / "0" / "metrics.json").stat().st_mtime_ns
    (sweep / "1" / "metrics.json").unlink()
    finish(start(["calibrate.py", *args], tmp_path, env))
    assert list((tmp_path / "multirun" / "calibrate").iterdir()) == [sweep]
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == finished
    assert json.loads((sweep / "1" / "metrics.json").read_text())["top1"] == cells[1]["top1"]
    assert "metrics.json): skipped" in job_logs(sweep)
