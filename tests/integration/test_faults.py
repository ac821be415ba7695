"""Fault injection through Kafka only: every odd record ends as one label or one dead letter, the good
posts around it are labelled, and the committed offsets reach the end of every partition.

Odd inputs, the serving pointer and the text flood run against worker processes started the way operators
start them; model-step exceptions and Redis/Kafka failures need a hand inside the process, so those run
the real classifier stage in-process with one part made to fail (a predictor subclass, a full Redis, a
producer that times out).
"""

from __future__ import annotations

import asyncio
import io
import random
import re
import string
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import aiokafka
import aiokafka.errors
import pytest
import redis
from kafka import KafkaProducer
from PIL import Image

from serving.ontology import load_ontology
from serving.predict import Predictor
from serving.registry import default_entry
from streamcore.schemas import DeadLetter, Hints, Post
from streamcore.serde import encode
from streamcore.settings import Settings
from streamcore.stage import Stage
from tests.integration.test_bad_input import JPEG, _b64, _post
from tests.integration.test_end_to_end import _read_topic
from tests.support import committed_behind, wait_until
from training.synthetic.posts import generate_posts
from workers.classify import ClassifyStage

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_GOOD = 40


# -- odd inputs ------------------------------------------------------------------------------------
def _png(width: int, height: int, *, depth: int = 8, color: int = 2, data: bytes | None = None) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    pixels = data if data is not None else zlib.compress(b"\x00" * (width * 3 + 1) * height)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _webp() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="WEBP")
    return buf.getvalue()


def _odd_images() -> dict[str, bytes]:
    """Files Pillow identifies by their header but whose content it cannot (or should not) decode."""
    return {
        "png-corrupt-idat": _png(8, 8, data=b"not zlib at all"),
        "png-palette-without-plte": _png(8, 8, color=3),
        "png-1x40000": _png(1, 40_000),
        "jpeg-header-only": JPEG[:200] + b"\xff\xd9",
        "jpeg-lossless-sof3": JPEG.replace(b"\xff\xc0", b"\xff\xc3", 1),
        "jpeg-12-bit": JPEG.replace(b"\xff\xc0\x00\x11\x08", b"\xff\xc0\x00\x11\x0c", 1),
        "webp-garbage-body": _webp()[:20] + b"\x00" * 40,
    }


def _odd_records(prefix: str) -> dict[str, tuple[bytes, int | None]]:
    """post_id → (value, record timestamp or None)."""
    p = prefix
    odd = {f"{p}-{name}": (_post(f"{p}-{name}", image=_b64(data)), None) for name, data in _odd_images().items()}
    for name, url in {"ipv6-broken": "http://[::1/a.jpg", "port-out-of-range": "http://example.com:99999/a.jpg",
                      "port-not-a-number": "http://example.com:abc/a.jpg",
                      "host-label-too-long": f"http://{'a' * 64}.example.com/a.jpg"}.items():
        odd[f"{p}-url-{name}"] = (_post(f"{p}-url-{name}", image={"url": url}), None)
    odd[f"{p}-path-nul"] = (_post(f"{p}-path-nul", image={"path": "a\x00b.jpg"}), None)
    odd[f"{p}-path-dir"] = (_post(f"{p}-path-dir", image={"path": "."}), None)
    # Valid posts whose record timestamps no datetime holds (year ~33,000) or lie before the epoch.
    odd[f"{p}-ts-far-future"] = (_post(f"{p}-ts-far-future"), 10**15)
    odd[f"{p}-ts-epoch"] = (_post(f"{p}-ts-epoch"), 0)
    return odd


