"""The trainer's real-photo check: a candidate that only knows the synthetic benchmark cannot replace the
packaged real-photo model."""

from __future__ import annotations

import json

import pytest

from serving.models import build_model
from serving.ontology import load_ontology
from serving.registry import default_entry
from streamcore.metrics import StageMetrics
from streamcore.settings import Settings
from training.real.fixture import fixture_records
from training.real.gate import manifest_photos, real_photo_map
from training.real.manifest import ManifestError
from training.retrain import Trainer, TrainerConfig

ONTOLOGY = load_ontology()


def test_the_packaged_model_is_far_above_chance_on_the_fixture_photos():
    untrained = build_model(backbone="tiny", head="fusion", ontology=ONTOLOGY, weights="random")
    assert real_photo_map(default_entry().load(), ONTOLOGY) >= real_photo_map(untrained, ONTOLOGY) + 0.3


def test_a_candidate_at_chance_on_photos_fails_against_the_packaged_default(tmp_path):
    settings = Settings.named(model_dir=tmp_path, redis_url="redis://127.0.0.1:9")  # never connects here
    trainer = Trainer(settings, TrainerConfig.from_settings(settings, device="cpu"), StageMetrics("trainer"))
    candidate = build_model(backbone="tiny", head="fusion", ontology=ONTOLOGY, weights="random")
    check = trainer.real_check(candidate, None)
    assert check.name == "real_category_map" and not check.passed and check.serving > check.candidate


def test_operator_held_out_photos_gate_every_candidate_too(tmp_path):
    fixture = fixture_records(ONTOLOGY)[:40]
    lines = [json.dumps({"image": r.image, "categories": r.categories}) for r in fixture]
    lines.append(json.dumps({"image": str(tmp_path / "gone.jpg"), "categories": ["shoes"]}))  # left out, logged
    (tmp_path / "held.jsonl").write_text("\n".join(lines) + "\n")
    settings = Settings.named(model_dir=tmp_path, redis_url="redis://127.0.0.1:9")  # never connects here
    config = TrainerConfig.from_settings(settings, device="cpu", gate_data=tmp_path / "held.jsonl")
    trainer = Trainer(settings, config, StageMetrics("trainer"))
    candidate = build_model(backbone="tiny", head="fusion", ontology=ONTOLOGY, weights="random")
    checks = {c.name: c for c in trainer.real_checks(candidate, None)}
    assert set(checks) == {"real_category_map", "gate_data_category_map"}
    held = checks["gate_data_category_map"]
    assert not held.passed and held.serving > held.candidate + 0.3
    photos = manifest_photos(tmp_path / "held.jsonl", ONTOLOGY)
    assert len(photos[0]) == 40 and held.serving == real_photo_map(default_entry().load(), ONTOLOGY, photos=photos)

    with pytest.raises(ManifestError):  # a wrong path fails when the trainer starts
        Trainer(settings, TrainerConfig.from_settings(settings, device="cpu", gate_data=tmp_path / "nope.jsonl"),
                StageMetrics("trainer"))
