"""Errors a retry cannot cure, and topics that vanish, against the real embedded broker and Redis.

The classifier stage runs in-process (its producer needs a hand: Tansu enforces no message size limit,
so the stage's producer is capped at Kafka's default 1 MB instead, which aiokafka enforces client-side).
"""

from __future__ import annotations

import hashlib
import os

import pytest
from kafka import KafkaAdminClient, KafkaProducer

from streamcore import stage as stage_module
from streamcore.kafka import make_producer
from streamcore.schemas import DeadLetter
from streamcore.serde import encode
from tests.integration.test_bad_input import _b64, _post
from tests.integration.test_end_to_end import _read_topic
from tests.integration.test_faults import _assert_caught_up, _good_posts, _outcomes, _running
from tests.support import wait_until
from workers.classify import ClassifyStage

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LIMIT = 1_000_000


def _bad_post(post_id: str, size: int) -> bytes:
    """A post of ``size`` bytes whose inline "image" is random bytes (refused where it is decoded)."""
    raw = _post(post_id, image=_b64(b""))
    filler = size - len(raw)
    return _post(post_id, image=_b64(os.urandom(filler * 3 // 4)))


def test_an_8_mb_post_ends_as_one_bounded_letter_and_the_200_posts_behind_it_are_labelled(make_settings,
                                                                                        monkeypatch):
    settings = make_settings(hint_wait_ms=100, max_batch=16)
    monkeypatch.setattr(stage_module, "make_producer",
                        lambda s, **kw: make_producer(s, **{"max_request_size": LIMIT, **kw}))
    stage = ClassifyStage(settings)
    bad_id = f"{settings.kafka.group_prefix}-bad-8mb"
    bad = _bad_post(bad_id, 8_000_000)
    posts = _good_posts(settings, 200, seed=21, tag="behind")
    with _running(stage):
        producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all", max_request_size=20_000_000)
        producer.send(settings.kafka.topic("posts"), key=bad_id.encode(), value=bad, partition=0).get(timeout=30)
        for i, post in enumerate(posts):  # a quarter of them behind the bad post on its partition
            producer.send(settings.kafka.topic("posts"), key=post.post_id.encode(), value=encode(post),
                          partition=i % settings.kafka.partitions)
        producer.flush()
        producer.close()
        labels, letters = _outcomes(settings, {bad_id} | {p.post_id for p in posts}, timeout=240)
        _assert_caught_up(settings, {"classify": ("posts",)})
    assert letters == {bad_id: 1} and bad_id not in labels
    assert all(labels[p.post_id] == 1 for p in posts), [p.post_id for p in posts if labels[p.post_id] != 1]
    (record,) = [r for r in _read_topic(settings, "posts.dlq", until=lambda rs: bool(rs), timeout=10)]
    letter = DeadLetter.model_validate_json(record.value)
    assert len(record.value) + len(record.key) <= LIMIT
    assert (letter.topic, letter.partition, letter.offset) == (settings.kafka.topic("posts"), 0, 0)
    assert letter.original_bytes == len(bad) and letter.original_sha256 == hashlib.sha256(bad).hexdigest()
    assert "original truncated to" in letter.detail
    print(f"8 MB post: one letter of {len(record.value)} bytes ({letter.error}); 200 posts behind it labelled")


def test_deleted_topics_are_created_again_and_the_stream_goes_on(make_settings):
    settings = make_settings(hint_wait_ms=100, topic_check_s=0.5)
    stage = ClassifyStage(settings)
    first, second = _good_posts(settings, 20, seed=22, tag="before"), _good_posts(settings, 20, seed=23, tag="after")
    with _running(stage):
        _produce_posts(settings, first)
        _outcomes(settings, {p.post_id for p in first}, timeout=120)
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
        try:
            admin.delete_topics([settings.kafka.topic("labels"), settings.kafka.topic("posts")])  # an output and an input
            wait_until(lambda: stage.metrics.topics_created.labels("classify")._value.get() >= 2, timeout=60,
                       what="the classifier to create its topics again")
            # Every posts partition held records: each is found to end before what was read, and read again
            # from its start (a position left beyond the new end would skip the posts written next).
            wait_until(lambda: stage.metrics.partitions_restarted.labels("classify")._value.get()
                       == settings.kafka.partitions, timeout=60, what="the emptied posts partitions to be read from the start")
            described = admin.describe_topics([settings.kafka.topic("labels"), settings.kafka.topic("posts")])
        finally:
            admin.close()
        assert [len(d["partitions"]) for d in described] == [settings.kafka.partitions] * 2
        _produce_posts(settings, second)
        labels, letters = _outcomes(settings, {p.post_id for p in second}, timeout=120)
        _assert_caught_up(settings, {"classify": ("posts",)})
        assert stage.stuck() is None
    assert all(labels[p.post_id] == 1 for p in second) and not letters


def _produce_posts(settings, posts) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    for i, post in enumerate(posts):  # round robin: every partition gets posts
        producer.send(settings.kafka.topic("posts"), key=post.post_id.encode(), value=encode(post),
                      partition=i % settings.kafka.partitions)
    producer.flush()
    producer.close()
