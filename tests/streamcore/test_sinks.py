"""The label sink on a real Redis: one script call per micro-batch, idempotent, duplicates refused."""

from __future__ import annotations

import asyncio
import json

import redis

from streamcore.sinks import RedisLabelSink


def _label(post_id: str, version: str, score: float = 0.5) -> bytes:
    return json.dumps({"post_id": post_id, "model_version": version, "score": score}).encode()


def test_a_batch_is_written_once_and_replays_are_byte_identical(make_settings):
    settings = make_settings()
    keys = settings.keys

    async def scenario():
        sink = RedisLabelSink(settings.redis_url, keys=keys, stream_maxlen=1000)
        try:
            batch = [(f"p{i}", _label(f"p{i}", "v1")) for i in range(3)]
            sources = [f"posts/0/{i}" for i in range(3)]
            first = await sink.write("v1", batch, sources)
            # The same posts from the same positions, labelled again by v1 (after a crash): the stored bytes.
            replay = await sink.write("v1", [(p, _label(p, "v1", 0.9)) for p, _ in batch], sources)
            # p1 from another position is a duplicate post; p3 is new; p0 under v2 is relabelled.
            mixed = await sink.write("v2", [("p1", _label("p1", "v2")), ("p3", _label("p3", "v2")),
                                            ("p0", _label("p0", "v2"))], ["posts/1/7", "posts/0/3", "posts/0/0"])
            return first, replay, mixed
        finally:
            await sink.close()

    first, replay, mixed = asyncio.run(scenario())
    assert first == [_label(f"p{i}", "v1") for i in range(3)]
    assert replay == first
    assert mixed == [None, _label("p3", "v2"), _label("p0", "v2")]
    store = redis.Redis.from_url(settings.redis_url)
    assert store.get(keys.label("p1")) == _label("p1", "v1")
    assert store.get(keys.source("p1")) == b"posts/0/1"
    posted = [fields[b"post_id"] for _, fields in store.xrange(keys.labels_stream)]
    assert posted == [b"p0", b"p1", b"p2", b"p3", b"p0"]


def test_an_empty_batch_writes_nothing(make_settings):
    settings = make_settings()

    async def scenario():
        sink = RedisLabelSink(settings.redis_url, keys=settings.keys, stream_maxlen=10)
        try:
            return await sink.write("v1", [], [])
        finally:
            await sink.close()

    assert asyncio.run(scenario()) == []
    assert redis.Redis.from_url(settings.redis_url).xlen(settings.keys.labels_stream) == 0