def _outcomes(settings: Settings, keys: set[str], *, timeout: float) -> tuple[Counter, Counter]:
    """(labels per key on the labels topic, classifier dead letters per key), once every key has one."""
    def ended(labels: list, letters: list) -> set[str]:
        return {r.key.decode() for r in labels} | {r.key.decode() for r in letters}

    deadline = time.monotonic() + timeout
    while True:
        labels = _read_topic(settings, "labels", until=lambda rs: keys <= {r.key.decode() for r in rs}, timeout=5)
        letters = [r for r in _read_topic(settings, "posts.dlq", until=lambda rs: False, timeout=1)
                   if DeadLetter.model_validate_json(r.value).stage == "classify"]
        if keys <= ended(labels, letters) or time.monotonic() > deadline:
            break
    return Counter(r.key.decode() for r in labels), Counter(r.key.decode() for r in letters)


def _produce(settings: Settings, records: list[tuple[str, bytes, int | None]], partition_of=None) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    for key, value, timestamp in records:
        partition = partition_of(key) if partition_of else None
        producer.send(settings.kafka.topic("posts"), key=key.encode(), value=value, timestamp_ms=timestamp,
                      partition=partition)
    producer.flush()
    producer.close()


def _good_posts(settings: Settings, n: int = N_GOOD, *, seed: int = 31, tag: str = "good") -> list[Post]:
    return [p for p, _ in generate_posts(load_ontology(), n, seed=seed, prefix=f"{settings.kafka.group_prefix}-{tag}")]


def _assert_caught_up(settings: Settings, stages: dict[str, tuple[str, ...]]) -> None:
    for stage, topics in stages.items():
        wait_until(lambda s=stage, t=topics: not committed_behind(settings, s, t), timeout=60,
                   what=f"{stage}'s committed offsets to reach the end of {topics}")


def test_odd_inputs_each_end_once_and_the_stream_moves_on(make_settings, workers, tmp_path):
    settings = make_settings(hint_wait_ms=500, image_root=tmp_path)
    (tmp_path / "a.jpg").write_bytes(JPEG)
    group = workers(settings)
    group.start("text")
    group.start("classify")
    group.wait_ready()

    odd = _odd_records(settings.kafka.group_prefix)
    good = _good_posts(settings)
    records = [(k, v, ts) for k, (v, ts) in odd.items()]
    for i, post in enumerate(good):  # good posts around and between the odd ones
        records.insert(min(2 * i, len(records)), (post.post_id, encode(post), None))
    _produce(settings, records)

    labels, letters = _outcomes(settings, set(odd) | {p.post_id for p in good}, timeout=180)
    for key in odd:
        assert labels[key] + letters[key] == 1, (key, labels[key], letters[key])
    assert {p.post_id for p in good} <= set(labels) and not (set(letters) & {p.post_id for p in good})
    by_key = {r.key.decode(): DeadLetter.model_validate_json(r.value)
              for r in _read_topic(settings, "posts.dlq", until=lambda rs: False, timeout=1)}
    p = settings.kafka.group_prefix
    assert labels[f"{p}-ts-far-future"] == 1 and labels[f"{p}-ts-epoch"] == 1  # valid posts: labelled
    for key in (f"{p}-url-ipv6-broken", f"{p}-url-port-out-of-range", f"{p}-path-nul"):
        assert by_key[key].detail, by_key[key]  # a reason, whichever code the image loader gives
    store = redis.Redis.from_url(settings.redis.url)
    assert store.exists(*(settings.redis.keys.label(p.post_id) for p in good)) == len(good)
    assert group.alive()
    _assert_caught_up(settings, {"classify": ("posts", "hints"), "text": ("posts",)})


