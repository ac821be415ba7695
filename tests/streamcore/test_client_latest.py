"""Reading labels "from now" (``tail`` without ``--from-beginning``): the start is the end of each partition as its
first fetch saw it, not the broker's ListOffsets answer, which Tansu storing in S3 gives far behind the end."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from kafka import KafkaProducer, TopicPartition

from streamcore.client import StylestreamClient, _skip_to_fetched_end
from streamcore.embedded import EmbeddedStack
from streamcore.kafka import ensure_topics
from streamcore.schemas import HintsUsed, Label, ScoredTerm, utcnow
from streamcore.serde import encode
from streamcore.settings import Settings


class _Record:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class _Consumer:
    """What :func:`_skip_to_fetched_end` asks of a kafka-python consumer."""

    def __init__(self, highwater: dict, position: dict) -> None:
        self.high, self.at, self.seeks = highwater, position, []

    def assignment(self) -> set:
        return set(self.at)

    def highwater(self, tp):
        return self.high.get(tp)

    def position(self, tp) -> int:
        return self.at[tp]

    def seek(self, tp, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.at[tp] = offset


def test_records_before_the_first_fetched_end_are_dropped_and_the_rest_skipped():
    a, b = TopicPartition("labels", 0), TopicPartition("labels", 1)
    consumer = _Consumer({a: 900}, {a: 4, b: 0})  # b not fetched yet: its end is not known
    batches = {a: [_Record(1), _Record(2), _Record(3)], b: []}
    ends: dict = {}
    _skip_to_fetched_end(consumer, ends, batches)
    assert batches == {} and ends == {a: 900} and consumer.seeks == [(a, 900)]
    consumer.high[a], consumer.high[b] = 905, 7  # later fetches: the end first seen stays the start
    batches = {a: [_Record(900), _Record(901)], b: [_Record(5), _Record(7)]}
    _skip_to_fetched_end(consumer, ends, batches)
    assert ends == {a: 900, b: 7} and [r.offset for r in batches[a]] == [900, 901]
    assert [r.offset for r in batches[b]] == [7]


def _label(post_id: str) -> bytes:
    now = utcnow()
    return encode(Label(post_id=post_id, model_version="v1", head="fusion",
                        categories=[ScoredTerm(term="dresses", score=1.0)], subcategories=[], attributes=[],
                        hints_used=HintsUsed(source="none"), received_at=now, labeled_at=now))


@pytest.mark.integration
def test_tail_from_now_on_tansu_with_s3_storage_shows_no_old_label(tmp_path: Path):
    with EmbeddedStack(data_dir=tmp_path) as stack:
        settings = Settings.named(kafka=stack.bootstrap, redis_url=stack.redis_url, partitions=2, metrics_port=0)
        ensure_topics(settings)
        producer = KafkaProducer(bootstrap_servers=stack.bootstrap, acks="all", linger_ms=20)
        for batch in range(3):  # several batches: ListOffsets answers the end of the first
            for i in range(6):
                post_id = f"old-{batch}-{i}"
                producer.send(settings.kafka.topic("labels"), key=post_id.encode(), value=_label(post_id))
            producer.flush()
        seen, stop = [], threading.Event()

        def keep_producing() -> None:  # until the reader got one: its first fetch time is not known here
            n = 0
            while not stop.wait(0.3):
                producer.send(settings.kafka.topic("labels"), key=b"new", value=_label(f"new-{n}"))
                producer.flush()
                n += 1

        writer = threading.Thread(target=keep_producing, daemon=True)
        writer.start()
        try:
            with StylestreamClient(settings) as client:
                for label in client.labels(timeout=20, stop=stop):
                    seen.append(label.post_id)
                    if len(seen) == 3:
                        stop.set()
        finally:
            stop.set()
            writer.join(10)
            producer.close()
    assert seen and all(post_id.startswith("new-") for post_id in seen), seen
