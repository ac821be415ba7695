"""The trainer on a real-photo model: its head continues on users' corrections of real photos, and the gate
is real photos plus held-out corrections, never the synthetic benchmark."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import redis
import torch

from serving.checkpoint import CONFIG_FILE, METRICS_FILE
from serving.ontology import load_ontology
from serving.registry import default_entry
from streamcore.metrics import StageMetrics
from streamcore.schemas import Feedback
from streamcore.settings import Settings
from training.feedback import Example, StoredPost, join
from training.real.posts import fixture_posts
from training.real.retrain import HOLDOUT_EVERY, MIN_HELD_OUT, held_out, is_real_photo_model, table2_hint_dropout
from training.retrain import Trainer, TrainerConfig
from training.text import TextMiner

ONTOLOGY = load_ontology()


def _examples(settings, *, shuffled: bool = False, no_garment: bool = False, count: int = 100) -> list[Example]:
    """Corrections of the fixture's photos as posted (caption and all): their true labels, or (``shuffled``)
    another photo's labels, or (``no_garment``) that they show no garment, as a careless or hostile corrector
    would send."""
    posts = list(fixture_posts(ONTOLOGY, count, seed=3, prefix="fix"))
    labels = [truth for _, truth in posts]
    if shuffled:
        random.Random(0).shuffle(labels)
    miner = TextMiner.load(ONTOLOGY)
    out = []
    for (post, _), truth in zip(posts, labels, strict=True):
        stored = StoredPost.from_bytes(StoredPost.from_post(post, settings, image_size=288).to_bytes())
        feedback = (Feedback(post_id=post.post_id, categories=[]) if no_garment else
                    Feedback(post_id=post.post_id, categories=list(truth.categories),
                             subcategories=list(truth.subcategories)))
        out.append(join(feedback, stored, ontology=ONTOLOGY, miner=miner, settings=settings, multi=True,
                        image_size=288))
    return out


def test_the_packaged_model_is_a_real_photo_model_with_table2_settings():
    entry = default_entry()
    assert is_real_photo_model(entry.load())
    recorded = json.loads((entry.path / CONFIG_FILE).read_text())["training"]["table2_settings"]["hint_dropout"]
    assert table2_hint_dropout(entry.path) == recorded


def test_one_correction_in_five_is_held_out_and_always_the_same_one():
    rng = np.random.default_rng(0)
    examples = [Example(rng.integers(0, 255, (3, 8, 8), dtype=np.uint8), *(np.zeros(4, np.float32),) * 5, f"c{i}",
                        post_id=f"p{i}") for i in range(500)]
    share = np.mean([held_out(e) for e in examples])
    assert abs(share - 1 / HOLDOUT_EVERY) < 0.05
    # Stored and read back (the photo re-encoded), or the post corrected again: the same side.
    revised = [dataclasses.replace(e, categories=np.ones(4, np.float32), caption="other") for e in examples]
    assert ([held_out(e) for e in examples] == [held_out(Example.from_bytes(e.to_bytes())) for e in examples]
            == [held_out(e) for e in revised])


def test_a_stored_correction_stays_a_jpeg_until_its_image_is_needed():
    photo = next(fixture_posts(ONTOLOGY, 1, seed=3))[0]
    pixels = StoredPost.from_post(photo, Settings.named(), image_size=288).pixels
    example = Example(pixels, *(np.zeros(4, np.float32),) * 5, "caption", post_id="p")
    back = Example.from_bytes(example.to_bytes())
    assert back.pixels.ndim == 1 and back.pixels.nbytes < pixels.nbytes / 5  # the JPEG is what is held
    assert back.image().shape == pixels.shape and np.abs(back.image().astype(int) - pixels).mean() < 4
    assert back.to_bytes() == example.to_bytes()  # stored again as it was, not re-encoded


@pytest.mark.integration  # the trainer reads the serving pointer from the embedded Redis
def test_corrections_of_real_photos_retrain_the_packaged_model_and_wrong_ones_are_refused(make_settings, tmp_path):
    settings = make_settings(model_dir=tmp_path / "models")
    config = TrainerConfig.from_settings(settings, device="cpu", interval_s=None)
    assert config.start_from == "packaged"  # the default: nothing promoted, so the packaged model is continued
    trainer = Trainer(settings, config, StageMetrics("trainer"))
    assert trainer.learns_multi()  # a street photo's correction may name every garment it shows
    pointer = redis.Redis.from_url(settings.redis.url)
    pointer.set(settings.redis.keys.model_current, "v-gone")  # bad Redis state: corrections are still taken
    assert trainer.learns_multi()
    pointer.delete(settings.redis.keys.model_current)

    nothing = trainer.run_once([])
    assert nothing.skipped and not nothing.promoted and trainer.registry.versions() == []
    assert trainer.metrics.trainer_runs.labels("skipped")._value.get() == 1
    assert trainer.metrics.trainer_last_success._value.get() > 0  # nothing to learn is not a failure

    wrong = trainer.run_once(_examples(settings, shuffled=True))
    checks = {c.name: c for c in wrong.decision.checks}
    print("\nshuffled labels:", {n: (round(c.candidate, 4), round(c.baseline, 4)) for n, c in checks.items()})
    assert not wrong.promoted and not checks["real_category_map"].passed
    assert trainer.registry.versions() == []

    examples = _examples(settings, shuffled=False)
    assert sum(held_out(e) for e in examples) >= MIN_HELD_OUT
    right = trainer.run_once(examples)
    checks = {c.name: c for c in right.decision.checks}
    print("true labels:", {n: (round(c.candidate, 4), round(c.baseline, 4)) for n, c in checks.items()})
    assert right.promoted and set(checks) == {"real_category_map", "corrections_category_map",
                                              "real_garment_answered", "no_garment_refused",
                                              "real_calibration_error"}
    pointer = redis.Redis.from_url(settings.redis.url).get(settings.redis.keys.model_current).decode()
    assert pointer == right.version
    entry = trainer.registry.get(right.version)
    promoted, packaged = entry.load(), default_entry().load()
    # The same trunk, a head that moved, the same abstain bar and label floor, the settings Table II chose.
    weights = {k: torch.equal(v, packaged.state_dict()[k]) for k, v in promoted.state_dict().items()}
    assert all(v for k, v in weights.items() if k.startswith("backbone.")) and not all(weights.values())
    assert promoted.config == packaged.config
    assert table2_hint_dropout(entry.path) == table2_hint_dropout(default_entry().path)
    data = json.loads((Path(entry.path) / METRICS_FILE).read_text())["data"]
    assert data["trained_on"] + data["held_out"] == data["feedback_examples"] == len(examples)


def test_the_corrections_probe_reports_each_recipe_against_the_packaged_model(tmp_path, monkeypatch):
    from training.real import corrections_probe
    from training.real.fixture import FIXTURE_MANIFEST

    monkeypatch.setattr(corrections_probe, "GRID", [(0.0, 0.03), (1.0, 0.003)])  # two recipes: the rest cost time

    out = tmp_path / "probe.json"
    # The fixture's photos are of its source's test split: here they only exercise the probe.
    args = ["--data", str(FIXTURE_MANIFEST), "--split", "test", "--epochs", "1", "--out", str(out)]
    assert corrections_probe.main(args) == 0
    report = json.loads(out.read_text())
    assert report["corrections"] > 0 and report["held_out"] > 0
    assert report["rows"][0]["candidate"] == "packaged" and len(report["rows"]) == 3
    packaged = report["rows"][0]
    assert packaged["fixture_map"] > 0.8 and all(0 <= r["single_garment_map_silent"] <= 1 for r in report["rows"])


@pytest.mark.integration  # the trainer reads the serving pointer from the embedded Redis
def test_corrections_saying_photos_show_no_garment_teach_the_head_to_abstain_there(make_settings, tmp_path):
    """Every target 0: the head learns to put the corrected photos below its abstain bar. Here the photos are
    the fixture's garments, as a hostile corrector would send, so the gate, whose garment photos they are,
    refuses the candidate for answering them less often."""
    settings = make_settings(model_dir=tmp_path / "models")
    trainer = Trainer(settings, TrainerConfig.from_settings(settings, device="cpu", interval_s=None),
                      StageMetrics("trainer"))
    examples = _examples(settings, no_garment=True, count=60)
    assert all(e.categories.sum() == e.subcategories.sum() == e.attributes.sum() == 0 for e in examples)
    assert sum(held_out(e) for e in examples) >= MIN_HELD_OUT
    run = trainer.run_once(examples)
    checks = {c.name: c for c in run.decision.checks}
    print("\nno-garment corrections:", {n: (round(c.candidate, 4), round(c.baseline, 4)) for n, c in checks.items()})
    answered, learnt = checks["real_garment_answered"], checks["corrections_no_garment_refused"]
    assert not run.promoted and not answered.passed and answered.candidate < answered.baseline - 0.1
    # The held-out photos corrected the same way: the candidate refuses them, the packaged model did not.
    assert learnt.passed and learnt.candidate > learnt.baseline + 0.5
    assert "corrections_category_map" not in checks  # no held-out correction names a garment
