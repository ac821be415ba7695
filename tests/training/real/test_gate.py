"""The trainer's real-photo checks: a candidate that only knows the synthetic benchmark cannot replace the
packaged real-photo model, nor can one that labels noise or refuses garments."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from serving.models import build_model
from serving.ontology import load_ontology
from serving.registry import default_entry
from streamcore.metrics import StageMetrics
from streamcore.settings import Settings
from training.gate_run import Gates
from training.real.fixture import fixture_records
from training.real.gate import (
    ABSTAIN_MARGIN,
    NO_GARMENT_IMAGES,
    manifest_photos,
    real_photo_checks,
    real_photo_map,
)
from training.real.manifest import ManifestError
from training.retrain import Trainer, TrainerConfig

ONTOLOGY = load_ontology()


def test_the_packaged_model_is_far_above_chance_on_the_fixture_photos():
    untrained = build_model(backbone="tiny", head="fusion", ontology=ONTOLOGY, weights="random")
    assert real_photo_map(default_entry().load(), ONTOLOGY) >= real_photo_map(untrained, ONTOLOGY) + 0.3


def _trainer(settings: Settings, config: TrainerConfig) -> Trainer:
    """A trainer whose gate's reference is the packaged model: what it is while nothing was promoted by hand
    (Redis, where a choice would be recorded, is not reached in these tests)."""
    trainer = Trainer(settings, config, StageMetrics("trainer"))
    trainer.gates = Gates(ONTOLOGY, margin=config.gate_margin, device="cpu", gate_data=config.gate_data,
                          reference=default_entry)
    return trainer


def test_a_candidate_at_chance_on_photos_fails_against_the_packaged_default(tmp_path):
    settings = Settings.named(model_dir=tmp_path, redis_url="redis://127.0.0.1:9")  # never connects here
    trainer = _trainer(settings, TrainerConfig.from_settings(settings, device="cpu"))
    candidate = build_model(backbone="tiny", head="fusion", ontology=ONTOLOGY, weights="random")
    checks = {c.name: c for c in trainer.real_gate(candidate, None).checks}
    check = checks["real_category_map"]
    assert not check.passed and check.baseline > check.candidate
    # It never abstains: every no-garment image gets a garment, where the packaged model refuses them.
    refused = checks["no_garment_refused"]
    assert not refused.passed and refused.candidate == 0 and refused.baseline > 0.9


def _shifted(model, by: float):
    """``model`` with every category logit moved by ``by``: each category's ranking of photos, so its mAP, as
    before."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.head.categories.bias.add_(by)
    return out


def _by_name(checks) -> dict:
    return {c.name: c for c in checks}


def test_a_head_that_moved_every_category_keeps_its_map_and_is_refused_for_abstaining():
    packaged = default_entry().load()
    bold = _shifted(packaged, 12.0)  # labels noise with a garment (drawn noise sits ~10 logits below the bar)
    checks = _by_name(real_photo_checks(bold, packaged, ONTOLOGY, margin=0.01))
    refused = checks["no_garment_refused"]
    assert refused.baseline > 0.9 and checks["real_garment_answered"].baseline > 0.9
    # The mAP check cannot see it (only probabilities saturating at 1 in float32 tie a few photos).
    assert checks["real_category_map"].passed and checks["real_garment_answered"].passed
    assert not refused.passed and refused.candidate < refused.baseline - 0.5

    shy = _shifted(packaged, -4.0)  # refuses real garments as showing none
    checks = _by_name(real_photo_checks(shy, packaged, ONTOLOGY, margin=0.01))
    answered = checks["real_garment_answered"]
    assert checks["real_category_map"].passed and checks["no_garment_refused"].passed
    assert not answered.passed and answered.candidate < answered.baseline - 0.3

    # A head that squashed every probability towards one half (temperature doubled) keeps its ranking, answers
    # every garment photo and refuses every drawn image, and lists categories the photos do not show.
    squashed = copy.deepcopy(packaged)
    with torch.no_grad():
        squashed.head.categories.weight.mul_(0.5)
        squashed.head.categories.bias.mul_(0.5)
    checks = _by_name(real_photo_checks(squashed, packaged, ONTOLOGY, margin=0.01))
    calibration = checks.pop("real_calibration_error")
    assert all(c.passed for c in checks.values()), checks
    assert not calibration.passed and calibration.candidate > 3 * calibration.baseline
    assert calibration.baseline < 0.03  # the packaged model is calibrated on these photos

    # The margin is never narrower than one drawn image or fixture photo could move a share.
    assert ABSTAIN_MARGIN > 1 / NO_GARMENT_IMAGES and ABSTAIN_MARGIN > 1 / 100
    never = build_model(backbone="tiny", head="fusion", ontology=ONTOLOGY, weights="random")
    assert never.config.abstain_below == 0
    assert set(_by_name(real_photo_checks(never, never, ONTOLOGY, margin=0.01))) == {"real_category_map"}


def test_operator_held_out_photos_gate_every_candidate_too(tmp_path):
    fixture = fixture_records(ONTOLOGY)[:40]
    lines = [json.dumps({"image": r.image, "categories": r.categories}) for r in fixture]
    lines.append(json.dumps({"image": str(tmp_path / "gone.jpg"), "categories": ["shoes"]}))  # left out, logged
    (tmp_path / "held.jsonl").write_text("\n".join(lines) + "\n")
    settings = Settings.named(model_dir=tmp_path, redis_url="redis://127.0.0.1:9")  # never connects here
    config = TrainerConfig.from_settings(settings, device="cpu", gate_data=tmp_path / "held.jsonl")
    trainer = _trainer(settings, config)
    candidate = build_model(backbone="tiny", head="fusion", ontology=ONTOLOGY, weights="random")
    checks = {c.name: c for c in trainer.real_gate(candidate, None).checks}
    assert set(checks) == {"real_category_map", "gate_data_category_map", "real_garment_answered", "no_garment_refused",
                           "real_calibration_error"}
    held = checks["gate_data_category_map"]
    assert not held.passed and held.baseline > held.candidate + 0.3
    photos = manifest_photos(tmp_path / "held.jsonl", ONTOLOGY)
    assert len(photos[0]) == 40 and held.baseline == real_photo_map(default_entry().load(), ONTOLOGY, photos=photos)

    with pytest.raises(ManifestError):  # a wrong path fails when the trainer starts
        Trainer(settings, TrainerConfig.from_settings(settings, device="cpu", gate_data=tmp_path / "nope.jsonl"),
                StageMetrics("trainer"))
