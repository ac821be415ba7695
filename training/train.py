"""Training: losses, the cached-feature fast path, early stopping and checkpointing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from training.models import ModelOutput

LEVELS = ("categories", "subcategories", "attributes")


def compute_loss(output: ModelOutput, targets: dict[str, Tensor], *, multi: bool, kind: str = "bce") -> Tensor:
    """Sum of the three levels' losses.

    Single-class categories use cross-entropy on class indices; every multi-label level uses
    BCE-with-logits (``kind="bce"``) or the paper's MSE on sigmoid scores (``kind="mse"``).
    Deactivated logits are finite (-30), so they add a constant and no gradient.
    """
    if kind not in ("bce", "mse"):
        raise ValueError(f"loss kind must be 'bce' or 'mse', got {kind!r}")

    def multilabel(logits: Tensor, target: Tensor) -> Tensor:
        if kind == "mse":
            return F.mse_loss(torch.sigmoid(logits), target)
        return F.binary_cross_entropy_with_logits(logits, target)

    if multi:
        category_loss = multilabel(output.categories, targets["categories"])
    else:
        category_loss = F.cross_entropy(output.categories, targets["categories"])
    return category_loss + multilabel(output.subcategories, targets["subcategories"]) + multilabel(output.attributes, targets["attributes"])
