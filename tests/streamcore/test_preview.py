"""The sink stores a post's preview beside its label, in the label's hash slot and with its expiry."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
from redis.cluster import key_slot

from streamcore.preview import Preview
from streamcore.rediskeys import RedisKeys
from streamcore.schemas import HintsUsed, Label, utcnow
from streamcore.serde import encode
from streamcore.settings import Settings
from streamcore.sinks import RedisLabels, fingerprint


def test_preview_keys_share_the_labels_hash_slot():
    keys = RedisKeys("stylestream")
    for post_id in ("a", "x:y.z-1", "Z" * 128):
        slot = key_slot(keys.label(post_id).encode())
        assert key_slot(keys.thumb(post_id).encode()) == slot == key_slot(keys.correction(post_id).encode())


def _label(post_id: str) -> bytes:
    now = utcnow()
    return encode(Label(post_id=post_id, model_version="v1", head="fusion", categories=[], subcategories=[],
                        attributes=[], hints_used=HintsUsed(source="none"), received_at=now, labeled_at=now,
                        abstain="no_garment"))


@pytest.mark.integration
@pytest.mark.parametrize("ttl", [None, 120])
def test_the_sink_stores_previews_beside_labels_with_their_expiry(infra, ttl):
    settings = Settings.named(redis_url=infra[1], redis_prefix=f"r{uuid.uuid4().hex[:8]}", redis_label_ttl_s=ttl)
    ids = ["a", "b", "c"]
    previews = [Preview(b"\xff\xd8jpeg", "red <b>dress</b>"), Preview(None, "no picture"), None]

    async def write(prints: list[str], which: list[Preview | None]) -> list[bytes | None]:
        sink = RedisLabels(settings)
        try:
            return await sink.write("v1", [(p, _label(p)) for p in ids], prints, previews=which)
        finally:
            await sink.close()

    prints = [fingerprint(p.encode()) for p in ids]
    assert all(asyncio.run(write(prints, previews)))
    client = redis.Redis.from_url(infra[1])
    keys = settings.redis.keys
    assert client.hgetall(keys.thumb("a")) == {b"jpeg": b"\xff\xd8jpeg", b"caption": b"red <b>dress</b>"}
    assert client.hgetall(keys.thumb("b")) == {b"caption": b"no picture"}
    assert not client.exists(keys.thumb("c"))
    if ttl is None:
        assert client.ttl(keys.thumb("a")) == -1
    else:
        assert 0 < client.ttl(keys.thumb("a")) <= ttl
    # A post id labelled from other content keeps the first post's preview.
    assert asyncio.run(write([fingerprint(b"other")] * 3, [Preview(b"x", "other")] * 3)) == [None] * 3
    assert client.hget(keys.thumb("a"), "caption") == b"red <b>dress</b>"
