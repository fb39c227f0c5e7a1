"""vitquant's Hydra launchers (``hydra/launcher=local|slurm|slurm_cpu``), registered where Hydra looks for plugins.

Hydra instantiates only launchers defined under the ``hydra_plugins`` namespace; the logic is in
``vitquant.launch.submitit``. Defined only when hydra-submitit-launcher (the ``slurm`` extra) is installed.
"""
from importlib.util import find_spec

if find_spec("hydra_plugins.hydra_submitit_launcher") is not None:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher as _submitit

    from vitquant.launch.submitit import CheckSlurmRequest, WaitForEveryJob

    class LocalLauncher(WaitForEveryJob, _submitit.LocalLauncher):
        """submitit's local executor; every job of the sweep is waited for."""

    class SlurmLauncher(CheckSlurmRequest, WaitForEveryJob, _submitit.SlurmLauncher):
        """Slurm through submitit; the request is checked against ``sinfo`` first, every job is waited for."""
