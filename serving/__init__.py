"""The model as it serves: its definition and ontology, checkpoints and the registry, image decoding,
prediction, hot-swap and promotion. Training builds on this package; nothing here imports training."""
