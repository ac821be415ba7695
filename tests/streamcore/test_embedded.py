"""The embedded stack answers, and leaves no process behind however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import redis
from kafka import KafkaAdminClient

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
        pids = [p.pid for _, p in stack._procs]
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
            "print(' '.join(str(p.pid) for _, p in s._procs), flush=True); time.sleep(600)")
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
