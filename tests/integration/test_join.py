"""Posts join their mined hints for any classifier replica count, across a rebalance mid-stream.

The join needs ``posts-i`` and ``hints-i`` on one member; the client's default round-robin assignor only
does that when the replica count divides the partition count (3 replicas on 4 partitions: no post found
its hints). With the co-partitioning assignor and hints held uncommitted until used, a post whose caption
names fashion is labelled with ``hints_used.source == "mined"`` whoever owns it, before and after a new
replica joins.
"""

from __future__ import annotations

import re
import threading
import time

import pytest
import redis
from kafka import KafkaProducer

from serving.ontology import load_ontology
from streamcore.schemas import Label
from streamcore.serde import encode
from tests.support import committed_behind, wait_until
from training.synthetic.posts import generate_posts
from training.text import TextMiner

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 4
RATE = 5.0  # posts/s
BEFORE = 30  # posts labelled by the replica count under test before a new replica starts
AFTER_REBALANCE = 25  # posts fed after the new member owns partitions
MAX_POSTS = 1000


def _rebalances(metrics_text: str) -> float:
    found = re.findall(r'^stylestream_rebalances_total\{stage="classify"\} ([0-9.e+]+)$', metrics_text, re.MULTILINE)
    return sum(float(v) for v in found)


@pytest.mark.parametrize("replicas", [1, 2, 3, 5])
def test_posts_join_their_hints_for_any_replica_count(make_settings, workers, replicas):
    # A generous hint wait: this measures where hints go, not how fast a loaded box delivers them.
    settings = make_settings(partitions=PARTITIONS, hint_wait_ms=15_000)
    group = workers(settings)
    group.start("text")
    first = [group.start("classify") for _ in range(replicas)]
    group.wait_ready()

    ontology = load_ontology()
    miner = TextMiner.load(ontology)
    posts = [p for p, _ in generate_posts(ontology, MAX_POSTS, seed=40 + replicas, prefix=settings.kafka.group_prefix)]
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all", linger_ms=5)
    store = redis.Redis.from_url(settings.redis.url)

    def labelled(batch: list) -> int:
        keys = [settings.redis.keys.label(p.post_id) for p in batch]
        return sum(store.exists(*keys[i:i + 100]) for i in range(0, len(keys), 100))

    # Phase 1: the replica count under test alone, every post labelled before anything changes.
    sent = list(posts[:BEFORE])
    for post in sent:
        producer.send(settings.kafka.topic("posts"), key=post.post_id.encode(), value=encode(post))
    producer.flush()
    wait_until(lambda: labelled(sent) == BEFORE, timeout=120, what=f"the first posts labelled by {replicas}")

    # Phase 2: a paced feed, and a new replica joining in the middle of it (every member is reassigned).
    stop_at = [MAX_POSTS]

    def feed() -> None:
        for post in posts[BEFORE:]:
            if len(sent) >= stop_at[0]:
                break
            time.sleep(1 / RATE)  # pacing, not synchronisation
            producer.send(settings.kafka.topic("posts"), key=post.post_id.encode(), value=encode(post))
            sent.append(post)
        producer.flush()

    new = group.start("classify")
    # Its health server answers just before its consumer joins (a loaded box may take a minute to
    # import torch): the feed starts then, so the rebalance lands mid-stream.
    wait_until(lambda: group.metrics(new) != "", timeout=240, what="the new replica to start")
    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        wait_until(lambda: sum(_rebalances(group.metrics(p)) for p in first) >= 1, timeout=180,
                   what="a rebalance of the first replicas")
        group.wait_ready()
        assert feeder.is_alive(), "the feed ended before the rebalance"
    finally:
        stop_at[0] = min(stop_at[0], len(sent) + AFTER_REBALANCE)
        feeder.join()
    assert group.alive()

    wait_until(lambda: labelled(sent) == len(sent), timeout=240, what="every post to be labelled")
    _assert_hints_used(settings, store, miner, sent, replicas)
    wait_until(lambda: not committed_behind(settings, "classify", ("posts", "hints")), timeout=60,
               what="the classifiers' committed offsets to reach the end of posts and hints")


def _assert_hints_used(settings, store, miner, sent: list, replicas: int) -> None:
    """At least 95% of the posts whose text has hints were labelled with them."""
    hinted = [p for p in sent if not miner.mine(p).is_empty]
    assert len(hinted) >= len(sent) // 2, "the synthetic captions should mostly name their garment"
    labels = [Label.model_validate_json(store.get(settings.redis.keys.label(p.post_id))) for p in hinted]
    mined = sum(label.hints_used.source == "mined" for label in labels)
    before = sum(label.hints_used.source == "mined" for p, label in zip(hinted, labels) if p in sent[:BEFORE])
    print(f"{replicas} then {replicas + 1} replicas: {mined}/{len(hinted)} hinted posts labelled with mined hints "
          f"({before}/{sum(p in sent[:BEFORE] for p in hinted)} before the new replica; {len(sent)} posts)")
    assert mined >= 0.95 * len(hinted), f"{mined} of {len(hinted)} posts with hints used them"
