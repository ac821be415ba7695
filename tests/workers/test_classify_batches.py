"""A micro-batch's labels are written as one unit: a Redis outage during a batch of 32 costs one write
attempt per retry round (not 1 + 32), dead-letters nothing, and every label lands once Redis is back.

Real Redis (the session's embedded server, made to refuse writes); the model and the broker are stand-ins."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
import redis

from streamcore.exceptions import BadInput
from streamcore.metrics import StageMetrics
from streamcore.sinks import LabelBatch, LabelSink, fingerprint
from streamcore.stage import INFRA_ERRORS
from workers.classify.batches import BatchRunner, Item
from workers.classify.feeder import Place

pytestmark = pytest.mark.integration


class Predictor:
    """Each image is its post id; the label names it."""

    version = "v-test"

    def stage(self, images, hints):
        return images

    def infer(self, staged):
        return staged

    def label_json(self, scores, post_ids, timestamps_ms):
        return [json.dumps({"post_id": p, "model_version": self.version}).encode() for p in post_ids]


class Producer:
    """Per-partition batches, as aiokafka's producer takes them; records what was acknowledged."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, bytes]] = []

    def create_batch(self):
        return _Batch()

    async def send_batch(self, batch, topic, *, partition):
        self.sent.extend((topic, partition, key) for key, _ in batch.items)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class _Batch:
    def __init__(self) -> None:
        self.items: list[tuple[bytes, bytes]] = []

    def append(self, *, key, value, timestamp):
        self.items.append((key, value))
        return object()


async def _retrying(operation, call):
    """The stage's retry loop without backoff: every round is one more call."""
    while True:
        try:
            return await call()
        except INFRA_ERRORS:
            continue


def test_a_redis_outage_during_a_batch_of_32_is_retried_as_one_write(make_settings, monkeypatch):
    settings = make_settings()
    store = redis.Redis.from_url(settings.redis.url)
    attempts = []
    real_flush = LabelBatch.flush
    policy = store.config_get("maxmemory-policy")["maxmemory-policy"]

    async def counted_flush(self):
        attempts.append(len(self))
        if len(attempts) == 4:  # Redis comes back after three failed rounds
            store.config_set("maxmemory", 0)
            store.config_set("maxmemory-policy", policy)
        return await real_flush(self)

    monkeypatch.setattr(LabelBatch, "flush", counted_flush)
    producer = Producer()
    ids = [f"{settings.kafka.group_prefix}-{n}" for n in range(32)]

    async def scenario():
        sink = LabelSink(settings, producer)
        runner = BatchRunner(SimpleNamespace(current=Predictor()), sink, StageMetrics("classify"), _retrying,
                             model_pool=None)
        places = asyncio.Semaphore(64)
        items = []
        for n, post_id in enumerate(ids):
            await places.acquire()
            items.append(Item(post_id, None, post_id, 0, fingerprint(post_id.encode()), n % 4, Place(places)))
        store.config_set("maxmemory-policy", "noeviction")
        store.config_set("maxmemory", 1)  # every write refused (OOM) until counted_flush lifts it
        try:
            return await runner(items)
        finally:
            store.config_set("maxmemory", 0)
            store.config_set("maxmemory-policy", policy)
            runner.close()
            await sink.close()

    results = asyncio.run(scenario())
    assert attempts == [32, 32, 32, 32], "one write of the whole batch per round"
    assert not any(isinstance(r, BadInput) or r is None for r in results)
    assert store.exists(*(settings.redis.keys.label(p) for p in ids)) == len(ids)
    assert sorted(key.decode() for _, _, key in producer.sent) == sorted(ids)  # each label sent once
    assert {topic for topic, _, _ in producer.sent} == {settings.kafka.topic("labels")}
