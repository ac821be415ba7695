"""Posts in, labels out, on the real broker and Redis, with the workers as real processes."""

from __future__ import annotations

import base64
import json
import time
from collections import Counter

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer

from serving.ontology import load_ontology
from streamcore.schemas import DeadLetter, Label
from streamcore.serde import encode
from tests.support import wait_until
from training.synthetic.posts import generate_posts

pytestmark = pytest.mark.integration

N_POSTS = 200


def _read_topic(settings, topic: str, *, until, timeout: float) -> list:
    """All records of ``topic`` from the start, until ``until(records)`` holds, then 2 s more for extras."""
    consumer = KafkaConsumer(settings.kafka.topic(topic), bootstrap_servers=settings.kafka.bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=2000)
    records = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(records):
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    # Anything the workers would wrongly emit twice arrives right behind the first copy.
    for batch in consumer.poll(timeout_ms=2000).values():
        records.extend(batch)
    consumer.close()
    return records


def test_200_posts_each_labelled_exactly_once(make_settings, workers):
    settings = make_settings(redis_prefix="stylestream")  # the SPEC's key names, literally
    group = workers(settings)
    group.start("text")
    group.start("classify")
    group.wait_ready()

    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    posts = [post for post, _ in generate_posts(load_ontology(), N_POSTS, seed=7, prefix=settings.kafka.group_prefix)]
    for post in posts:
        producer.send(settings.kafka.topic("posts"), key=post.post_id.encode(), value=encode(post))
    producer.flush()
    producer.close()

    store = redis.Redis.from_url(settings.redis.url)
    keys = [f"stylestream:label:{p.post_id}" for p in posts]
    wait_until(lambda: sum(store.exists(*keys[i:i + 100]) for i in range(0, N_POSTS, 100)) == N_POSTS,
               timeout=180, what="200 labels in Redis")
    assert group.alive()

    records = _read_topic(settings, "labels", until=lambda rs: len(rs) >= N_POSTS, timeout=60)
    counts = Counter(r.key.decode() for r in records)
    assert set(counts) == {p.post_id for p in posts}
    assert max(counts.values()) == 1, [k for k, c in counts.items() if c > 1][:5]

    for post in posts[:20]:
        label = Label.model_validate_json(store.get(f"stylestream:label:{post.post_id}"))
        assert label.post_id == post.post_id
        assert label.categories and label.attributes
    stream_ids = {fields[b"post_id"].decode() for _, fields in store.xrange("stylestream:labels", count=100_000)}
    assert {p.post_id for p in posts} <= stream_ids


def test_malformed_messages_go_to_dlq_and_the_worker_goes_on(make_settings, workers):
    settings = make_settings(hint_wait_ms=500)
    group = workers(settings)
    group.start("classify")
    group.wait_ready()

    good = [post for post, _ in generate_posts(load_ontology(), 2, seed=3, prefix=settings.kafka.group_prefix)]
    wrong_schema = json.dumps({"schema": "post/v1", "post_id": "no image", "user": 3}).encode()
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    producer.send(settings.kafka.topic("posts"), key=good[0].post_id.encode(), value=encode(good[0]))
    producer.send(settings.kafka.topic("posts"), key=b"bad-json", value=b'{"schema": "post/v1", oops')
    producer.send(settings.kafka.topic("posts"), key=b"bad-schema", value=wrong_schema)
    producer.send(settings.kafka.topic("posts"), key=good[1].post_id.encode(), value=encode(good[1]))
    producer.flush()

    letters = _read_topic(settings, "posts.dlq", until=lambda rs: len(rs) >= 2, timeout=120)
    by_key = {r.key: DeadLetter.model_validate_json(r.value) for r in letters}
    assert by_key[b"bad-json"].error == "bad_json"
    assert by_key[b"bad-schema"].error == "bad_schema"
    assert "image" in by_key[b"bad-schema"].detail
    assert base64.b64decode(by_key[b"bad-json"].original) == b'{"schema": "post/v1", oops'
    assert by_key[b"bad-json"].stage == "classify" and by_key[b"bad-json"].topic == settings.kafka.topic("posts")

    store = redis.Redis.from_url(settings.redis.url)
    wait_until(lambda: store.exists(*(settings.redis.keys.label(p.post_id) for p in good)) == 2, timeout=60,
               what="the good posts around the bad ones to be labelled")
    assert group.alive()
