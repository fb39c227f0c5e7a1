"""Slurm's end-of-job signal inside a submitit job: save after the current step, hand over to submitit
(which requeues), and the requeued run ends with the same weights as an uninterrupted one."""
import signal

import pytest
import torch
from tiny_qat import train_config_factory

from vitquant.io.quantized_checkpoint import read_quantized
from vitquant.pipelines.train import run_training
from vitquant.qat.checkpoint import load_resume
from vitquant.qat.loop import Trainer
from vitquant.qat.preemption import PreemptionSignal

SIGNAL_AT_STEP = 5  # 4 steps per epoch: during epoch 2


class Requeued(BaseException):  # noqa: N818 - what submitit's handler does on rank 0: requeue, then exit
    pass


@pytest.fixture
def submitit_job(monkeypatch):
    """This process as a submitit Slurm task whose signal handler records the call and 'exits'."""
    calls = []

    def submitit_handler(signum, frame):
        calls.append(signum)
        raise Requeued

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    yield calls
    signal.signal(signal.SIGUSR2, previous)


def test_signal_saves_after_the_step_and_the_requeued_run_is_identical(image_folder, tmp_path, submitit_job,
                                                                       monkeypatch):
    make = train_config_factory(image_folder, tmp_path)
    straight = run_training(make("qat.checkpoint_every_steps=null", out="straight"))
    assert straight["resumed_at_steps"] == []

    step = Trainer.train_step

    def train_step_then_signal(self, batch):  # Slurm's signal arrives during step 5
        out = step(self, batch)
        if self.position.step == SIGNAL_AT_STEP and not submitit_job:
            signal.raise_signal(signal.SIGUSR2)
        return out

    monkeypatch.setattr(Trainer, "train_step", train_step_then_signal)
    with pytest.raises(Requeued):
        run_training(make("qat.checkpoint_every_steps=null", out="requeued"))
    assert submitit_job == [signal.SIGUSR2]  # handed over once, after saving
    saved = load_resume(tmp_path / "requeued" / "resume.pt")["position"]
    assert (saved["epoch"], saved["batch"], saved["step"]) == (1, 1, SIGNAL_AT_STEP)
    assert signal.getsignal(signal.SIGUSR2).__name__ == "submitit_handler"  # given back

    resumed = run_training(make("qat.checkpoint_every_steps=null", out="requeued"))  # the requeued job
    assert resumed["resumed_at_steps"] == [SIGNAL_AT_STEP] and resumed["steps"] == straight["steps"]
    _, a, _ = read_quantized(tmp_path / "straight" / "quantized.pt")
    _, b, _ = read_quantized(tmp_path / "requeued" / "quantized.pt")
    assert [k for k in a if torch.is_tensor(a[k]) and not torch.equal(a[k], b[k])] == []
    assert resumed["weights_sha256"] == straight["weights_sha256"]


def test_nothing_is_armed_outside_a_submitit_slurm_job(monkeypatch):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert PreemptionSignal.arm() is None
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    assert PreemptionSignal.arm() is None
