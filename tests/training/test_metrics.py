"""Metrics: paired confidence intervals, hint quality, and probability-ranked category mAP."""

import math

import pytest
import torch

from training.metrics import hint_quality, mean_average_precision, paired_interval


def test_paired_interval_matches_the_t_formula() -> None:
    values = [0.10, 0.12, 0.08, 0.11, 0.09]
    mean, half = paired_interval(values)
    sd = math.sqrt(sum((v - 0.1) ** 2 for v in values) / 4)
    assert mean == pytest.approx(0.1)
    assert half == pytest.approx(2.7764451 * sd / math.sqrt(5), rel=1e-5)
    assert paired_interval([0.3])[1] == math.inf  # one seed says nothing about the spread


def test_hint_quality_counts_coverage_precision_recall() -> None:
    truth = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=torch.float32)
    hints = torch.tensor([[0.9, 0.1, 0], [0.2, 0, 0.8], [0, 0, 0], [0.5, 0.5, 0]])
    q = hint_quality(hints, truth)
    assert q["coverage"] == pytest.approx(0.75)
    assert q["precision"] == pytest.approx(2 / 3)  # rows 0 and 3 right, row 1 wrong, row 2 silent
    assert q["recall"] == pytest.approx(3 / 5)


def test_category_map_needs_probabilities_not_logits() -> None:
    # Sample 1's logits are all shifted up: by raw logit it outranks sample 0 for class 1, by probability not.
    logits = torch.tensor([[0.0, 2.0], [5.0, 4.0]])
    targets = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert mean_average_precision(torch.softmax(logits, 1), targets) == pytest.approx(1.0)
    assert mean_average_precision(logits, targets) < 1.0
