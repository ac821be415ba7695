"""Benchmark data: Fashion-MNIST items (``fashion_mnist``), painted textures (``textures``) and the Table II
benchmark built from them with mined hints (``benchmark``, ``captions``).

Import the submodules themselves: this face imports nothing, so the synthetic post generator, which needs
only the images, does not load the text miner (gensim, nltk) that the benchmark uses.
"""
