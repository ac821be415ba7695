"""The paper's ranking metrics, computed as its formulas state (the authors' code divided P@1/P@3 by 5)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from streamcore.extras import needs

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


def paired_interval(values: list[float]) -> tuple[float, float]:
    """``(mean, half-width)`` of a t-based 95% confidence interval of ``values`` (e.g. per-seed differences).

    One value gives an infinite half-width: a single seed says nothing about the spread.
    """
    with needs("train"):
        from scipy import stats

    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()) if len(x) else float("nan"), float("inf")
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean()), float(half)


def hint_quality(hint_categories: Tensor, categories: Tensor) -> dict[str, float]:
    """How good the mined category hints are on a split.

    ``coverage``: fraction of images with any category hint; ``precision``: among those, fraction whose
    top hinted category is a true one; ``recall``: fraction of true categories hinted at all.
    """
    hinted = (hint_categories > 0).any(1)
    top = hint_categories.argmax(1)
    top_right = categories.gather(1, top[:, None])[:, 0] > 0
    found = ((hint_categories > 0) & (categories > 0)).sum()
    return {
        "coverage": float(hinted.float().mean()),
        "precision": float(top_right[hinted].float().mean()) if hinted.any() else 0.0,
        "recall": float(found / categories.sum().clamp(min=1)),
    }
