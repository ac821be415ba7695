"""Two classifiers in one group; one is SIGKILLed mid-stream and restarted. Nothing lost, nothing doubled."""

from __future__ import annotations

import re
import signal
from collections import defaultdict

import pytest
import redis
from kafka import KafkaProducer

from serving.ontology import load_ontology
from streamcore.schemas import Label
from streamcore.serde import encode
from tests.integration.test_end_to_end import _read_topic
from tests.support import committed_behind, feed_paced, wait_until
from training.synthetic.posts import generate_posts
from training.text import TextMiner

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

    posts = [p for p, _ in generate_posts(load_ontology(), N_POSTS, seed=5, prefix=settings.kafka.group_prefix)]
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all", linger_ms=5)

    feeder = feed_paced(producer, settings.kafka.topic("posts"), posts, RATE)

    store = redis.Redis.from_url(settings.redis.url)
    keys = [settings.redis.keys.label(p.post_id) for p in posts]

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
        assert store.get(settings.redis.keys.label(post.post_id)) in contents[post.post_id]
    assert _read_topic(settings, "posts.dlq", until=lambda rs: False, timeout=1) == [], "false duplicates"


def test_hints_read_before_a_sigkill_are_used_after_the_restart(make_settings, workers):
    """Hints arrive first; the classifier is killed before their posts do; the restarted one joins them."""
    settings = make_settings(partitions=4, hint_wait_ms=5000)
    group = workers(settings)
    victim = group.start("classify")
    group.wait_ready()

    ontology = load_ontology()
    miner = TextMiner.load(ontology)
    posts = [p for p, _ in generate_posts(ontology, 40, seed=17, prefix=settings.kafka.group_prefix)]
    hinted = {p.post_id for p in posts if not miner.mine(p).is_empty}
    assert len(hinted) >= 20
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    # The text stage's output, ahead of the posts: same key, same partition number as the post.
    for i, post in enumerate(posts):
        producer.send(settings.kafka.topic("hints"), key=post.post_id.encode(), value=encode(miner.mine(post)),
                      partition=i % settings.kafka.partitions)
    producer.flush()
    topic = re.escape(settings.kafka.topic("hints"))
    consumed = re.compile(rf'^stylestream_messages_consumed_total\{{stage="classify",topic="{topic}"\}} ([0-9.e+]+)$',
                          re.MULTILINE)
    wait_until(lambda: sum(float(v) for v in consumed.findall(group.metrics(victim))) >= len(posts), timeout=60,
               what="the classifier to read every hint")
    # Read but not used: nothing of hints may be committed yet.
    assert committed_behind(settings, "classify", ("hints",)) == {
        (settings.kafka.topic("hints"), p): len(posts) // settings.kafka.partitions for p in range(settings.kafka.partitions)}
    victim.send_signal(signal.SIGKILL)
    victim.wait()

    group.start("classify")
    group.wait_ready()
    for i, post in enumerate(posts):
        producer.send(settings.kafka.topic("posts"), key=post.post_id.encode(), value=encode(post),
                      partition=i % settings.kafka.partitions)
    producer.flush()

    store = redis.Redis.from_url(settings.redis.url)
    keys = [settings.redis.keys.label(p.post_id) for p in posts]
    wait_until(lambda: store.exists(*keys) == len(posts), timeout=120, what="every post to be labelled")
    sources = {p.post_id: Label.model_validate_json(store.get(settings.redis.keys.label(p.post_id))).hints_used.source
               for p in posts}
    assert {p for p in hinted if sources[p] != "mined"} == set(), "posts labelled without the hints read before the kill"
    wait_until(lambda: not committed_behind(settings, "classify", ("posts", "hints")), timeout=60,
               what="posts and hints committed to the end")
