"""The stage loop's error boundary without a broker: stand-ins for the producer and consumer."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import aiokafka.errors
import kafka.errors
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from redis.exceptions import ConnectionError as RedisConnectionError

from streamcore.exceptions import BadInput
from streamcore.health import HealthServer
from streamcore.schemas import DeadLetter
from streamcore.settings import Settings
from streamcore.stage import Stage


class Producer:
    """Refuses records over ``_max_request_size`` as aiokafka does, and over ``broker_limit`` as a broker does."""

    def __init__(self, limit: int = 10_000_000, broker_limit: int | None = None) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self._max_request_size = limit
        self.broker_limit = broker_limit

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future:
        if len(value) + len(key or b"") > self._max_request_size:
            raise aiokafka.errors.MessageSizeTooLargeError(f"{len(value)} bytes")
        if self.broker_limit is not None and len(value) > self.broker_limit:
            raise aiokafka.errors.RecordTooLargeError("the broker's message.max.bytes")
        self.sent.append((topic, key, value))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


class Consumer:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.commits: list[dict] = []

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("posts", 0)}

    async def topics(self) -> set[str]:
        return {"posts", "posts.dlq"}

    async def commit(self, offsets: dict) -> None:
        if self.error is not None:
            raise self.error
        self.commits.append(offsets)


class Toy(Stage):
    """Finishes every record of a round, unless the round holds a poison one (then the round raises)."""

    name = "toy"
    inputs = ("posts",)

    def __init__(self, **settings) -> None:
        super().__init__(Settings.named(**settings))
        self.producer, self.consumer = Producer(), Consumer()
        self.rounds: list[list[bytes]] = []

    async def handle(self, records):
        self.rounds.append([r.value for r in records])
        if any(r.value == b"poison" for r in records):
            raise KeyError("poison")
        for record in records:
            self.done(record)


def _records(*values: bytes, topic: str = "posts") -> list[ConsumerRecord]:
    return [ConsumerRecord(topic, 0, i, -1, 0, b"k", v, None, 1, len(v), ()) for i, v in enumerate(values)]


def test_a_failing_round_is_retried_record_by_record_and_the_poison_one_dead_lettered():
    stage = Toy()
    records = _records(b"a", b"poison", b"b")
    for record in records:
        stage.offsets.add(TopicPartition("posts", 0), record.offset)

    asyncio.run(stage._handle(records))

    assert stage.rounds == [[b"a", b"poison", b"b"], [b"a"], [b"poison"], [b"b"]]
    ((topic, key, value),) = stage.producer.sent
    letter = DeadLetter.model_validate_json(value)
    assert topic == "posts.dlq" and key == b"k"
    assert letter.error == "unexpected_error" and letter.detail == "KeyError: 'poison'"
    assert base64.b64decode(letter.original) == b"poison" and letter.offset == 1
    assert stage.offsets.committable() == {TopicPartition("posts", 0): 3}  # the commit point moves past all


def test_infrastructure_errors_are_retried_with_backoff_and_counted():
    stage = Toy()
    failures = [aiokafka.errors.KafkaTimeoutError(), kafka.errors.KafkaTimeoutError(), RedisConnectionError("down")]

    async def flaky() -> str:
        if failures:
            raise failures.pop(0)
        return "written"

    assert asyncio.run(stage.retrying("write", flaky)) == "written"
    assert stage.metrics.infra_errors.labels("toy", "write")._value.get() == 3


def test_a_commit_that_fails_in_a_rebalance_does_not_escape_and_is_retried():
    stage = Toy()
    stage.consumer = Consumer(aiokafka.errors.CommitFailedError("group rebalanced"))
    stage.offsets.add(TopicPartition("posts", 0), 0)
    stage.offsets.done(TopicPartition("posts", 0), 0)

    asyncio.run(stage._commit())
    assert stage.metrics.infra_errors.labels("toy", "commit")._value.get() == 1
    stage.consumer.error = None
    asyncio.run(stage._commit())  # still committable: tried again
    assert [{tp: o.offset for tp, o in c.items()} for c in stage.consumer.commits] == [{TopicPartition("posts", 0): 1}]


def test_a_bad_record_timestamp_is_not_observed_as_latency():
    stage = Toy()
    for timestamp in (-1, 10**15):
        record = ConsumerRecord("posts", 0, 0, timestamp, 0, None, b"x", None, 0, 1, ())
        stage.offsets.add(TopicPartition("posts", 0), 0)
        stage.done(record)
    assert stage._latency._sum.get() == 0


def _dead_letter(stage: Toy, value: bytes) -> DeadLetter:
    (record,) = _records(value)
    stage.offsets.add(TopicPartition("posts", 0), 0)
    asyncio.run(stage.dead_letter(record, BadInput("too_large", "an 8 MB post")))
    assert stage.offsets.committable() == {TopicPartition("posts", 0): 1}  # the stage moves on
    ((topic, _, letter),) = stage.producer.sent
    assert topic == "posts.dlq"
    return DeadLetter.model_validate_json(letter)


def test_a_letter_larger_than_the_producer_sends_is_cut_to_fit_not_retried_forever():
    stage, big = Toy(), b"\xff" * (8 * 1024 * 1024)
    stage.producer = Producer(limit=1_000_000)
    letter = _dead_letter(stage, big)
    kept = base64.b64decode(letter.original)
    assert 500_000 < len(kept) < 1_000_000 and big.startswith(kept)
    assert letter.original_bytes == len(big) and letter.original_sha256 == hashlib.sha256(big).hexdigest()
    assert stage.metrics.infra_errors.labels("toy", "dead_letter")._value.get() == 0  # fitted at once


def test_a_letter_the_broker_still_refuses_goes_again_without_the_original():
    stage = Toy()
    stage.producer = Producer(limit=1_000_000, broker_limit=4000)
    letter = _dead_letter(stage, b"\x01" * 200_000)
    assert letter.original == "" and letter.original_bytes == 200_000 and "truncated to 0 of 200000" in letter.detail
    assert stage.metrics.infra_errors.labels("toy", "dead_letter")._value.get() == 1


class Oversize(Toy):
    """Writes an output the producer refuses for good, once per record."""

    async def handle(self, records):
        for record in records:
            await self.retrying("output", lambda k=record.key: self.send("labels", k, b"x" * 2_000_000))
            self.done(record)


def test_an_output_refused_for_good_dead_letters_its_record_and_the_round_goes_on():
    stage = Oversize()
    stage.producer = Producer(limit=1_000_000)
    records = _records(b"a", b"b")
    for record in records:
        stage.offsets.add(TopicPartition("posts", 0), record.offset)
    asyncio.run(stage._handle(records))
    letters = [DeadLetter.model_validate_json(v) for _, _, v in stage.producer.sent]
    assert [(x.error, x.offset) for x in letters] == [("output_too_large", 0), ("output_too_large", 1)]
    assert letters[0].detail.startswith("output: MessageSizeTooLargeError")
    assert stage.offsets.committable() == {TopicPartition("posts", 0): 2}


def test_an_operation_failing_past_stuck_after_s_makes_the_stage_unready_until_it_succeeds():
    stage = Toy(stuck_after_s=0.3, retry_backoff_max_s=0.1)
    server = HealthServer(stage.metrics.registry, heartbeat=stage.heartbeat, ready=lambda: True, problem=stage.stuck)
    seen: list[tuple[bool, str]] = []

    def stuck_gauge() -> float:
        return stage.metrics.registry.get_sample_value("stylestream_stuck", {"stage": "toy"})

    async def down_until_reported() -> str:
        if not seen or seen[-1][0]:
            seen.append((*server.is_ready(), stuck_gauge()))
            raise RedisConnectionError("Redis is down")
        return "written"

    assert asyncio.run(stage.retrying("label_write", down_until_reported)) == "written"
    assert seen[0] == (True, "ready", 0)
    ready, reason, gauge = seen[-1]
    assert not ready and reason.startswith("stuck: toy label_write failing for") and "Redis is down" in reason
    assert gauge == 1
    assert stuck_gauge() == 0  # the streak ended with the success
    assert server.is_ready() == (True, "ready") and stage.stuck() is None


def test_a_stage_waiting_out_an_outage_stays_alive_while_it_says_it_is_stuck():
    from streamcore.health import Heartbeat

    now = [0.0]
    stage = Toy(stuck_after_s=0.01, retry_backoff_max_s=0.01)
    stage.heartbeat = Heartbeat(1.0, clock=lambda: now[0])
    alive: list[bool] = []

    async def down_for_a_while() -> str:
        alive.append(stage.heartbeat.alive())
        if len(alive) < 6:
            now[0] += 0.6  # more than a liveness probe's window passes across the outage
            raise RedisConnectionError("Redis is down")
        return "written"

    assert asyncio.run(stage.retrying("label_write", down_for_a_while)) == "written"
    assert all(alive) and now[0] > stage.heartbeat.max_age_s


class GoneBroker(Consumer):
    """A consumer (and producer) whose broker went away mid-round: a commit, leaving the group and a producer's
    stop wait for it for ever, as the Kafka client waits for a group coordinator while there is none."""

    def __init__(self, records: list[ConsumerRecord]) -> None:
        super().__init__()
        self.records = records

    def subscribe(self, topics, listener=None) -> None:
        pass

    async def start(self) -> None:
        pass

    async def getmany(self, timeout_ms: int, max_records: int) -> dict:
        batch, self.records = self.records, []
        return {TopicPartition("posts", 0): batch} if batch else {}

    def highwater(self, tp: TopicPartition) -> int:
        return 1

    async def commit(self, offsets: dict) -> None:
        await asyncio.Event().wait()

    async def stop(self) -> None:
        await asyncio.Event().wait()


def test_a_stage_told_to_stop_while_the_broker_is_gone_exits_within_its_stop_timeout(monkeypatch):
    import logging

    import streamcore.stage

    stage = Toy(stop_timeout_s=0.2)
    gone = GoneBroker(_records(b"a"))
    monkeypatch.setattr(streamcore.stage, "make_consumer", lambda settings, group: gone)
    monkeypatch.setattr(streamcore.stage, "make_producer", lambda settings: gone)

    async def handle(records) -> None:
        for record in records:
            stage.done(record)
        stage.stop()  # SIGTERM, or the parent's death, while the broker is away

    stage.handle = handle

    async def bounded() -> None:
        await asyncio.wait_for(stage.run(), 30)  # a hang fails here instead of holding the suite

    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())  # on this logger: no repeat filter between
    logging.getLogger("streamcore.faults").addHandler(handler)
    try:
        asyncio.run(bounded())
    finally:
        logging.getLogger("streamcore.faults").removeHandler(handler)
    assert stage.offsets.committable() == {TopicPartition("posts", 0): 1}  # not committed: the next owner redoes it
    assert stage.metrics.infra_errors.labels("toy", "commit")._value.get() >= 1
    assert warnings == ["toy: leaving Kafka took over STYLESTREAM_STOP_TIMEOUT_S (0.2s): going on without it"] * 2
