"""The public client reading the ``labels`` topic: every label in order per partition, an idle timeout, and a
stop event that ends the iteration (what Ctrl-C sets in ``up --demo`` and ``tail``)."""

from __future__ import annotations

import threading
import time

import pytest
from kafka import KafkaProducer

from streamcore.client import StylestreamClient
from streamcore.schemas import HintsUsed, Label, ScoredTerm, utcnow
from streamcore.serde import encode

pytestmark = pytest.mark.integration


def _label(post_id: str) -> Label:
    now = utcnow()
    return Label(post_id=post_id, model_version="v1", head="fusion", categories=[ScoredTerm(term="dresses", score=1.0)],
                 subcategories=[], attributes=[], hints_used=HintsUsed(source="none"), received_at=now, labeled_at=now)


def _produce(settings, ids: list[str]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka, acks="all")
    for post_id in ids:
        producer.send(settings.topic("labels"), key=post_id.encode(), value=encode(_label(post_id)))
    producer.flush()
    producer.close()


def test_labels_yields_every_label_then_stops_when_idle(make_settings) -> None:
    settings = make_settings()
    ids = [f"p{i}" for i in range(30)]
    _produce(settings, ids)
    started = time.monotonic()
    with StylestreamClient(settings) as client:
        got = [label.post_id for label in client.labels(from_beginning=True, timeout=2)]
    assert sorted(got) == sorted(ids)
    assert time.monotonic() - started < 30  # the idle timeout ended it


def test_labels_ends_soon_after_stop_is_set(make_settings) -> None:
    settings = make_settings()
    _produce(settings, ["a", "b"])
    stop, got = threading.Event(), []
    with StylestreamClient(settings) as client:
        for label in client.labels(from_beginning=True, stop=stop):  # no timeout: only the event ends it
            got.append(label.post_id)
            if len(got) == 2:
                threading.Timer(0.5, stop.set).start()
                set_at = time.monotonic() + 0.5
    assert sorted(got) == ["a", "b"]
    assert time.monotonic() - set_at < 5
