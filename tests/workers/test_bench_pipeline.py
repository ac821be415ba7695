"""The pipeline benchmark's sweep entries (medians over rounds, the ratio's range, failed rounds kept) and its
steady-state label rate."""

from __future__ import annotations

from workers.benchmarks.pipeline_report import combine_rounds as _combine
from workers.benchmarks.pipeline_runs import _label_rate


def _round(rate: float, ratio: float, cpu: float) -> dict:
    return {"max_batch": 8, "images_per_s": rate, "cpu_ms_per_image": cpu, "ratio_to_model_alone": ratio}


def test_an_entry_gives_the_medians_of_its_rounds_and_the_range_of_the_ratio() -> None:
    rounds = [_round(100.0, 0.70, 14.0), _round(120.0, 0.90, 12.0), {"max_batch": 8, "error": "TimeoutError: x"},
              _round(110.0, 0.80, 13.0)]
    entry = _combine(8, rounds)
    assert entry["images_per_s"] == 110.0 and entry["ratio_to_model_alone"] == 0.8
    assert entry["cpu_ms_per_image"] == 13.0 and entry["ratio_range"] == [0.7, 0.9]
    assert entry["rounds"] == rounds and "error" not in entry  # the failed round is kept, not counted


def test_an_entry_without_a_successful_round_is_an_error() -> None:
    entry = _combine(32, [{"max_batch": 32, "error": "RuntimeError: worker exited"}])
    assert entry["max_batch"] == 32 and entry["error"] == "RuntimeError: worker exited"
    assert "images_per_s" not in entry


def test_without_a_model_alone_reference_there_is_no_ratio() -> None:
    entry = _combine(1, [{"max_batch": 1, "images_per_s": 40.0, "cpu_ms_per_image": 25.0}])
    assert entry["images_per_s"] == 40.0 and "ratio_to_model_alone" not in entry and "ratio_range" not in entry


def test_the_label_rate_is_taken_between_two_fractions_of_the_run() -> None:
    # 100 labels: the first 80 one per 10 ms, the last 20 (a tail the model ran alone) ten times faster.
    stamps = [i * 0.01 for i in range(80)] + [0.8 + i * 0.001 for i in range(20)]
    assert _label_rate(stamps, 0.1, 0.8) == 100.0
    assert _label_rate(stamps, 0.8, 1.0) > 500
    assert _label_rate([0.0, 2.0], 0.1, 0.8) == 0.5  # two labels: still a rate, not an index error


def test_labels_of_one_batch_count_once_whatever_the_window() -> None:
    stamps = [float(second) for second in range(10) for _ in range(128)]  # a batch of 128 a second
    assert {_label_rate(stamps, a, b) for a, b in ((0.1, 0.8), (0.05, 0.5), (0.1, 0.4), (0.4, 0.7))} == {128.0}
    assert _label_rate([1.0] * 10, 0.1, 0.8) == 0.0  # one batch: no rate to measure
