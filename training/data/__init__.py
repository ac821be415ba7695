"""The Table II benchmark built from Fashion-MNIST (see :mod:`training.data.benchmark`)."""

from training.data.benchmark import BenchmarkConfig, Split, load_benchmark

__all__ = ["BenchmarkConfig", "Split", "load_benchmark"]
