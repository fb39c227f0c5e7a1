"""QAT runs on the tiny ViT: loss goes down, exact resume, evaluate.py rebuilds the result, DDP."""
import multiprocessing as mp
import os
from pathlib import Path

import pytest
import torch
from tiny_qat import train_config_factory

from vitquant.io.quantized_checkpoint import read_quantized
from vitquant.pipelines.train import fit, run_training
from vitquant.qat.loop import TrainingStopped


@pytest.fixture
def tiny_train(image_folder, tmp_path):
    return train_config_factory(image_folder, tmp_path)


def test_training_steps_lower_the_loss(tiny_train):
    metrics = run_training(tiny_train("qat.epochs=4", "teacher=none", "qat.reg.weight=0"))
    losses = [row["loss"] for row in metrics["history"][1:]]
    assert losses[-1] < losses[0]
    assert metrics["oscillation_rate"] is not None and 0 <= metrics["oscillation_rate"] <= 1


def test_kill_and_resume_gives_identical_weights(tiny_train, tmp_path):
    run_training(tiny_train("qat.checkpoint_every_steps=3", out="straight"))
    # 4 steps/epoch: checkpoints at steps 3, 4 (epoch end) and 6; "killed" after step 7, i.e. mid-epoch,
    # with one step done after the last checkpoint (which the resumed run must redo identically).
    with pytest.raises(TrainingStopped):
        run_training(tiny_train("qat.checkpoint_every_steps=3", "qat.stop_after_steps=7", out="killed"))
    assert (tmp_path / "killed" / "resume.pt").is_file() and not (tmp_path / "killed" / "metrics.json").exists()
    resumed = run_training(tiny_train("qat.checkpoint_every_steps=3", out="killed"))
    assert resumed["steps"] == 8
    _, a, _ = read_quantized(tmp_path / "straight" / "quantized.pt")
    _, b, _ = read_quantized(tmp_path / "killed" / "quantized.pt")
    assert a.keys() == b.keys()
    different = [k for k in a if torch.is_tensor(a[k]) and not torch.equal(a[k], b[k])]
    assert not different


def test_evaluate_rebuilds_the_qat_checkpoint(tiny_train, tmp_path, image_folder):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from vitquant.cli import CONF_DIR
    from vitquant.pipelines.evaluate import run_evaluation

    metrics = run_training(tiny_train("qat.epochs=1", "qat=lsq"))
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"checkpoint={tmp_path / 'run' / 'quantized.pt'}", "device=cpu",
                                             "task.num_workers=0"])
    with open_dict(cfg):
        cfg.out_dir = str(tmp_path / "eval")
    assert run_evaluation(cfg)["top1"] == pytest.approx(metrics["top1"])


def test_fine_tune_a_ptq_checkpoint(tiny_run, tiny_train, tmp_path):
    from vitquant.pipelines.calibrate import run_calibration

    run_calibration(tiny_run("method=minmax", "bits=4", out="ptq"))
    metrics = run_training(tiny_train(f"init={tmp_path / 'ptq' / 'quantized.pt'}", "qat.epochs=1", out="ft"))
    assert metrics["method"] == "minmax" and metrics["w_bits"] == 4 and metrics["init_top1"] is not None


def _ddp_worker(rank: int, cfg, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    result = fit(cfg)
    torch.save({"state": result.model.state_dict(), "steps": result.metrics["steps"]}, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_ddp_two_cpu_processes_keep_equal_weights(tiny_train, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tiny_train("qat.epochs=1", "qat.batch_size=2", "qat.checkpoint_every_steps=null")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_ddp_worker, args=(r, cfg, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert a["steps"] == b["steps"] == 4  # 18 images, 9 per rank, batches of 2
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"] if torch.is_tensor(a["state"][k]))
    assert (tmp_path / "run" / "resume.pt").is_file()  # written by rank 0


def test_offline_soft_labels_are_written_and_replayed(tiny_train, tmp_path):
    from vitquant.pipelines.soft_labels import write_soft_labels

    labels = tmp_path / "fkd"
    meta = write_soft_labels(tiny_train(f"soft_labels.dir={labels}", "soft_labels.n_stored=3", "soft_labels.topk=2"))
    assert meta["n_stored"] == 3 and meta["classes"] == 3 and len(list(labels.glob("*.pt"))) == 18
    metrics = run_training(tiny_train(f"soft_labels.dir={labels}", "qat.epochs=1", out="replay"))
    assert metrics["steps"] == 4 and metrics["history"][-1]["task_loss"] > 0


@pytest.mark.slow
def test_swin_trains_with_head_wise_scales(tiny_train):
    metrics = run_training(tiny_train("qat.epochs=1", "teacher=none", out="swin", swin=True))
    assert metrics["steps"] == 4 and metrics["top1"] is not None
