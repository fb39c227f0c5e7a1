"""One QAT job with 2 Slurm tasks is one 2-process DDP training, the same as torchrun's."""
import json
import re

import pytest

from .jobs import assert_same_tensors, cleanup, finish, job_logs, slurm_env, start

pytestmark = pytest.mark.cluster
STEPS = 2 * 15  # 120 images, 60 per rank, batches of 4 (TINY_TRAIN's qat.batch_size), 2 epochs


def test_two_task_job_trains_one_ddp_model_equal_to_torchrun(slurm_cluster, qat_reference, tmp_path):
    with cleanup(tmp_path) as procs:
        procs.append(job := start(["train.py", "-m", "hydra/launcher=slurm", "hydra.launcher.tasks_per_node=2",
                                   *qat_reference.args], tmp_path, slurm_env(slurm_cluster)))
        finish(job)
    [cell] = tmp_path.glob("multirun/train/*/0")
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == STEPS and metrics["resumed_at_steps"] == []
    digests = re.findall(r"rank (\d)/2: weights sha256 (\w+), identical on all ranks", job_logs(cell.parent))
    assert sorted(digests) == [("0", metrics["weights_sha256"]), ("1", metrics["weights_sha256"])]
    assert_same_tensors(cell / "quantized.pt", qat_reference.quantized())
