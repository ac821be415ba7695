"""The Table II benchmark built from Fashion-MNIST (see :mod:`training.data.benchmark`)."""

__all__ = ["BenchmarkConfig", "Split", "load_benchmark"]


def __getattr__(name: str):
    # Loaded on first use: the benchmark imports the text miner (gensim), which the serving side and
    # the image-only modules of this package (fashion_mnist, textures) must not pull in.
    if name in __all__:
        from training.data import benchmark

        return getattr(benchmark, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
