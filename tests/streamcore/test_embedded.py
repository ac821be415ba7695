"""The embedded stack answers, and leaves no process behind however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata

from streamcore.embedded import EmbeddedStack
from streamcore.kafka import delete_topics, ensure_topics
from streamcore.settings import TOPICS, Settings
from tests.support import wait_until

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is dead for our purpose
        return fh.read().split()[2] != "Z"


def test_start_answer_stop():
    with EmbeddedStack() as stack:
        pids = list(stack.pids.values())
        assert redis.Redis.from_url(stack.redis_url).ping()
        settings = Settings.named(kafka=stack.bootstrap, partitions=3)
        assert ensure_topics(settings) and ensure_topics(settings) == []  # idempotent
        admin = KafkaAdminClient(bootstrap_servers=stack.bootstrap)
        described = admin.describe_topics(["posts"])
        assert len(described[0]["partitions"]) == 3
        other = Settings.named(kafka=stack.bootstrap, topic_prefix="other.")
        ensure_topics(other)
        delete_topics(settings)
        delete_topics(settings)  # nothing left to delete: no error
        assert sorted(admin.list_topics()) == sorted(other.kafka.topic(name) for name in TOPICS)
        admin.close()
    assert not any(_alive(pid) for pid in pids)


def test_children_die_when_the_parent_is_killed():
    code = ("from streamcore.embedded import EmbeddedStack; import sys, time; s = EmbeddedStack().start(); "
            "print(' '.join(map(str, s.pids.values())), flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    wait_until(lambda: not any(_alive(p) for p in pids), timeout=10, what="broker and redis to exit")


def test_redis_keeps_its_data_across_restarts_in_a_data_dir(tmp_path):
    with EmbeddedStack(data_dir=tmp_path) as stack:
        redis.Redis.from_url(stack.redis_url).set("stylestream:model:current", "v7")
    with EmbeddedStack(data_dir=tmp_path) as stack:  # another port, the same data
        assert redis.Redis.from_url(stack.redis_url).get("stylestream:model:current") == b"v7"
    assert any((tmp_path / "redis").rglob("*.aof"))
    with EmbeddedStack() as stack:  # without one: memory only
        assert redis.Redis.from_url(stack.redis_url).get("stylestream:model:current") is None


def _produce_and_commit(bootstrap: str, n: int) -> None:
    # No idempotence: Tansu's S3 engine can acknowledge an idempotent retry it never stored (docs/operations-faults.md).
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    for i in range(n):
        producer.send("kept", key=str(i).encode(), value=b"v%d" % i)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id="keeper", enable_auto_commit=False)
    consumer.commit({TopicPartition("kept", p): OffsetAndMetadata(5, "", -1) for p in range(2)})
    consumer.close()


def _kept(bootstrap: str) -> tuple[int, dict[int, int | None]]:
    """(records readable in topic ``kept``, committed offset of group ``keeper`` per partition)."""
    tps = [TopicPartition("kept", p) for p in range(2)]
    reader = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    reader.assign(tps)
    reader.seek_to_beginning()
    count = 0
    while batches := reader.poll(timeout_ms=1500):
        count += sum(len(records) for records in batches.values())
    reader.close()
    group = KafkaConsumer(bootstrap_servers=bootstrap, group_id="keeper", enable_auto_commit=False)
    committed = {tp.partition: group.committed(tp) for tp in tps}
    group.close()
    return count, committed


def test_the_broker_keeps_topics_records_and_offsets_across_restarts_in_a_data_dir(tmp_path):
    with EmbeddedStack(data_dir=tmp_path) as stack:
        assert set(stack.pids) == {"s3", "broker", "redis"}
        ensure_topics(Settings.named(kafka=stack.bootstrap, topic_prefix="x."))
        KafkaAdminClient(bootstrap_servers=stack.bootstrap).create_topics([NewTopic("kept", 2, 1)])
        _produce_and_commit(stack.bootstrap, 40)
    with EmbeddedStack(data_dir=tmp_path) as stack:  # other ports, the same data
        assert _kept(stack.bootstrap) == (40, {0: 5, 1: 5})
        admin = KafkaAdminClient(bootstrap_servers=stack.bootstrap)
        assert {"kept", *(f"x.{name}" for name in TOPICS)} <= set(admin.list_topics())
        admin.close()
    assert any((tmp_path / "broker").iterdir())


def test_watch_restarts_each_killed_server_on_its_port_and_data(tmp_path):
    restarted: list[str] = []
    with EmbeddedStack(data_dir=tmp_path) as stack:
        KafkaAdminClient(bootstrap_servers=stack.bootstrap).create_topics([NewTopic("kept", 2, 1)])
        _produce_and_commit(stack.bootstrap, 30)
        redis.Redis.from_url(stack.redis_url).set("stylestream:model:current", "v7")
        stack.watch(restarted.append, interval=0.1)
        for name in ("broker", "s3", "redis"):
            before = stack.pids[name]
            os.kill(before, signal.SIGKILL)
            wait_until(lambda n=name, b=before: stack.pids.get(n, b) != b, timeout=30, what=f"{name} restarted")
        wait_until(lambda: restarted == ["broker", "s3", "redis"], timeout=30, what="three restarts reported")
        assert _kept(stack.bootstrap) == (30, {0: 5, 1: 5})
        assert redis.Redis.from_url(stack.redis_url).get("stylestream:model:current") == b"v7"