# -- the text stage under a hashtag flood -----------------------------------------------------------
def _flood_post(post_id: str, rng: random.Random) -> Post:
    def tag() -> str:
        return "#" + "".join(rng.choice(string.ascii_lowercase) for _ in range(40))

    caption = " ".join(tag() for _ in range(Settings().limits.max_text_bytes // 42))
    return Post(post_id=post_id, created_at="2026-11-22T10:00:00Z", user="u", caption=caption,
                hashtags=[tag() for _ in range(1000)], image=_b64(JPEG))


def test_a_hashtag_flood_delays_normal_posts_by_at_most_two_seconds(make_settings, workers):
    settings = make_settings(partitions=1)
    group = workers(settings)
    group.start("text")
    group.wait_ready()

    rng = random.Random(5)
    flood = [_flood_post(f"{settings.kafka.group_prefix}-flood-{i}", rng) for i in range(10)]
    normal = _good_posts(settings, 30, seed=8, tag="normal")
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all", max_request_size=20_000_000)
    sent_at = {}
    for post in [*flood, *normal]:  # one partition: every normal post queues behind the whole flood
        sent_at[post.post_id] = producer.send(settings.kafka.topic("posts"), key=post.post_id.encode(),
                                              value=encode(post)).get(timeout=30).timestamp
    producer.close()

    hints = _read_topic(settings, "hints", until=lambda rs: len(rs) >= 40, timeout=120)
    delays = {r.key.decode(): (r.timestamp - sent_at[r.key.decode()]) / 1000 for r in hints}
    assert {p.post_id for p in normal} <= set(delays), "normal posts without hints"
    worst = max(delays[p.post_id] for p in normal)
    print(f"text stage: worst normal-post delay behind 10 flood posts = {worst:.3f} s")
    assert worst <= 2.0, sorted(delays.values())[-5:]
    for record in hints:
        assert len(record.value) < 16_384  # the flood's hints are capped too
        Hints.model_validate_json(record.value)


# -- the serving pointer ------------------------------------------------------------------------
def _metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.MULTILINE))


def test_garbage_serving_pointer_is_ignored_and_the_model_kept(make_settings, workers, tmp_path):
    settings = make_settings(hint_wait_ms=200, model_poll_s=0.2, model_dir=tmp_path)
    store = redis.Redis.from_url(settings.redis.url)
    store.set(settings.redis.keys.model_current, b"\xff\xfe not utf-8 \x00")
    group = workers(settings)
    proc = group.start("classify")
    group.wait_ready()

    first = _good_posts(settings, 10, seed=2, tag="before")
    _produce(settings, [(p.post_id, encode(p), None) for p in first])
    wait_until(lambda: store.exists(*(settings.redis.keys.label(p.post_id) for p in first)) == len(first), timeout=120,
               what="labels under a non-UTF-8 serving pointer")
    assert _metric(group.metrics(proc), "stylestream_bad_state_total") == 1
    for seen, garbage in enumerate((b"../../../etc", b"v1\nv2", b"x" * 300), start=2):
        store.set(settings.redis.keys.model_current, garbage)
        wait_until(lambda n=seen: _metric(group.metrics(proc), "stylestream_bad_state_total") >= n, timeout=30,
                   what=f"the bad pointer {garbage[:20]!r} to be counted")
    second = _good_posts(settings, 10, seed=3, tag="after")
    _produce(settings, [(p.post_id, encode(p), None) for p in second])
    wait_until(lambda: store.exists(*(settings.redis.keys.label(p.post_id) for p in second)) == len(second), timeout=60,
               what="labels after the pointer changed to garbage")
    text = group.metrics(proc)
    assert _metric(text, "stylestream_bad_state_total") >= 4, "each distinct bad value is counted"
    assert f'version="{default_entry().version}"' in text  # still the model it started with (the packaged one)
    assert _metric(text, "stylestream_model_swaps_total") == 0
    assert group.alive()


# -- in-process: model-step exceptions, Redis and Kafka failures ----------------------------------------
@contextmanager
def _running(stage: Stage) -> Iterator[None]:
    """The stage's real loop on its own thread, ready and owning every input partition."""
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_until_complete, args=(stage.run(),), daemon=True)
    runner.start()
    try:
        owned = len(stage.inputs) * stage.settings.kafka.partitions
        wait_until(lambda: stage.ready and len(stage.consumer.assignment()) == owned, timeout=180,
                   what="the in-process stage to be ready")
        yield
    finally:
        loop.call_soon_threadsafe(stage.stop)
        runner.join(timeout=60)
    assert not runner.is_alive()


