"""Thumbnails stay small and upright; the sink stores a post's preview beside its label, with its expiry."""

from __future__ import annotations

import asyncio
import io
import uuid

import numpy as np
import pytest
import redis
from PIL import Image
from redis.cluster import key_slot

from streamcore.preview import CAPTION_CHARS, THUMB_MAX_BYTES, THUMB_SIDE, Preview, make_preview, thumbnail
from streamcore.schemas import HintsUsed, Label, utcnow
from streamcore.serde import encode
from streamcore.settings import RedisKeys, Settings
from streamcore.sinks import RedisLabels, fingerprint


def _jpeg(width: int, height: int, *, orientation: int | None = None, noise: bool = True) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8) if noise else \
        np.zeros((height, width, 3), dtype=np.uint8)
    pixels[: height // 4] = (255, 0, 0)  # a red band on top: where "up" is
    out = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    Image.fromarray(pixels).save(out, format="JPEG", quality=95, exif=exif)
    return out.getvalue()


def test_a_thumbnail_is_bounded_in_side_and_bytes_even_for_noise():
    thumb = thumbnail(_jpeg(1080, 1350), max_pixels=40_000_000)
    assert thumb is not None and len(thumb) <= THUMB_MAX_BYTES
    img = Image.open(io.BytesIO(thumb))
    assert img.format == "JPEG" and max(img.size) == THUMB_SIDE and img.size[0] < img.size[1]


def test_a_thumbnail_is_upright_by_the_exif_orientation():
    # Stored sideways (the red band on the left after turning) and tagged "rotate 90 CW to view".
    sideways = Image.open(io.BytesIO(_jpeg(400, 300, noise=False))).transpose(Image.Transpose.ROTATE_90)
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways.save(out, format="JPEG", exif=exif)
    img = Image.open(io.BytesIO(thumbnail(out.getvalue(), max_pixels=10**8))).convert("RGB")
    assert img.size[0] > img.size[1]
    top, bottom = np.asarray(img)[2].mean(axis=0), np.asarray(img)[-2].mean(axis=0)
    assert top[0] > 150 > bottom[0]


def test_refused_bytes_give_no_thumbnail_but_keep_the_caption():
    assert thumbnail(b"not an image", max_pixels=10**8) is None
    assert thumbnail(_jpeg(200, 200), max_pixels=100) is None  # over the pixel limit
    preview = make_preview(b"", "x" * (CAPTION_CHARS + 50), max_pixels=10**8)
    assert preview.jpeg is None and len(preview.caption) == CAPTION_CHARS


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
    settings = Settings(redis_url=infra[1], redis_prefix=f"r{uuid.uuid4().hex[:8]}", redis_label_ttl_s=ttl)
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
    keys = settings.keys
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
