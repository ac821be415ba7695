"""The committed reports keep SPEC's contract: the fields users and checks read, and their provenance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPORTS = Path(__file__).resolve().parents[1] / "reports"
PROVENANCE = ("generated_at", "git_sha", "machine", "command")

#: SPEC "Reports": top-level fields of each report, and the fields of each of its rows.
CONTRACT = {
    "table2.json": ((), ("scenario", "backbone", "head", "hints", "level", "P@1", "P@3", "P@5", "R@1", "R@3",
                         "R@5", "mAP")),
    "bench_heads.json": (("batch", "naive_per_sample_ms_per_batch"), ("head", "backbone", "ms_per_batch",
                                                                       "ratio_to_base")),
    "bench_pipeline.json": (("model_only_images_per_s", "pipeline_images_per_s", "batch1_pipeline_images_per_s",
                             "model_only_batch1_images_per_s", "max_batch", "max_wait_ms", "p50_ms", "p99_ms",
                             "load_fraction"), ()),
    "text_miner.json": (("posts_per_s_one_core",), ("set", "class", "P@1", "P@3", "top4_recall")),
    "table2_real.json": (("settings",), ("scenario", "backbone", "head", "hints", "level", "P@1", "P@3", "P@5", "R@1",
                                         "R@3", "R@5", "mAP")),
    "real_photos.json": (("model", "photos", "metrics", "reliability_silent"), ()),
    "recommend.json": (("model_version", "queries", "catalogue", "rankings", "verdict", "classifier_embedding_cost"), ()),
    "recommend_index.json": (("items", "dim", "vectors", "build_seconds_one_core", "recommend_path"),
                             ("index", "k10", "k100")),
    "bench_profiles.json": (("labels", "users", "labels_per_s", "profile_update_ms_mean"), ()),
}


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_report_has_the_spec_fields_and_provenance(name: str) -> None:
    report = json.loads((REPORTS / name).read_text())
    fields, row_fields = CONTRACT[name]
    missing = [f for f in (*PROVENANCE, *fields) if report.get(f) is None]
    assert not missing, f"{name} lacks {missing}"
    for key in ("cpu", "cores", "torch", "device"):
        assert key in json.dumps(report["machine"]), f"{name}: machine lacks {key}"
    if row_fields:
        assert report["rows"], f"{name} has no rows"
        for row in report["rows"]:
            assert set(row_fields) <= row.keys(), f"{name}: a row lacks {set(row_fields) - row.keys()}"


def test_the_real_photo_report_scores_street_and_single_garment_photos_against_chance() -> None:
    report = json.loads((REPORTS / "real_photos.json").read_text())
    assert (REPORTS / "real_photos.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for condition in ("silent", "mention"):
        for kind in ("street", "single_garment"):
            scores = report["metrics"][condition][kind]
            assert {"mAP", "chance_mAP", "AP", "top1", "top_worn", "calibration_error", "abstain_rate_garment",
                    "abstain_rate_no_garment"} <= scores.keys()
            assert scores["mAP"] > scores["chance_mAP"] and scores["photos"] >= 100