class PoisonPredictor(Predictor):
    """The real predictor, except that a batch holding a ``poison`` post raises inside the batch step
    (``label_json``: the step of the per-batch model work that sees post ids)."""

    def label_json(self, scores, post_ids, timestamps_ms):
        if any("poison" in p for p in post_ids):
            raise RuntimeError("model step exploded on " + ",".join(p for p in post_ids if "poison" in p))
        return super().label_json(scores, post_ids, timestamps_ms)


def test_model_step_exceptions_fail_only_their_post(make_settings, monkeypatch):
    settings = make_settings(hint_wait_ms=100, max_batch=8, max_wait_ms=200)
    real_load = Predictor.load.__func__
    monkeypatch.setattr(Predictor, "load", classmethod(lambda cls, *a: real_load(PoisonPredictor, *a)))
    stage = ClassifyStage(settings)
    good = _good_posts(settings, 30, seed=4)
    poison = _good_posts(settings, 3, seed=6, tag="poison")
    with _running(stage):
        records = [(p.post_id, encode(p), None) for p in good]
        for i, post in enumerate(poison):  # inside bursts, so they share batches with good posts
            records.insert(5 + 10 * i, (post.post_id, encode(post), None))
        _produce(settings, records)
        labels, letters = _outcomes(settings, {p.post_id for p in good + poison}, timeout=120)
        _assert_caught_up(settings, {"classify": ("posts",)})
        assert stage.metrics.dead_letters.labels("classify", "unexpected_error")._value.get() == len(poison)
    assert all(labels[p.post_id] == 1 and not letters[p.post_id] for p in good)
    assert all(letters[p.post_id] == 1 and not labels[p.post_id] for p in poison)
    for record in _read_topic(settings, "posts.dlq", until=lambda rs: len(rs) >= len(poison), timeout=10):
        letter = DeadLetter.model_validate_json(record.value)
        assert letter.error == "unexpected_error" and letter.detail.startswith("RuntimeError: model step exploded")


def test_redis_and_kafka_errors_mid_batch_are_retried_not_fatal(make_settings, monkeypatch):
    settings = make_settings(hint_wait_ms=100, max_batch=8, retry_backoff_max_s=0.5)
    store = redis.Redis.from_url(settings.redis.url)
    real_send_batch = aiokafka.AIOKafkaProducer.send_batch
    kafka_failures = {"left": 3}

    async def flaky_send_batch(self, batch, topic, *args, **kwargs):  # the broker times out the first label writes
        if topic == settings.kafka.topic("labels") and kafka_failures["left"] > 0:
            kafka_failures["left"] -= 1
            raise aiokafka.errors.KafkaTimeoutError()
        return await real_send_batch(self, batch, topic, *args, **kwargs)

    monkeypatch.setattr(aiokafka.AIOKafkaProducer, "send_batch", flaky_send_batch)
    stage = ClassifyStage(settings)
    posts = _good_posts(settings, 30, seed=12)
    failures = stage.metrics.infra_errors.labels("classify", "label_write")
    with _running(stage):
        policy = store.config_get("maxmemory-policy")["maxmemory-policy"]  # the session's Redis: put it back
        store.config_set("maxmemory-policy", "noeviction")
        store.config_set("maxmemory", 1)  # Redis refuses every write (OOM) until it is lifted
        try:
            _produce(settings, [(p.post_id, encode(p), None) for p in posts[:15]])
            wait_until(lambda: failures._value.get() >= 3, timeout=60, what="label writes to fail on a full Redis")
        finally:
            store.config_set("maxmemory", 0)
            store.config_set("maxmemory-policy", policy)
        _produce(settings, [(p.post_id, encode(p), None) for p in posts[15:]])
        labels, letters = _outcomes(settings, {p.post_id for p in posts}, timeout=120)
        _assert_caught_up(settings, {"classify": ("posts",)})
    assert kafka_failures["left"] == 0, "the Kafka failures were not injected"
    assert all(labels[p.post_id] == 1 for p in posts), labels
    assert not letters, "infrastructure failures must not dead-letter posts"
    assert store.exists(*(settings.redis.keys.label(p.post_id) for p in posts)) == len(posts)
