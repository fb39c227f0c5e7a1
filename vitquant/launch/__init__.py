"""Hydra launchers for sweeps: the submitit Slurm/local launchers with two additions.

* ``resources``: before anything is submitted, the Slurm request (CPUs, memory, GPUs, time, nodes) is
  checked against what ``sinfo`` says the partition offers; a request no node can satisfy ends with one
  ``error:`` line naming the override to change, instead of a job refused by ``sbatch`` or PENDING forever.
* ``cells``: every job of a sweep is waited for, even when another one failed (an exception, a one-line
  user error, ``scancel``, a time or memory limit); failed jobs are recorded with their error line in
  ``<sweep>/failed_jobs.json``, which ``vitquant.analysis.report`` lists.
"""
