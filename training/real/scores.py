"""Real-photo scores: per-category AP, mAP, the top garment worn on the body, single-garment top-1,
calibration error, abstain rates, sub-category mAP and top-1, and the chance baselines to read them against."""

from __future__ import annotations

import numpy as np
import torch

from training.metrics import mean_average_precision

#: Not garments worn on the body (carried, added, or on the feet: shoes show in nearly every street photo, so
#: they would make "the top garment" trivial): left out of "the top garment worn on the body".
NOT_WORN = ("bags", "all_accessories", "shoes")


def average_precisions(probs: np.ndarray, targets: np.ndarray, names: list[str]) -> dict[str, float]:
    """AP of each category's ranking over the photos (categories with a positive only)."""
    out = {}
    for k, name in enumerate(names):
        if targets[:, k].any():
            out[name] = mean_average_precision(torch.from_numpy(probs[:, k: k + 1]), torch.from_numpy(targets[:, k: k + 1]))
    return out


def chance_map(targets: np.ndarray) -> float:
    """Expected AP of a random ranking: each category's prevalence, averaged over categories with a positive."""
    prevalence = targets.mean(0)
    return float(prevalence[targets.any(0)].mean())


def top_worn(probs: np.ndarray, targets: np.ndarray, names: list[str]) -> float:
    """Fraction of photos whose highest-ranked garment worn on the body is one the person wears."""
    worn = [k for k, n in enumerate(names) if n not in NOT_WORN]
    rows = targets[:, worn].any(1)
    if not rows.any():
        return float("nan")
    top = probs[rows][:, worn].argmax(1)
    return float(targets[rows][:, worn][np.arange(rows.sum()), top].mean())


def top1(probs: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of photos whose top category is a true one."""
    rows = targets.any(1)
    return float(targets[rows][np.arange(rows.sum()), probs[rows].argmax(1)].mean()) if rows.any() else float("nan")


def calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of independent category probabilities (every photo x category pair)."""
    p, y = probs.ravel(), targets.ravel()
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(p[inside].mean() - y[inside].mean())
    return float(total)


def reliability(probs: np.ndarray, targets: np.ndarray, bins: int = 10) -> list[dict]:
    """Per probability bin: mean predicted probability, observed frequency and count (the reliability plot)."""
    p, y = probs.ravel(), targets.ravel()
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    return [{"predicted": float(p[which == b].mean()), "observed": float(y[which == b].mean()), "count": int((which == b).sum())}
            for b in range(bins) if (which == b).any()]


def abstain_threshold(garment_top: np.ndarray, negative_top: np.ndarray, *, max_garment_abstain: float = 0.02,
                      garment_targets: np.ndarray | None = None) -> float:
    """The abstain bar on the top category probability: as high as keeps at most ``max_garment_abstain`` of
    garment photos abstaining (on validation), so as many no-garment images as possible abstain.

    With ``garment_targets`` (``[N, K]``, the garment photos' categories) the share holds for the photos of
    each category too: the photos a model is least sure of are mostly of one or two categories (hoodies,
    skirts), and a bar set on all photos together would refuse a third of those as showing no garment.
    """
    if not len(garment_top):
        return 0.0
    groups = [np.ones(len(garment_top), dtype=bool)]  # every garment photo, then each category's photos
    if garment_targets is not None:
        groups += [shown for shown in np.asarray(garment_targets, dtype=bool).T if shown.any()]
    # "lower": the quantile is never interpolated up, so at most the share falls below it.
    bar = min(float(np.quantile(garment_top[rows], max_garment_abstain, method="lower")) for rows in groups)
    if len(negative_top):  # never higher than needed to refuse every negative
        bar = min(bar, float(negative_top.max()) + 1e-6)
    return bar


def summary(probs: np.ndarray, targets: np.ndarray, names: list[str], *, abstain_below: float) -> dict:
    """Every score of one set of photos (garment photos and no-garment images mixed)."""
    garment = targets.any(1)
    top = probs.max(1) if probs.size else np.zeros(0)
    out: dict = {"photos": int(garment.sum()), "no_garment_images": int((~garment).sum())}
    if garment.any():
        p, y = probs[garment], targets[garment]
        ap = average_precisions(p, y, names)
        out.update({
            "mAP": float(np.mean(list(ap.values()))), "chance_mAP": chance_map(y), "AP": ap,
            "top1": top1(p, y), "chance_top1": float(y.mean(0).max()),
            "top_worn": top_worn(p, y, names), "calibration_error": calibration_error(p, y),
            "abstain_rate_garment": float((top[garment] < abstain_below).mean()),
        })
    if (~garment).any():
        out["abstain_rate_no_garment"] = float((top[~garment] < abstain_below).mean())
    return out


def subcategory_summary(probs: np.ndarray, targets: np.ndarray, known: np.ndarray | None) -> dict:
    """Sub-category scores where the photos' sub-categories are known (real photos are often labelled with a
    category only): mAP over the sub-categories with a known positive and a known negative, and how often the
    top-ranked sub-category is a true one, over the photos with one known."""
    known = np.ones_like(targets, dtype=bool) if known is None else np.asarray(known, dtype=bool)
    aps, chance = [], []
    for j in range(targets.shape[1]):
        rows = known[:, j]
        y = targets[rows, j]
        if y.any() and not y.all():
            aps.append(mean_average_precision(torch.from_numpy(probs[rows, j:j + 1]), torch.from_numpy(y[:, None])))
            chance.append(float(y.mean()))
    labelled = (targets * known).any(1)
    if not aps or not labelled.any():
        return {}
    top = probs[labelled].argmax(1)
    return {"mAP": float(np.mean(aps)), "chance_mAP": float(np.mean(chance)), "subcategories": len(aps),
            "top1": float((targets[labelled][np.arange(labelled.sum()), top] > 0).mean()),
            "photos": int(labelled.sum())}
