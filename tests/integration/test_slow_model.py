"""A model step slower than max_poll_interval_ms: no rebalance loop, no duplicates, bounded memory."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from contextlib import contextmanager

import pytest
import redis
from kafka import KafkaProducer

from serving.ontology import load_ontology
from serving.predict import Predictor
from streamcore.serde import encode
from tests.integration.test_end_to_end import _read_topic
from tests.support import wait_until
from training.synthetic.posts import generate_posts
from workers.classify import ClassifyStage

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEP_S = 4.0


@contextmanager
def _running(settings, posts):
    """A classify stage on its own loop, fed ``posts``; stopped (and its thread gone) on exit."""
    stage = ClassifyStage(settings)
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_until_complete, args=(stage.run(),), daemon=True)
    runner.start()
    try:
        producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
        for post in posts:
            producer.send(settings.kafka.topic("posts"), key=post.post_id.encode(), value=encode(post))
        producer.flush()
        yield stage
    finally:
        loop.call_soon_threadsafe(stage.stop)
        runner.join(timeout=30)
    assert not runner.is_alive()


def _slow_model(monkeypatch, step_s: float) -> None:
    """Stages started from now on run the real predictor with a model step ``step_s`` longer."""
    real_load = Predictor.load.__func__

    class Slow(Predictor):
        def infer(self, *args, **kwargs):
            time.sleep(step_s)
            return super().infer(*args, **kwargs)

    monkeypatch.setattr(Predictor, "load", classmethod(lambda cls, *a: real_load(Slow, *a)))


def _wait_labelled(settings, posts, sample) -> None:
    """Until every post has its label in Redis, calling ``sample()`` at each poll."""
    store = redis.Redis.from_url(settings.redis.url)
    keys = [settings.redis.keys.label(p.post_id) for p in posts]

    def all_labelled() -> bool:
        sample()
        return store.exists(*keys) == len(posts)

    wait_until(all_labelled, timeout=120, what="all labels from the slow model")


def test_slow_model_step_causes_no_rebalance_and_no_duplicates(make_settings, monkeypatch):
    settings = make_settings(max_poll_interval_ms=2000, session_timeout_ms=6000, max_batch=8, hint_wait_ms=100,
                             max_inflight=8, fetch_max_records=8)
    _slow_model(monkeypatch, STEP_S)  # longer than the consumer's max poll interval
    posts = [p for p, _ in generate_posts(load_ontology(), 32, seed=9, prefix=settings.kafka.group_prefix)]
    with _running(settings, posts) as stage:
        held = []
        _wait_labelled(settings, posts, lambda: held.append(stage.metrics.inflight.labels("classify")._value.get()))
        # Backpressure: fetching paused at max_inflight, so at most one more fetch is ever held.
        assert stage.metrics.backpressure.labels("classify")._value.get() >= 1
        assert max(held) <= settings.classify.max_inflight + settings.kafka.fetch_max_records
        batches = stage.metrics.batch_size.collect()[0].samples
        assert next(s.value for s in batches if s.name.endswith("_count")) >= 4  # ≥ 4 slow steps of 4 s > 2 s
        assert stage.metrics.rebalances.labels("classify")._value.get() == 0
        records = _read_topic(settings, "labels", until=lambda rs: len(rs) >= len(posts), timeout=30)
        assert Counter(r.key.decode() for r in records) == Counter({p.post_id: 1 for p in posts})


def test_images_are_prepared_just_ahead_of_a_slow_model_not_for_every_post_in_flight(make_settings, monkeypatch):
    settings = make_settings(max_batch=2, decode_workers=1, hint_wait_ms=100, max_inflight=64, fetch_max_records=64)
    _slow_model(monkeypatch, 0.3)
    prepared = []
    real_prepare = ClassifyStage._prepare
    monkeypatch.setattr(ClassifyStage, "_prepare", lambda self, post: prepared.append(1) or real_prepare(self, post))
    posts = [p for p, _ in generate_posts(load_ontology(), 24, seed=11, prefix=settings.kafka.group_prefix)]
    with _running(settings, posts) as stage:
        ahead = []

        def sample() -> None:
            batched = next(s.value for s in stage.metrics.batch_size.collect()[0].samples if s.name.endswith("_sum"))
            ahead.append(len(prepared) - batched)

        _wait_labelled(settings, posts, sample)
        # Two batches and one per decode thread: 5, where all 24 posts were in flight at once.
        assert max(ahead) <= 2 * settings.classify.max_batch + settings.classify.decode_workers
        assert len(prepared) == len(posts)
