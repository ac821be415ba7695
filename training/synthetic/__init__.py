"""Synthetic data built from the ontology: captions (``captions``), garment images (drawn silhouettes in
``images``, Fashion-MNIST garments in ``fashion_mnist`` painted with ``textures``) and whole posts (``posts``).

Nothing here needs the text miner or the models, so any machine can generate posts.
"""
