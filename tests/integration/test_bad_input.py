"""Every kind of bad post lands on the DLQ with its reason; the good posts around them are labelled."""

from __future__ import annotations

import base64
import io
import json
import random

import pytest
import redis
from kafka import KafkaProducer
from PIL import Image

from serving.ontology import load_ontology
from streamcore.schemas import DeadLetter
from streamcore.serde import encode
from tests.integration.test_end_to_end import _read_topic
from tests.support import wait_until
from training.synthetic.images import draw_garment, jpeg_bytes
from training.synthetic.posts import generate_posts

pytestmark = pytest.mark.integration

JPEG = jpeg_bytes(draw_garment("coats", "checked", "blue", rng=random.Random(1)))


def _png(size: tuple[int, int], mode: str = "RGB", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format=fmt)
    return buf.getvalue()


def _post(post_id: str, **changes) -> bytes:
    data = {"schema": "post/v1", "post_id": post_id, "created_at": "2026-11-22T10:00:00Z", "user": "u",
            "caption": "my new coat", "image": {"b64": base64.b64encode(JPEG).decode()}}
    data.update(changes)
    return json.dumps(data).encode()


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def _cases(prefix: str) -> dict[str, tuple[bytes, str, str]]:
    """key → (raw value, expected error code, a fragment of the expected detail)."""
    p = prefix
    return {
        "bad-json": (b'{"schema": "post/v1", ', "bad_json", "not JSON"),
        "not-utf8": (b"\xff\xfe\xfa", "bad_encoding", "UTF-8"),
        "empty": (b"", "empty", "empty"),
        "wrong-types": (_post(f"{p}-t", user=42, comments="x"), "bad_schema", "user"),
        "missing-fields": (json.dumps({"schema": "post/v1", "post_id": f"{p}-m"}).encode(), "bad_schema", "image"),
        "wrong-version": (_post(f"{p}-v", schema="post/v9"), "bad_schema", "schema"),
        "nul-bytes": (_post(f"{p}-n", caption="hello\x00world"), "bad_schema", "NUL"),
        "bad-base64": (_post(f"{p}-b", image={"b64": "***not base64***"}), "image_b64_invalid", "base64"),
        "10mb-caption": (_post(f"{p}-c", caption="a" * 10_000_000), "too_large", "limit"),
        "long-text": (_post(f"{p}-l", caption="b" * 70_000), "text_too_long", "65536"),
        "zero-byte-image": (_post(f"{p}-z", image=_b64(b"")), "image_empty", "zero"),
        "truncated-jpeg": (_post(f"{p}-j", image=_b64(JPEG[: len(JPEG) // 2])), "image_undecodable", ""),
        "garbage-image": (_post(f"{p}-g", image=_b64(b"definitely not an image")), "image_undecodable", ""),
        # Header intact, pixel data cut: passes the header checks, refused by the decoder itself.
        "corrupt-png-body": (_post(f"{p}-p", image=_b64(_png((64, 64))[:-40])), "image_undecodable", ""),
        "gif-image": (_post(f"{p}-f", image=_b64(_png((8, 8), "P", "GIF"))), "image_format", "GIF"),
        "over-pixel-limit": (_post(f"{p}-o", image=_b64(_png((1500, 1000)))), "image_too_large", "1500x1000"),
        "decompression-bomb": (_post(f"{p}-d", image=_b64(_png((20_000, 20_000), "1"))), "image_too_large", "400000000"),
        "private-url": (_post(f"{p}-u", image={"url": "https://10.0.0.7/a.jpg"}), "url_refused", "10.0.0.7"),
        "loopback-url": (_post(f"{p}-k", image={"url": "https://localhost:6379/a.jpg"}), "url_refused", "127.0.0.1"),
        "mapped-loopback-url": (_post(f"{p}-6", image={"url": "https://[::ffff:127.0.0.1]/a.jpg"}), "url_refused",
                                "127.0.0.1"),
        "plain-http-url": (_post(f"{p}-h", image={"url": "http://example.com/a.jpg"}), "url_refused", "https"),
        "unreachable-url": (_post(f"{p}-r", image={"url": "https://img.nonexistent.invalid/a.jpg"}),
                            "url_unreachable", "resolve"),
        "path-escape": (_post(f"{p}-e", image={"path": "../../etc/passwd"}), "path_refused", "outside"),
    }


def test_bad_input_suite(make_settings, workers, tmp_path):
    settings = make_settings(hint_wait_ms=200, max_image_pixels=1_000_000, image_root=tmp_path)
    group = workers(settings)
    group.start("classify")
    group.wait_ready()

    good = [p for p, _ in generate_posts(load_ontology(), 6, seed=11, prefix=settings.kafka.group_prefix)]
    cases = _cases(settings.kafka.group_prefix)
    # gzip lets the 10 MB caption through the broker; the worker sees the raw 10 MB and refuses it.
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all", compression_type="gzip",
                             max_request_size=20_000_000)
    topic = settings.kafka.topic("posts")
    for i, (key, (value, _, _)) in enumerate(cases.items()):
        if i < len(good):  # good posts interleaved with the bad ones
            producer.send(topic, key=good[i].post_id.encode(), value=encode(good[i]))
        producer.send(topic, key=key.encode(), value=value)
    # Other content under a used id (same partition, later offset); the same bytes again would be a redo.
    duplicate = good[0].model_copy(update={"caption": "another post under a used id"})
    producer.send(topic, key=duplicate.post_id.encode(), value=encode(duplicate))
    producer.flush()

    expected = {**{k: (c, d) for k, (_, c, d) in cases.items()}, duplicate.post_id: ("duplicate_post_id", duplicate.post_id)}
    letters = _read_topic(settings, "posts.dlq", until=lambda rs: len(rs) >= len(expected), timeout=120)
    got = {r.key.decode(): DeadLetter.model_validate_json(r.value) for r in letters}
    assert set(got) == set(expected), set(got) ^ set(expected)
    for key, (code, fragment) in expected.items():
        assert got[key].error == code, (key, got[key])
        assert fragment in got[key].detail, (key, got[key].detail)
        assert got[key].stage == "classify" and got[key].topic == topic
    assert base64.b64decode(got["bad-json"].original) == cases["bad-json"][0]
    assert "truncated" in got["10mb-caption"].detail

    store = redis.Redis.from_url(settings.redis.url)
    wait_until(lambda: store.exists(*(settings.redis.keys.label(p.post_id) for p in good)) == len(good), timeout=60,
               what="the good posts to be labelled")
    assert group.alive()
