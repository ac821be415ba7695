"""The trainer's real-photo check: a candidate that only knows the synthetic benchmark cannot replace the
packaged real-photo model."""

from __future__ import annotations

from serving.models import build_model
from serving.ontology import load_ontology
from serving.registry import default_entry
from streamcore.metrics import StageMetrics
from streamcore.settings import Settings
from training.real.gate import real_photo_map
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
