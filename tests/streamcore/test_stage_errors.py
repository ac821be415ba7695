"""The stage loop's error boundary without a broker: stand-ins for the producer and consumer."""

from __future__ import annotations

import asyncio
import base64

import aiokafka.errors
import kafka.errors
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from redis.exceptions import ConnectionError as RedisConnectionError

from streamcore.schemas import DeadLetter
from streamcore.settings import Settings
from streamcore.stage import Stage


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future:
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

    def __init__(self) -> None:
        super().__init__(Settings())
        self.producer, self.consumer = Producer(), Consumer()
        self.rounds: list[list[bytes]] = []

    async def handle(self, records):
        self.rounds.append([r.value for r in records])
        if any(r.value == b"poison" for r in records):
            raise KeyError("poison")
        for record in records:
            self.done(record)


def _records(*values: bytes) -> list[ConsumerRecord]:
    return [ConsumerRecord("posts", 0, i, -1, 0, b"k", v, None, 1, len(v), ()) for i, v in enumerate(values)]


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
