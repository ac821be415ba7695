"""The paper's ranking metrics, computed as its formulas state (the authors' code divided P@1/P@3 by 5)."""

from __future__ import annotations

import torch
from torch import Tensor

KS = (1, 3, 5)


def precision_recall_at_k(scores: Tensor, targets: Tensor, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """``P@k = mean |Y ∩ top-k| / k`` and ``R@k = mean |Y ∩ top-k| / |Y|`` over examples with ``|Y| > 0``.

    Args:
        scores: ``[N, C]`` logits or probabilities.
        targets: ``[N, C]`` multi-hot ground truth.
    """
    keep = targets.sum(1) > 0
    scores, targets = scores[keep].float(), targets[keep].float()
    order = scores.argsort(dim=1, descending=True, stable=True)
    hits = targets.gather(1, order)  # hits[:, j] = 1 when the j-th ranked class is relevant
    sizes = targets.sum(1)
    out = {}
    for k in ks:
        found = hits[:, :k].sum(1)
        out[f"P@{k}"] = float((found / k).mean()) if len(found) else 0.0
        out[f"R@{k}"] = float((found / sizes).mean()) if len(found) else 0.0
    return out


def mean_average_precision(scores: Tensor, targets: Tensor) -> float:
    """Mean over classes (with at least one positive) of the average precision of their ranking."""
    scores, targets = scores.float(), targets.float()
    order = scores.argsort(dim=0, descending=True, stable=True)
    hits = targets.gather(0, order)
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1, device=hits.device)[:, None]
    positives = hits.sum(0)
    ap = (precision * hits).sum(0) / positives.clamp(min=1)
    return float(ap[positives > 0].mean()) if (positives > 0).any() else 0.0


def level_metrics(scores: Tensor, targets: Tensor) -> dict[str, float]:
    """P@k, R@k for k in 1, 3, 5 and mAP for one level."""
    return {**precision_recall_at_k(scores, targets), "mAP": mean_average_precision(scores, targets)}
