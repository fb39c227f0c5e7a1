"""Slurm's end-of-job signal under submitit: save ``resume.pt`` at a step boundary, then requeue.

submitit asks Slurm for a signal ``signal_delay_s`` seconds before the time limit (``--signal=USR2@N``,
the same signal a preemption sends) and installs a handler for it before the task starts: on rank 0
it calls the launcher's ``checkpoint`` (Hydra's submitit launcher resubmits the same job, same
overrides, same run folder), runs ``scontrol requeue`` and exits; other ranks ignore it. That handler
knows nothing about the training, and running the save inside a signal handler would catch the
optimizer half-way through a step. So during training this module takes the signal over:

1. the signal only sets a flag;
2. after each step the ranks agree (one all-reduce) whether any of them got it, so every rank stops
   after the same step;
3. rank 0 writes ``resume.pt``, all ranks meet at a barrier, then rank 0 calls submitit's handler
   (checkpoint, requeue, exit); the other ranks wait for the requeue to end them (after a minute they
   stop with :class:`~vitquant.qat.loop.TrainingStopped`, which submitit does not record as a result,
   so the requeued job's results count).

The requeued job runs the same command and resumes from ``resume.pt`` exactly where the signal
stopped it. Outside a submitit Slurm job nothing is installed.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger("vitquant")
OTHER_RANKS_WAIT_S = 60  # ranks > 0 wait this long for the requeue to end them


class PreemptionSignal:
    """The flag behind steps 1-3; ``arm()`` returns None outside a submitit Slurm job."""

    def __init__(self, signum: int, submitit_handler: Callable[[int, FrameType | None], Any]) -> None:
        self.signum, self.submitit_handler = signum, submitit_handler
        self.frame: FrameType | None = None
        self.requested = False

    @classmethod
    def arm(cls) -> PreemptionSignal | None:
        if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
            return None
        import submitit

        signum = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
        previous = signal.getsignal(signum)
        if not callable(previous):  # not started by submitit's job runner: nothing to hand over to
            return None
        guard = cls(signum, previous)
        signal.signal(signum, guard.note)
        return guard

    def note(self, signum: int, frame: FrameType | None) -> None:
        log.warning("got %s (time limit or preemption): saving after this step, then requeueing",
                    signal.Signals(signum).name)
        self.requested, self.frame = True, frame

    def disarm(self) -> None:
        """Give the signal back to submitit (training over: a late signal requeues nothing of ours)."""
        signal.signal(self.signum, self.submitit_handler)

    def hand_over(self, is_main: bool) -> None:
        """After ``resume.pt`` is written: rank 0 lets submitit checkpoint, requeue and exit; others stop."""
        from vitquant.qat.loop import TrainingStopped

        self.disarm()
        if is_main:
            self.submitit_handler(self.signum, self.frame)  # exits (requeued) or raises (not requeued)
        else:  # leave the requeue to rank 0: a task that ends first could make srun end the job before it
            time.sleep(OTHER_RANKS_WAIT_S)
        raise TrainingStopped("stopped for a requeue: the job resumes from resume.pt")
