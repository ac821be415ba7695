"""The public client: reading the ``labels`` topic (every label, an idle timeout, a stop event that ends the
iteration: what Ctrl-C sets in ``up --demo`` and ``tail``), reading labels tolerantly, sending corrections, and
refusing at the call an image no stage could read."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from pydantic import ValidationError

from streamcore.client import StylestreamClient, image_source
from streamcore.schemas import Feedback, HintsUsed, ImageSource, Label, ScoredTerm, utcnow
from streamcore.serde import encode
from streamcore.settings import Settings

integration = pytest.mark.integration


def _label(post_id: str) -> Label:
    now = utcnow()
    return Label(post_id=post_id, model_version="v1", head="fusion", categories=[ScoredTerm(term="dresses", score=1.0)],
                 subcategories=[], attributes=[], hints_used=HintsUsed(source="none"), received_at=now, labeled_at=now)


def _produce(settings, ids: list[str]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    for post_id in ids:
        producer.send(settings.kafka.topic("labels"), key=post_id.encode(), value=encode(_label(post_id)))
    producer.flush()
    producer.close()


@integration
def test_labels_yields_every_label_then_stops_when_idle(make_settings) -> None:
    settings = make_settings()
    ids = [f"p{i}" for i in range(30)]
    _produce(settings, ids)
    started = time.monotonic()
    with StylestreamClient(settings) as client:
        got = [label.post_id for label in client.labels(from_beginning=True, timeout=2)]
    assert sorted(got) == sorted(ids)
    assert time.monotonic() - started < 30  # the idle timeout ended it


@integration
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


def _raw_label(post_id: str, **changes) -> bytes:
    record = json.loads(encode(_label(post_id)))
    record.update(changes)
    return json.dumps(record).encode()


@integration
def test_labels_keeps_unknown_fields_and_heads_and_skips_what_it_cannot_read(make_settings) -> None:
    settings = make_settings()
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    records = [_raw_label("grown", head="mixture_of_experts", confidence={"overall": 0.9}),
               b"{not json", _raw_label("no-head", head=None), b"", _raw_label("plain")]
    for value in records:  # one partition: the order is the order written
        producer.send(settings.kafka.topic("labels"), key=b"k", value=value, partition=0)
    producer.flush()
    producer.close()
    with StylestreamClient(settings) as client:
        got = list(client.labels(from_beginning=True, timeout=2))
    assert [label.post_id for label in got] == ["grown", "plain"]
    assert got[0].head == "mixture_of_experts" and got[0].model_extra == {"confidence": {"overall": 0.9}}
    assert got[0].categories[0].term == "dresses"
    assert client.skipped_labels == {"bad_json": 1, "bad_schema": 1, "empty": 1}


@integration
def test_stored_and_streamed_labels_are_read_tolerantly(make_settings) -> None:
    settings = make_settings()
    with StylestreamClient(settings) as client:
        store = client._redis_client()
        store.set(settings.redis.keys.label("grown"), _raw_label("grown", extra_field=[1, 2]))
        store.set(settings.redis.keys.label("broken"), b'{"schema": "label/v1"}')
        for value in (b"[]", _raw_label("grown")):
            store.xadd(settings.redis.keys.labels_stream, {"label": value})
        assert client.label("grown").model_extra == {"extra_field": [1, 2]}
        assert client.label("broken") is None and client.label("absent") is None
        assert client.wait_label("grown", timeout=1).post_id == "grown"
        with pytest.raises(TimeoutError):
            client.wait_label("absent", timeout=0.3)
        assert [label.post_id for label in client.stream_labels(last_id="0", timeout=1)] == ["grown"]
        assert client.skipped_labels.total() == 2


@integration
def test_a_correction_goes_to_the_feedback_topic_as_feedback_v1(make_settings) -> None:
    settings = make_settings()
    with StylestreamClient(settings) as client:
        delivery = client.correct("post-1", ["dresses"], subcategories=["maxi dress"], attributes=["floral"])
        assert delivery.wait(timeout=30).offset is not None
        with pytest.raises(ValidationError):  # "no garment" names nothing else
            client.correct("post-1", [], attributes=["floral"])
        with pytest.raises(ValidationError):
            client.correct("post 1", ["dresses"])
    reader = KafkaConsumer(settings.kafka.topic("feedback"), bootstrap_servers=settings.kafka.bootstrap, auto_offset_reset="earliest",
                           consumer_timeout_ms=5000)
    records = list(reader)
    reader.close()
    assert len(records) == 1 and records[0].key == b"post-1"
    feedback = Feedback.model_validate_json(records[0].value)
    assert feedback.schema_ == "feedback/v1" and json.loads(records[0].value)["schema"] == "feedback/v1"
    assert (feedback.categories, feedback.subcategories, feedback.attributes) == (["dresses"], ["maxi dress"],
                                                                                  ["floral"])


@pytest.mark.parametrize(("image", "error"), [
    ("no/such/photo.jpg", FileNotFoundError),
    (Path("/no/such/photo.jpg"), FileNotFoundError),
    (ImageSource(path="/etc/photo.jpg"), ValueError),
    (ImageSource(path="../outside.jpg"), ValueError),
    (ImageSource(url="ftp://host/photo.jpg"), ValueError),
    (ImageSource(b64="not base64!"), ValueError),
    (ImageSource(b64=""), ValueError),
])
def test_an_image_no_stage_could_read_is_refused_at_the_call(image, error) -> None:
    client = StylestreamClient(Settings.named(kafka=None))  # no broker: refused before any connection
    with pytest.raises(error):
        client.publish_image(image)
    assert client.failed == {}


def test_a_post_over_the_message_limit_is_refused_at_the_call() -> None:
    client = StylestreamClient(Settings.named(kafka=None, max_message_bytes=4096))
    with pytest.raises(ValueError, match="limit 4096"):
        client.publish_image(b"x" * 4096, post_id="big")


def test_files_urls_and_image_root_paths_become_their_sources(tmp_path) -> None:
    photo = tmp_path / "look.jpg"
    photo.write_bytes(b"\xff\xd8jpeg")
    assert image_source(photo).raw_bytes() == b"\xff\xd8jpeg"
    assert image_source(str(photo)).b64 is not None
    assert image_source("https://cdn.example/look.jpg").url == "https://cdn.example/look.jpg"
    assert image_source(ImageSource(path="shop/look.jpg")).path == "shop/look.jpg"
