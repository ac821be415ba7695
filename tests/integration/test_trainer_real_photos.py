"""Corrections of real photos, end to end on the real broker and Redis: real photos are labelled by the packaged
model, users correct them on the ``feedback`` topic, the trainer continues the real-photo model on them and
promotes it past the real-photo gate, and the classifier then labels with it."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
import redis
from kafka import KafkaProducer

from serving.checkpoint import CONFIG_FILE
from serving.ontology import load_ontology
from serving.registry import default_entry
from streamcore.schemas import Feedback, Label
from streamcore.serde import encode
from tests.support import wait_until
from training.real.posts import fixture_posts
from workers.trainer import TrainerConfig, TrainerStage

pytestmark = pytest.mark.integration

ONTOLOGY = load_ontology()
N_POSTS = 100


def _send(settings, topic: str, messages) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    for message in messages:
        producer.send(settings.kafka.topic(topic), key=message.post_id.encode(), value=encode(message))
    producer.flush()
    producer.close()


def _labels(store: redis.Redis, settings, posts) -> list[Label]:
    values = store.mget([settings.redis.keys.label(p.post_id) for p in posts])
    return [Label.model_validate_json(v) for v in values if v is not None]


def test_corrections_of_real_photos_promote_a_model_the_classifier_then_serves(make_settings, workers, tmp_path):
    settings = make_settings(model_dir=tmp_path / "models", hint_wait_ms=100, model_poll_s=0.2)
    group = workers(settings)
    classifier = group.start("classify")
    group.wait_ready()
    store = redis.Redis.from_url(settings.redis.url)
    # ~26 held-out corrections the packaged model already ranks at 0.90-0.95 (split by each run's post ids): one
    # photo moves their mAP ~0.02, so the gate allows that here; what it refuses: tests/training/real/.
    config = TrainerConfig.from_settings(settings, interval_s=None, min_feedback=N_POSTS, device="cpu",
                                         gate_margin=0.03)
    stage = TrainerStage(settings, config)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(stage.run(),), name="trainer-stage")
    thread.start()
    try:
        prefix = settings.kafka.group_prefix
        posts = list(fixture_posts(ONTOLOGY, N_POSTS, seed=3, prefix=prefix))
        _send(settings, "posts", [p for p, _ in posts])
        wait_until(lambda: len(_labels(store, settings, [p for p, _ in posts])) == N_POSTS, timeout=180,
                   what="every photo labelled")
        wait_until(lambda: stage.stored_posts._value.get() == N_POSTS, timeout=60, what="posts kept by the trainer")
        packaged = default_entry().version
        assert {label.model_version for label in _labels(store, settings, [p for p, _ in posts])} == {packaged}

        # Every garment each photo shows, as a person correcting the labels on the review page would send.
        _send(settings, "feedback", [Feedback(post_id=p.post_id, categories=list(t.categories),
                                              subcategories=list(t.subcategories), sent_by="reviewer")
                                     for p, t in posts])
        wait_until(lambda: stage.last_run is not None, timeout=300, what="the run the corrections trigger")
        run = stage.last_run
        checks = {c.name: c for c in run.decision.checks}
        print("\n" + ", ".join(f"{n} {c.candidate:.3f} vs {c.baseline:.3f}" for n, c in checks.items()))
        assert run.feedback_examples == N_POSTS and run.serving_version is None
        assert run.promoted and set(checks) == {"real_category_map", "corrections_category_map",
                                                "real_garment_answered", "no_garment_refused",
                                                "real_calibration_error"}
        assert store.get(settings.redis.keys.model_current).decode() == run.version
        # The promotion log (the review page's model page) says why, with the gate's figures.
        event = json.loads(store.lindex(settings.redis.keys.model_events, 0))
        assert event["version"] == run.version and "real_category_map" in event["reason"]
        assert f"{N_POSTS} corrections" in event["reason"]
        stored = json.loads((settings.serving.model_dir / run.version / CONFIG_FILE).read_text())
        assert stored["model"] == json.loads((default_entry().path / CONFIG_FILE).read_text())["model"]

        # The classifier swaps to the new version between batches; new photos are labelled by it.
        wait_until(lambda: f'version="{run.version}"' in group.metrics(classifier), timeout=120,
                   what="the classifier serving the promoted version")
        after = [p for p, _ in fixture_posts(ONTOLOGY, 10, seed=4, prefix=f"{prefix}-after")]
        _send(settings, "posts", after)
        wait_until(lambda: len(_labels(store, settings, after)) == len(after), timeout=120, what="the new labels")
        labels = _labels(store, settings, after)
        assert {label.model_version for label in labels} == {run.version}
        # Still labelling garments: the packaged model abstains on 3 of the fixture's 100 photos and the gate lets
        # the share answered fall by 0.03, so one of ten may abstain (the trained head varies with the run's ids).
        assert sum(bool(label.categories) for label in labels) >= len(labels) - 1
    finally:
        loop.call_soon_threadsafe(stage.stop)
        thread.join(timeout=60)
    assert not thread.is_alive() and group.alive()
