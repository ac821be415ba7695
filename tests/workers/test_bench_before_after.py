"""The before/after benchmark compares interleaved pairs, not pooled means."""

from __future__ import annotations

import pytest

from workers.benchmarks.before_after import summarise


def _row(tree: str, pair: int, rate: float, model: float, load: float) -> dict:
    return {"tree": tree, "pair": pair, "images_per_s": rate, "model_alone_images_per_s": model,
            "cpu_ms_per_image": 1000 / rate, "load_avg_1m_before": load, "load_avg_1m_after": load + 1}


def test_each_pair_gives_one_ratio_after_over_before():
    rounds = [_row("before", 0, 20.0, 25.0, 2.0), _row("after", 0, 21.0, 25.0, 2.5),
              _row("before", 1, 10.0, 12.5, 4.0), _row("after", 1, 9.0, 12.5, 4.5)]
    summary = summarise(rounds)
    assert summary["pair_ratios"] == [1.05, 0.9] and summary["ratio_range"] == [0.9, 1.05]
    assert summary["before_images_per_s"] == [20.0, 10.0] and summary["after_images_per_s"] == [21.0, 9.0]
    assert summary["model_alone_pair_ratios"] == [1.0, 1.0] and summary["load_avg_1m_range"] == [2.0, 5.5]
    assert summary["cpu_pair_ratios"] == pytest.approx([0.952, 1.111])
    assert summary["cpu_ratio_median"] == pytest.approx(1.0315)
