"""Two classifiers in one group; one is SIGKILLed mid-stream and restarted. Nothing lost, nothing doubled."""

from __future__ import annotations

import signal
import time
import threading
from collections import defaultdict

import pytest
import redis
from kafka import KafkaProducer

from streamcore.serde import encode
from tests.integration.test_end_to_end import _read_topic
from tests.support import wait_until
from training.ontology import load_ontology
from training.synthetic.posts import generate_posts

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_POSTS = 1000
RATE = 40.0  # posts/s: the feed lasts 25 s


def test_sigkill_mid_stream_loses_and_doubles_nothing(make_settings, workers):
    settings = make_settings(partitions=4, max_batch=16)
    group = workers(settings)
    group.start("text")
    victim = group.start("classify")
    group.start("classify")
    group.wait_ready()

    posts = [p for p, _ in generate_posts(load_ontology(), N_POSTS, seed=5, prefix=settings.group_prefix)]
    producer = KafkaProducer(bootstrap_servers=settings.kafka, acks="all", linger_ms=5)

    def feed() -> None:  # paced, so the kill lands mid-stream however fast the workers are
        start = time.monotonic()
        for i, post in enumerate(posts):
            time.sleep(max(0.0, start + i / RATE - time.monotonic()))
            producer.send(settings.topic("posts"), key=post.post_id.encode(), value=encode(post))
        producer.flush()

    feeder = threading.Thread(target=feed)
    feeder.start()

    store = redis.Redis.from_url(settings.redis_url)
    keys = [settings.keys.label(p.post_id) for p in posts]

    def labelled() -> int:
        return sum(store.exists(*keys[i:i + 200]) for i in range(0, N_POSTS, 200))

    wait_until(lambda: labelled() >= N_POSTS // 4, timeout=120, what="a quarter of the labels")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert feeder.is_alive() or labelled() < N_POSTS, "the stream finished before the kill"
    group.start("classify")
    feeder.join()

    wait_until(lambda: labelled() == N_POSTS, timeout=240, what="every post to be labelled")
    records = _read_topic(settings, "labels", until=lambda rs: len({r.key for r in rs}) >= N_POSTS, timeout=60)
    contents = defaultdict(set)
    for record in records:
        contents[record.key.decode()].add(record.value)
    assert set(contents) == {p.post_id for p in posts}
    doubled = {k: len(v) for k, v in contents.items() if len(v) > 1}
    assert not doubled, f"posts with different label contents on the topic: {list(doubled)[:5]}"
    for post in posts[:50]:
        assert store.get(settings.keys.label(post.post_id)) in contents[post.post_id]
    assert _read_topic(settings, "posts.dlq", until=lambda rs: False, timeout=1) == [], "false duplicates"
