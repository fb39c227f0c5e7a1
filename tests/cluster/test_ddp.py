"""One QAT job with 2 Slurm tasks is one 2-process DDP training, the same as torchrun's."""
import json
import re

import pytest

from .jobs import REPO, TINY_TRAIN, assert_same_tensors, finish, job_logs, slurm_env, start

pytestmark = pytest.mark.cluster


def test_two_task_job_trains_one_ddp_model_equal_to_torchrun(slurm_cluster, image_folder, tmp_path):
    args = [*TINY_TRAIN, f"data.root={image_folder}", "qat.epochs=1", "qat.batch_size=2", "eval_fp=false"]
    env = slurm_env(slurm_cluster)
    job = start(["train.py", "-m", "hydra/launcher=slurm", "hydra.launcher.tasks_per_node=2", *args], tmp_path, env)
    torchrun = start(["-m", "torch.distributed.run", "--nproc_per_node=2", str(REPO / "train.py"), *args,
                      f"hydra.run.dir={tmp_path / 'torchrun'}"], tmp_path, env)
    finish(job)
    finish(torchrun)
    [sweep] = (tmp_path / "multirun" / "train").iterdir()
    metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 4  # 18 images, 9 per rank, batches of 2
    digests = re.findall(r"rank (\d)/2: weights sha256 (\w+), identical on all ranks", job_logs(sweep))
    assert sorted(digests) == [("0", metrics["weights_sha256"]), ("1", metrics["weights_sha256"])]
    assert_same_tensors(sweep / "0" / "quantized.pt", tmp_path / "torchrun" / "quantized.pt")
