"""The classifier's bounded state, driven without a broker: held hints, byte backpressure, pauses that
survive a reassignment, the serving pointer. The consumer is a stand-in that records pause/resume."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from streamcore.schemas import Hints, ImageSource, Post
from streamcore.serde import encode
from streamcore.settings import Settings
from workers.classify.feeder import ImageFeeder
from workers.classify.stage import ClassifyStage, received_ms

TOPICS = ("posts", "hints")


class Lookups:
    """The two reads the classifier makes of Redis: the serving pointer and which posts are labelled."""

    def __init__(self, value: bytes | None = None, labelled: frozenset[str] = frozenset()) -> None:
        self.value = value
        self.done = labelled

    async def current_model(self) -> str | None:
        return self.value.decode() if self.value else None

    async def labelled(self, post_ids: list[str]) -> list[bool]:
        return [p in self.done for p in post_ids]


class Consumer:
    """Assignment plus pause bookkeeping, as the stage uses them."""

    def __init__(self, partitions: int = 2) -> None:
        self.owned = {TopicPartition(t, p) for t in TOPICS for p in range(partitions)}
        self.paused: set[TopicPartition] = set()

    def assignment(self) -> set[TopicPartition]:
        return set(self.owned)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)


def _record(topic: str, offset: int, value: bytes, partition: int = 0) -> ConsumerRecord:
    return ConsumerRecord(topic, partition, offset, 1_700_000_000_000, 0, None, value, None, 0, len(value), ())


def _hints(post_id: str) -> bytes:
    return encode(Hints(post_id=post_id, miner_version="test"))


def _post(post_id: str, caption: str = "") -> bytes:
    return encode(Post(post_id=post_id, created_at=datetime.now(UTC), user="u", caption=caption,
                       image=ImageSource(path="x.jpg")))


@pytest.fixture
def stage() -> ClassifyStage:
    stage = ClassifyStage(Settings.named(max_inflight=10, max_inflight_bytes=10_000, max_held_hint_bytes=2_000,
                                   hint_wait_ms=60_000))
    stage.consumer = Consumer()
    stage.lookups = Lookups(labelled=frozenset({"old"}))
    started: list = []
    stage._start = started.append  # the batch path is the integration tests' business
    stage.started = started
    return stage


def _fetch(stage: ClassifyStage, records: list[ConsumerRecord]) -> None:
    for record in records:
        stage.offsets.add(TopicPartition(record.topic, record.partition), record.offset)
    asyncio.run(stage.handle(records))


def test_held_hints_stay_uncommitted_until_their_post_is_done(stage):
    hints = _record("hints", 0, _hints("a"))
    _fetch(stage, [hints])
    assert stage.offsets.committable().get(TopicPartition("hints", 0)) == 0  # held: not committable
    _fetch(stage, [_record("posts", 0, _post("a"))])
    (waiting,) = stage.started
    assert waiting.hints is not None and waiting.hints_record is hints
    assert stage.offsets.committable().get(TopicPartition("hints", 0)) == 0  # still in use by the post


def test_late_and_duplicate_hints_are_released_and_counted(stage):
    _fetch(stage, [_record("hints", 0, _hints("a")), _record("hints", 1, _hints("a"))])  # the text stage redid "a"
    assert stage.metrics.hints_released.labels("duplicate")._value.get() == 1
    assert stage.offsets.is_pending(TopicPartition("hints", 0), 0)
    assert not stage.offsets.is_pending(TopicPartition("hints", 0), 1)
    _fetch(stage, [_record("posts", 9, _post("b"))])
    stage._apply(stage.join.due(time.monotonic() + 3600))  # b's wait is over: classified without hints
    _fetch(stage, [_record("hints", 2, _hints("b"))])
    assert stage.metrics.hints_released.labels("late")._value.get() == 1


def test_rereading_hints_of_an_already_labelled_post_releases_them(stage):
    _fetch(stage, [_record("hints", 0, _hints("old")), _record("hints", 1, _hints("new"))])
    assert stage.metrics.hints_released.labels("late")._value.get() == 1
    assert stage.join.held_post_ids() == ["new"]
    assert stage.offsets.committable()[TopicPartition("hints", 0)] == 1  # "old" no longer holds the partition


def test_posts_pause_on_bytes_not_only_on_count(stage):
    big = "x" * 3_000
    _fetch(stage, [_record("posts", i, _post(f"p{i}", big)) for i in range(4)])  # 4 posts, > 10,000 bytes
    stage._backpressure()
    assert {tp.topic for tp in stage.consumer.paused} == {"posts"}
    stage.join.forget({("posts", 0)})
    stage._backpressure()
    assert not stage.consumer.paused


def test_held_hints_over_their_byte_cap_pause_the_hints_partitions(stage):
    _fetch(stage, [_record("hints", i, _hints(f"h{i}")) for i in range(40)])  # ~40 x 60 bytes > 2,000
    stage._backpressure()
    assert {tp.topic for tp in stage.consumer.paused} == {"hints"}


def test_a_pause_survives_reassignment(stage):
    _fetch(stage, [_record("posts", i, _post(f"p{i}")) for i in range(10)])  # count cap reached
    stage._backpressure()
    stage.consumer.paused.clear()  # what the client does on reassignment
    stage.consumer.owned |= {TopicPartition("posts", 7), TopicPartition("hints", 7)}
    stage.on_assigned(sorted(stage.consumer.owned))
    assert {tp for tp in stage.consumer.paused} == {tp for tp in stage.consumer.owned if tp.topic == "posts"}




@pytest.mark.parametrize("raw", [b"\xff\xfe", b"../../etc", b"v1\nv2", b"x" * 129, b".hidden"])
def test_a_garbage_serving_pointer_is_counted_once_and_ignored(stage, raw):
    stage.lookups = Lookups(raw)
    assert asyncio.run(stage._serving_pointer()) is None
    assert asyncio.run(stage._serving_pointer()) is None
    assert stage.metrics.bad_state.labels("classify", "model_current")._value.get() == 1


@pytest.mark.parametrize("raw", [b"v20261130T101500000000Z", b"candidate-3", None])
def test_a_version_name_is_passed_on(stage, raw):
    stage.lookups = Lookups(raw)
    assert asyncio.run(stage._serving_pointer()) == (raw.decode() if raw else None)


@pytest.mark.parametrize("timestamp", [-5, 10**15, None])
def test_a_record_timestamp_no_datetime_holds_becomes_the_read_time(timestamp):
    before = int(time.time() * 1000)
    record = ConsumerRecord("posts", 0, 0, timestamp, 0, None, b"x", None, 0, 1, ())
    assert before <= received_ms(record) <= int(time.time() * 1000)
    assert received_ms(_record("posts", 0, b"x")) == 1_700_000_000_000


def _decoded_at(settings: Settings, queued: int, count: int) -> list[int]:
    """The scheduling policy of the thread that decoded each of ``count`` images started together while
    ``queued`` decoded images wait for a batch."""
    feeder = ImageFeeder(settings.classify, lambda post: os.sched_getscheduler(0), lambda: queued,
                         cpu_model=settings.serving.device == "cpu")

    async def together() -> list[int]:
        return list(await asyncio.gather(*(feeder.decode(None) for _ in range(count))))

    try:
        return asyncio.run(together())
    finally:
        feeder.close()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="no SCHED_IDLE on this platform")
def test_on_a_cpu_model_only_images_beyond_the_next_batch_are_decoded_at_idle_priority():
    cpu = {"device": "cpu", "max_batch": 4, "decode_idle_priority": True}
    # The next batch lacks images: decoded at normal priority, the model would wait for them...
    assert _decoded_at(Settings.named(**cpu), queued=0, count=1) == [os.SCHED_OTHER]
    # ... until queued and urgent ones cover it: the rest use the time the forward leaves.
    assert _decoded_at(Settings.named(**cpu), queued=3, count=3) == [os.SCHED_OTHER, os.SCHED_IDLE, os.SCHED_IDLE]
    assert _decoded_at(Settings.named(**cpu), queued=4, count=1) == [os.SCHED_IDLE]


@pytest.mark.parametrize("settings", [{"device": "cpu"}, {"device": "cpu", "decode_idle_priority": False},
                                      {"device": "cuda", "decode_idle_priority": True}])
def test_by_default_on_a_gpu_model_or_off_every_decode_keeps_normal_priority(settings):
    # Off by default: busy neighbours would starve idle decodes. A GPU model leaves the cores to the decoding.
    assert _decoded_at(Settings.named(max_batch=4, **settings), queued=8, count=2) == [os.SCHED_OTHER] * 2
