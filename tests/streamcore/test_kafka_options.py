"""STYLESTREAM_KAFKA_OPTIONS: each client gets the keys it accepts, a key none accepts is refused when the
settings are read, and a value a client refuses ends a command with one line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from pydantic import ValidationError

import streamcore.kafka
from streamcore.client import _connect
from streamcore.embedded import free_port
from streamcore.kafka import _admin, make_consumer, make_producer
from streamcore.kafka_options import KafkaOptionsError, blamed_on_options, options_for
from streamcore.sections import KafkaSettings
from streamcore.settings import Settings
from tests.support import one_line

#: Producer-only, consumer-only and shared keys, in both libraries.
MIXED = {"acks": 1, "fetch_max_wait_ms": 123, "request_timeout_ms": 12_345}


def test_a_key_no_client_accepts_is_refused_when_the_settings_are_read(monkeypatch) -> None:
    message = r"unknown Kafka client option 'foo' \(known to none of the producer, consumer or admin clients\)"
    with pytest.raises(ValidationError, match=message):
        Settings.named(kafka_options={"foo": 1, "acks": 1})
    # kafka-python never checks acks: another value would fail every send, not the settings.
    with pytest.raises(ValidationError, match="acks must be 0, 1, -1 or 'all', got 'banana'"):
        Settings.named(kafka_options={"acks": "banana"})
    monkeypatch.setenv("STYLESTREAM_KAFKA_OPTIONS", '{"foo": 1}')
    with pytest.raises(ValidationError, match=message):
        KafkaSettings()


@pytest.mark.parametrize("key", ["enable_auto_commit", "group_id", "bootstrap_servers", "value_deserializer"])
def test_a_key_that_carries_the_delivery_guarantees_cannot_be_passed_through(key) -> None:
    with pytest.raises(ValidationError, match=f"option '{key}' cannot be set here: stylestream sets it"):
        Settings.named(kafka_options={key: True, "acks": 1})


def test_a_key_one_client_accepts_is_kept() -> None:
    options = {**MIXED, "max_batch_size": 1024}  # aiokafka's producer only
    assert Settings.named(kafka_options=options).kafka.options == options


def test_each_client_is_given_the_keys_it_accepts() -> None:
    for producer in (KafkaProducer, AIOKafkaProducer):
        assert options_for(producer, MIXED) == {"acks": 1, "request_timeout_ms": 12_345}, producer
    for consumer in (KafkaConsumer, AIOKafkaConsumer):
        assert options_for(consumer, MIXED) == {"fetch_max_wait_ms": 123, "request_timeout_ms": 12_345}, consumer
    assert options_for(KafkaAdminClient, MIXED) == {"request_timeout_ms": 12_345}


def _recording(client: type, calls: list[dict]) -> type:
    """A subclass of the kafka-python ``client`` (same accepted keys) that records its arguments, connecting
    nowhere."""
    def record(self, *args, **kwargs) -> None:
        calls.append(kwargs)

    return type(f"Recording{client.__name__}", (client,), {"__init__": record, "__del__": lambda self: None,
                                                          "close": lambda self, *a, **k: None})


def test_the_kafka_python_factories_pass_only_their_keys(monkeypatch) -> None:
    settings = Settings.named(kafka="127.0.0.1:1", kafka_options=MIXED)
    calls: list[dict] = []
    _connect(_recording(KafkaProducer, calls), settings, acks="all")
    _connect(_recording(KafkaConsumer, calls), settings, "labels", group_id=None)
    monkeypatch.setattr(streamcore.kafka, "KafkaAdminClient", _recording(KafkaAdminClient, calls))
    _admin(settings)
    producer, consumer, admin = calls
    assert producer["acks"] == 1 and producer["request_timeout_ms"] == 12_345 and "fetch_max_wait_ms" not in producer
    assert consumer["fetch_max_wait_ms"] == 123 and "acks" not in consumer
    assert admin["request_timeout_ms"] == 12_345 and not {"acks", "fetch_max_wait_ms"} & set(admin)


def test_the_aiokafka_factories_pass_only_their_keys() -> None:
    async def built() -> tuple[AIOKafkaProducer, AIOKafkaConsumer]:
        settings = Settings.named(kafka="127.0.0.1:1", kafka_options={**MIXED, "max_request_size": 2_000_000})
        producer, consumer = make_producer(settings), make_consumer(settings, "posts", group="g")
        await producer.stop()
        await consumer.stop()
        return producer, consumer

    producer, consumer = asyncio.run(built())  # each would refuse the other's keys with a TypeError
    assert producer._max_request_size == 2_000_000 and producer._request_timeout_ms == 12_345
    assert consumer._fetch_max_wait_ms == 123 and consumer._request_timeout_ms == 12_345


def test_a_value_a_client_refuses_is_blamed_on_the_options() -> None:
    async def build() -> None:
        make_producer(Settings.named(kafka="127.0.0.1:1", kafka_options={"compression_type": "zip"}))

    with pytest.raises(KafkaOptionsError, match="invalid STYLESTREAM_KAFKA_OPTIONS: AIOKafkaProducer given "
                                                "compression_type: ValueError: Invalid compression type"):
        asyncio.run(build())
    # Without pass-through options the error is stylestream's own: it passes as it is.
    with pytest.raises(ValueError, match="ours"), blamed_on_options(KafkaProducer, {}):
        raise ValueError("ours")


def _run(args: list[str], options: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STYLESTREAM_")}
    environ |= {"STYLESTREAM_KAFKA": f"127.0.0.1:{free_port()}", "STYLESTREAM_DELIVERY_TIMEOUT_S": "1",
                "STYLESTREAM_KAFKA_OPTIONS": options}
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], env=environ, capture_output=True, text=True,
                          timeout=120, check=False)


def test_the_commands_refuse_bad_options_in_one_line() -> None:
    assert "unknown Kafka client option 'foo'" in one_line(_run(["produce", "--count", "1"], '{"foo": 1}'))
    # A string api_version is parsed before any connection: a bad one fails as the client is built.
    for command, client in ((["produce", "--count", "1"], "KafkaProducer"), (["tail", "--json"], "KafkaConsumer"),
                            (["topics"], "KafkaAdminClient")):
        line = one_line(_run(command, '{"api_version": "banana"}'))
        assert f"invalid STYLESTREAM_KAFKA_OPTIONS: {client} given api_version: ValueError" in line, line


def test_a_producer_key_does_not_reach_the_consumer_of_tail() -> None:
    line = one_line(_run(["tail", "--json"], '{"acks": 1}'))
    assert "cannot reach the Kafka broker" in line and "Unrecognized" not in line, line


def test_a_refused_option_is_named_without_its_value() -> None:
    """Pass-through options may hold credentials: the line names the keys, never the values."""
    line = one_line(_run(["topics"], '{"sasl_plain_password": "hunter2", "foo": "s3cret"}'))
    assert "STYLESTREAM_KAFKA_OPTIONS={'sasl_plain_password': …, 'foo': …}" in line, line
    assert "hunter2" not in line and "s3cret" not in line
