"""Sub-category scores count only the targets somebody labelled."""

from __future__ import annotations

import numpy as np
import pytest

from training.real.scores import subcategory_summary


def test_unlabelled_sub_categories_neither_help_nor_hurt_a_ranking() -> None:
    # Two sub-categories over four photos. Photo 3's targets are unknown: the model ranks it first for both,
    # which would halve the first one's AP and make it the second one's top if it counted.
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.3], [0.99, 0.99]], np.float32)
    targets = np.array([[1, 0], [0, 1], [0, 0], [0, 0]], np.float32)
    known = np.array([[1, 1], [1, 1], [1, 1], [0, 0]], np.float32)
    got = subcategory_summary(probs, targets, known)
    assert got["mAP"] == pytest.approx(1.0) and got["top1"] == pytest.approx(1.0)
    assert got["photos"] == 2 and got["subcategories"] == 2 and got["chance_mAP"] == pytest.approx(1 / 3)
    counted = subcategory_summary(probs, targets, None)
    assert counted["mAP"] < 1.0


def test_a_sub_category_nobody_labelled_is_left_out_and_no_labels_give_no_scores() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    targets = np.array([[1, 0], [0, 0]], np.float32)
    known = np.array([[1, 0], [1, 0]], np.float32)
    assert subcategory_summary(probs, targets, known)["subcategories"] == 1
    assert subcategory_summary(probs, np.zeros_like(targets), known) == {}
