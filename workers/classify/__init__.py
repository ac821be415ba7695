"""The classifier stage: posts + hints → labels (see :mod:`workers.classify.stage`)."""

from workers.classify.stage import ClassifyStage, run

__all__ = ["ClassifyStage", "run"]
