"""One dead letter per bad post with every stage running; a re-sent post is a redo, not a duplicate."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import redis
from kafka import KafkaProducer

from serving.ontology import load_ontology
from streamcore.schemas import DeadLetter
from streamcore.serde import encode
from tests.integration.test_end_to_end import _read_topic
from tests.support import committed_behind, wait_until
from training.synthetic.posts import generate_posts
from workers.trainer import TrainerConfig, TrainerStage

pytestmark = pytest.mark.integration


def _send(settings, messages: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    for key, value in messages:
        producer.send(settings.kafka.topic("posts"), key=key, value=value)
    producer.flush()
    producer.close()


def _committed_to_end(settings, stage: str) -> bool:
    """Whether ``stage``'s group has committed every ``posts`` record produced so far (ends found by reading)."""
    return not committed_behind(settings, stage, ("posts",))


@pytest.fixture
def trainer_stage(make_settings) -> Iterator:
    """Factory: a trainer stage on its own thread that never trains (no schedule, no feedback trigger)."""
    running: list[tuple[TrainerStage, asyncio.AbstractEventLoop, threading.Thread]] = []

    def start(settings) -> TrainerStage:
        config = TrainerConfig.from_settings(settings, interval_s=None, min_feedback=None, device="cpu")
        stage = TrainerStage(settings, config)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_until_complete, args=(stage.run(),), name="trainer-stage")
        thread.start()
        running.append((stage, loop, thread))
        return stage

    yield start
    for stage, loop, thread in running:
        loop.call_soon_threadsafe(stage.stop)
        thread.join(timeout=60)


def test_a_malformed_post_yields_exactly_one_letter_with_all_stages_running(make_settings, workers, trainer_stage,
                                                                             tmp_path):
    settings = make_settings(hint_wait_ms=500, model_dir=tmp_path / "models")
    group = workers(settings)
    group.start("text")
    group.start("classify")
    trainer = trainer_stage(settings)

    good = [p for p, _ in generate_posts(load_ontology(), 2, seed=5, prefix=settings.kafka.group_prefix)]
    bad = {b"bad-json": (b'{"schema": "post/v1", ', "bad_json"),
           b"bad-schema": (b'{"schema": "post/v1", "post_id": "x"}', "bad_schema"),
           b"long-text": (encode(good[0].model_copy(update={"post_id": f"{settings.kafka.group_prefix}-long",
                                                            "caption": "b" * 70_000})), "text_too_long")}
    _send(settings, [(good[0].post_id.encode(), encode(good[0])), *((k, v) for k, (v, _) in bad.items()),
                     (good[1].post_id.encode(), encode(good[1]))])

    # Every stage has read (and committed past) every record: a stage that lettered would have done so.
    for stage in ("text", "classify", "trainer"):
        wait_until(lambda s=stage: _committed_to_end(settings, s), timeout=120, what=f"{stage} to commit every post")
    letters = [DeadLetter.model_validate_json(r.value) for r in
               _read_topic(settings, "posts.dlq", until=lambda rs: len(rs) >= len(bad), timeout=30)]
    assert sorted((letter.error, letter.stage) for letter in letters) == sorted(
        (code, "classify") for _, code in bad.values())
    assert trainer.metrics.skipped.labels("trainer", "bad_json")._value.get() == 1
    store = redis.Redis.from_url(settings.redis.url)
    wait_until(lambda: store.exists(*(settings.redis.keys.label(p.post_id) for p in good)) == 2, timeout=60,
               what="the good posts to be labelled")
    assert group.alive()


def test_the_same_post_twice_is_one_label_re_emitted_and_other_content_is_a_conflict(make_settings, workers):
    settings = make_settings(hint_wait_ms=500)
    group = workers(settings)
    group.start("text")
    group.start("classify")
    store = redis.Redis.from_url(settings.redis.url)
    post, back_to_back, conflicted = (p for p, _ in generate_posts(load_ontology(), 3, seed=9,
                                                                   prefix=settings.kafka.group_prefix))
    raw = encode(post)

    _send(settings, [(post.post_id.encode(), raw)])
    wait_until(lambda: store.exists(settings.redis.keys.label(post.post_id)), timeout=120, what="the first label")
    stored = store.get(settings.redis.keys.label(post.post_id))
    # A producer retry without idempotence: the same bytes again, long after the first was labelled;
    # the same bytes twice back to back (the second arrives while the first waits for its hints);
    # and another post under an id already used.
    other = encode(post.model_copy(update={"post_id": conflicted.post_id, "caption": "not the same post"}))
    _send(settings, [(post.post_id.encode(), raw), (back_to_back.post_id.encode(), encode(back_to_back)),
                     (back_to_back.post_id.encode(), encode(back_to_back)),
                     (conflicted.post_id.encode(), encode(conflicted))])
    wait_until(lambda: store.exists(settings.redis.keys.label(conflicted.post_id)), timeout=120, what="the third post")
    _send(settings, [(conflicted.post_id.encode(), other)])

    wait_until(lambda: _committed_to_end(settings, "classify"), timeout=120, what="classify to commit every post")
    letters = _read_topic(settings, "posts.dlq", until=lambda rs: False, timeout=1)  # all of them, caught up
    assert [(r.key.decode(), DeadLetter.model_validate_json(r.value).error) for r in letters] == [
        (conflicted.post_id, "duplicate_post_id")]

    labels = _read_topic(settings, "labels", until=lambda rs: sum(r.key == post.post_id.encode() for r in rs) >= 2,
                         timeout=60)
    mine = [r.value for r in labels if r.key == post.post_id.encode()]
    assert mine == [stored, stored]  # re-emitted, byte for byte the stored label
    assert store.get(settings.redis.keys.label(post.post_id)) == stored
    twins = {r.value for r in labels if r.key == back_to_back.post_id.encode()}
    assert twins == {store.get(settings.redis.keys.label(back_to_back.post_id))}
    streamed = [f[b"post_id"].decode() for _, f in store.xrange(settings.redis.keys.labels_stream)]
    assert streamed.count(post.post_id) == 1 and streamed.count(back_to_back.post_id) == 1
    assert group.alive()


def test_copies_read_while_a_post_is_in_flight_each_get_its_stored_label_byte_for_byte(make_settings, workers):
    settings = make_settings()  # the first copy waits for its hints while the next two are read
    group = workers(settings)
    group.start("text")
    group.start("classify")
    group.wait_ready()
    store = redis.Redis.from_url(settings.redis.url)
    [(post, _)] = generate_posts(load_ontology(), 1, seed=11, prefix=settings.kafka.group_prefix)
    key, raw = post.post_id.encode(), encode(post)

    _send(settings, [(key, raw)] * 3)  # a producer retrying without idempotence: back to back, in one fetch
    wait_until(lambda: store.exists(settings.redis.keys.label(post.post_id)), timeout=120, what="the first label")
    _send(settings, [(key, raw)])  # and once more after the label exists

    wait_until(lambda: _committed_to_end(settings, "classify"), timeout=120, what="classify to commit every copy")
    stored = store.get(settings.redis.keys.label(post.post_id))
    labels = [r for r in _read_topic(settings, "labels", until=lambda rs: len(rs) >= 4, timeout=60) if r.key == key]
    assert [r.value for r in labels] == [stored] * 4  # one label per copy, each the stored one byte for byte
    assert _read_topic(settings, "posts.dlq", until=lambda rs: False, timeout=1) == []
    streamed = [f[b"post_id"] for _, f in store.xrange(settings.redis.keys.labels_stream)]
    assert streamed == [key]  # one post, one stream entry
    assert group.alive()
