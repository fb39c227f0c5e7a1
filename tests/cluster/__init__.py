"""Tests against a real one-node Slurm cluster (marker ``cluster``, ``make test-cluster``)."""
