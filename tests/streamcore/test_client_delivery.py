"""Delivery the caller can see: a broker that goes away after the client connected makes ``flush`` (and each
record's handle, and ``stylestream produce``) name the posts that were not delivered."""

from __future__ import annotations

import os
import subprocess
import sys
from threading import Event, Thread

import pytest
from kafka import KafkaConsumer

from streamcore.client import StylestreamClient
from streamcore.exceptions import DeliveryError, InfrastructureError
from streamcore.kafka import ensure_topics
from streamcore.settings import Settings
from tests.support import own_broker, wait_until

pytestmark = pytest.mark.integration


def _settings(bootstrap: str) -> Settings:
    return Settings.named(kafka=bootstrap, topic_prefix="d.", partitions=2, delivery_timeout_s=2)


def test_flush_names_the_posts_a_stopped_broker_did_not_take() -> None:
    with own_broker() as (bootstrap, broker):
        settings = _settings(bootstrap)
        ensure_topics(settings)
        client = StylestreamClient(settings)
        first = client.publish_image(b"\xff\xd8 not decoded by the client", post_id="before")
        client.flush()  # connected, and the first post is in
        assert first.wait().offset == 0 and first.error is None
        broker.kill()
        broker.wait()
        after = [client.publish_image(b"jpeg", post_id=f"after-{i}") for i in range(5)]
        with pytest.raises(DeliveryError) as raised:
            client.flush()
        assert set(raised.value.failed) == {f"after-{i}" for i in range(5)}
        assert "after-0" in str(raised.value)
        assert all(d.done() and d.error for d in after)
        with pytest.raises(DeliveryError):
            after[0].wait()
        client.close()  # every failure was reported by flush; nothing left to raise


def test_close_raises_what_was_not_flushed_and_a_handle_reports_its_own_failure() -> None:
    with own_broker() as (bootstrap, broker):
        settings = _settings(bootstrap)
        ensure_topics(settings)
        client = StylestreamClient(settings)
        client.publish_image(b"jpeg", post_id="warm").wait(timeout=30)
        broker.kill()
        broker.wait()
        delivery = client.publish_image(b"jpeg", post_id="lost")
        with pytest.raises(DeliveryError) as raised:
            delivery.wait(timeout=30)
        assert list(raised.value.failed) == ["lost"]
        with pytest.raises(DeliveryError) as on_close:
            client.close()
        assert list(on_close.value.failed) == ["lost"]


def test_no_broker_at_all_is_one_infrastructure_error() -> None:
    with own_broker() as (bootstrap, _):
        pass  # the port is free again: nothing answers there
    client = StylestreamClient(_settings(bootstrap))
    with pytest.raises(InfrastructureError, match="cannot reach the Kafka broker"):
        client.publish_image(b"jpeg")
    client.close()


def test_produce_exits_non_zero_and_lists_the_posts_a_stopped_broker_did_not_take(tmp_path) -> None:
    with own_broker() as (bootstrap, broker):
        settings = _settings(bootstrap)
        ensure_topics(settings)
        env = {**os.environ, "STYLESTREAM_KAFKA": bootstrap, "STYLESTREAM_TOPIC_PREFIX": "d.",
               "STYLESTREAM_DELIVERY_TIMEOUT_S": "2"}
        produce = subprocess.Popen([sys.executable, "-m", "workers.cli", "produce", "--count", "60", "--rate", "10"],
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        reader = KafkaConsumer(settings.kafka.topic("posts"), bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        seen: list[str] = []
        try:
            wait_until(lambda: bool(seen.extend(r.key.decode() for rs in reader.poll(200).values() for r in rs)
                                    or seen), timeout=120, what="the first produced post on the broker")
        finally:
            reader.close()
        broker.kill()
        broker.wait()
        out, err = produce.communicate(timeout=120)
    assert produce.returncode == 1, out + err
    assert "not delivered" in err
    listed = [line.strip() for line in err.splitlines() if line.startswith("  ")]
    assert listed and all(post_id.startswith("syn") for post_id in listed)
    assert "produced" not in out


def _kill_after_first_post(bootstrap: str, topic: str, broker: subprocess.Popen, gave_up: Event) -> None:
    reader = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    try:
        wait_until(lambda: bool(reader.poll(200)), timeout=240, what="the first post on the broker")
        broker.kill()
        broker.wait()
    except AssertionError:
        gave_up.set()  # ends the demo: the test fails on its status instead of hanging
    finally:
        reader.close()


def test_the_demo_producer_reports_what_a_stopped_broker_did_not_take() -> None:
    from contextlib import ExitStack

    from rich.console import Console

    from workers.launcher import run_demo

    with own_broker() as (bootstrap, broker), ExitStack() as stack:
        settings = _settings(bootstrap)
        ensure_topics(settings)
        console, stop = Console(record=True, width=200), Event()
        killer = Thread(target=_kill_after_first_post, args=(bootstrap, settings.kafka.topic("posts"), broker, stop))
        killer.start()
        status = run_demo(settings, rate=20, stop=stop, stack=stack, console=console)  # Ctrl-C: main thread
        killer.join(timeout=60)
    assert broker.returncode == -9, "the demo's first post never reached the broker"
    assert status == 1
    text = console.export_text()
    assert "not delivered" in text
    assert any(line.strip().startswith("photo") for line in text.splitlines() if line.startswith("  "))
