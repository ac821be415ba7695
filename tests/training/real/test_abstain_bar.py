"""The abstain bar chosen on validation: few garment photos refused overall, and few of any one category."""

from __future__ import annotations

import numpy as np

from training.real.scores import abstain_threshold


def _photos(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """300 confident photos of category 0, 30 unsure ones of category 1, 100 no-garment images."""
    top = np.concatenate([rng.uniform(0.6, 1.0, 300), rng.uniform(0.2, 0.5, 30)])
    targets = np.zeros((330, 2), dtype=np.float32)
    targets[:300, 0] = 1
    targets[300:, 1] = 1
    return top, targets, np.concatenate([rng.uniform(0.0, 0.1, 90), rng.uniform(0.3, 0.45, 10)])


def test_the_bar_over_all_photos_refuses_most_of_an_unsure_category():
    top, _, negatives = _photos(np.random.default_rng(0))
    bar = abstain_threshold(top, negatives, max_garment_abstain=0.05)
    assert (top < bar).mean() <= 0.05
    assert (top[300:] < bar).mean() > 0.3  # what the per-category share is there to prevent


def test_the_bar_per_category_keeps_every_category_within_the_share():
    top, targets, negatives = _photos(np.random.default_rng(0))
    overall = abstain_threshold(top, negatives, max_garment_abstain=0.05)
    bar = abstain_threshold(top, negatives, max_garment_abstain=0.05, garment_targets=targets)
    assert bar < overall
    for shown in targets.T.astype(bool):
        assert (top[shown] < bar).mean() <= 0.05
    assert (negatives < bar).mean() >= 0.9


def test_a_category_without_photos_does_not_move_the_bar():
    top, targets, negatives = _photos(np.random.default_rng(1))
    padded = np.concatenate([targets, np.zeros((len(targets), 1), dtype=np.float32)], axis=1)
    assert abstain_threshold(top, negatives, garment_targets=padded) == abstain_threshold(top, negatives,
                                                                                          garment_targets=targets)
