"""Byte-identical copies of a post read while it waits for its hints, driven without a broker: each copy ends
as the first one's stored label sent again, byte for byte (or, when the first is dead-lettered, is classified
again), and is done only once that is written."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import ConsumerRecord

from streamcore.exceptions import BadInput
from streamcore.schemas import Hints, ImageSource, Post
from streamcore.serde import encode
from streamcore.settings import Settings
from workers.classify.join import HintJoin, Waiting
from workers.classify.stage import ClassifyStage

POSTS, HINTS = TopicPartition("posts", 0), TopicPartition("hints", 0)
RAW = encode(Post(post_id="a", created_at=datetime.now(UTC), user="u", image=ImageSource(path="x.jpg")))
LABEL = b'{"post_id": "a", "stored": true}'


def _record(tp: TopicPartition, offset: int, value: bytes) -> ConsumerRecord:
    return ConsumerRecord(tp.topic, tp.partition, offset, 1_700_000_000_000, 0, None, value, None, 0, len(value), ())


class Stand:
    """A classifier whose model path, topic writes and letters are recorded instead of made."""

    def __init__(self, outcome: bytes | Exception) -> None:
        self.stage = stage = ClassifyStage(Settings.named(hint_wait_ms=60_000, retry_backoff_max_s=0.01))
        self.started: list[Waiting] = []
        self.classified: list[ConsumerRecord] = []
        self.sent: list[list[tuple[str, int, bytes | None, bytes]]] = []
        self.letters: list[tuple[ConsumerRecord, str]] = []
        self.send_error: Exception | None = None
        stage._start = self.started.append

        async def classify(waiting: Waiting) -> bytes:
            self.classified.append(waiting.record)
            if isinstance(outcome, Exception):
                raise outcome
            stage.done(waiting.record)
            return outcome

        async def send_to_partitions(topic, messages) -> None:
            if self.send_error is not None:
                raise self.send_error
            self.sent.append([(topic, *m) for m in messages])

        async def dead_letter(record, error: BadInput) -> None:
            self.letters.append((record, error.code))
            stage.done(record)

        stage._classify, stage.send_to_partitions, stage.dead_letter = classify, send_to_partitions, dead_letter

    def fetch(self, records: list[ConsumerRecord]) -> None:
        for record in records:
            self.stage.offsets.add(TopicPartition(record.topic, record.partition), record.offset)
        asyncio.run(self.stage.handle(records))

    def three_copies_then_hints(self) -> Waiting:
        """The same post three times back to back, then its hints: the first starts, the others ride on it."""
        self.fetch([_record(POSTS, n, RAW) for n in range(3)])
        assert self.started == []
        self.fetch([_record(HINTS, 0, encode(Hints(post_id="a", miner_version="t")))])
        (waiting,) = self.started
        assert [r.offset for r in waiting.redos] == [1, 2]
        return waiting


def test_copies_read_while_a_post_waits_get_its_stored_label_byte_for_byte_once_it_is_written():
    stand = Stand(LABEL)
    waiting = stand.three_copies_then_hints()
    assert stand.stage.offsets.committable()[POSTS] == 0
    asyncio.run(stand.stage._process(waiting))
    assert stand.classified == [waiting.record]  # classified once
    assert stand.sent == [[("labels", 0, b"a", LABEL), ("labels", 0, b"a", LABEL)]]  # one write for both copies
    assert stand.stage.offsets.committable() == {POSTS: 3, HINTS: 1}
    assert stand.stage.metrics.labeled._value.get() == 2  # the copies' (the first's is counted where it is made)
    assert stand.stage.metrics.reemitted._value.get() == 2
    assert stand.letters == []


def test_copies_of_a_dead_lettered_post_are_classified_again_like_a_copy_read_later():
    stand = Stand(BadInput("image_refused", "not an image"))
    waiting = stand.three_copies_then_hints()
    asyncio.run(stand.stage._process(waiting))
    assert [r.offset for r in stand.classified] == [0, 1, 2]
    assert sorted((r.offset, code) for r, code in stand.letters) == [(0, "image_refused"), (1, "image_refused"),
                                                                     (2, "image_refused")]
    assert stand.sent == [] and stand.stage.metrics.reemitted._value.get() == 0
    assert stand.stage.offsets.committable() == {POSTS: 3, HINTS: 1}


def test_a_dead_lettered_post_leaves_its_id_free_for_a_copy_with_other_bytes():
    stand = Stand(BadInput("url_unreachable", "could not fetch"))
    waiting = stand.three_copies_then_hints()
    asyncio.run(stand.stage._process(waiting))
    fixed = encode(Post(post_id="a", created_at=datetime.now(UTC), user="u", image=ImageSource(path="y.jpg")))
    stand.fetch([_record(POSTS, 3, fixed)])
    assert [code for _, code in stand.letters] == ["url_unreachable"] * 3  # none for the fixed copy
    assert [r.offset for r in stand.stage.join.waiting_records()] == [3]  # it waits for its hints, to be classified


def test_copies_stay_unfinished_when_their_label_cannot_be_sent_before_the_stage_stops():
    stand = Stand(LABEL)
    waiting = stand.three_copies_then_hints()
    stand.send_error = KafkaConnectionError("broker away")
    stand.stage.stop()
    asyncio.run(stand.stage._process(waiting))
    assert stand.stage.offsets.committable() == {POSTS: 1, HINTS: 1}  # the copies are read again by the next owner
    assert stand.stage.offsets.is_pending(POSTS, 1) and stand.stage.offsets.is_pending(POSTS, 2)
    assert stand.letters == [] and stand.stage.metrics.reemitted._value.get() == 0


@pytest.mark.parametrize("copies", [0, 2])
def test_copies_of_a_waiting_post_count_against_the_in_flight_bounds(copies):
    join = HintJoin(hold_s=60)
    post = Post(post_id="a", created_at=datetime.now(UTC), user="u", image=ImageSource(path="x.jpg"))
    for offset in range(copies + 1):
        join.on_post(_record(POSTS, offset, RAW), post, "fp", deadline=5.0)
    assert [r.offset for r in join.waiting_records()] == list(range(copies + 1))
