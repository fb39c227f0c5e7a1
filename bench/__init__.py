"""Benchmarks run by `make bench` (quality and speed on the CIFAR reference models)."""
