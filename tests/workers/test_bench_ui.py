"""The page benchmark: it counts the CPU of a whole process tree (a browser's work is in its children) and
replays labels as the classifier writes them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
import redis

from tests.support import wait_until
from workers.benchmarks.pipeline_alone import cpu_seconds
from workers.benchmarks.ui import _replay
from workers.benchmarks.ui_page import tree_cpu_seconds
from workers.benchmarks.ui_throughput import _BURN as CO_TENANT

_BURN = """
import sys, time
while time.process_time() < 0.3:
    pass
print("burnt", flush=True)
sys.stdin.read()
"""


def test_a_childs_cpu_counts_in_its_parents_tree() -> None:
    child = subprocess.Popen([sys.executable, "-c", _BURN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "burnt"  # the child has used 0.3 s of CPU and is still alive
        own = cpu_seconds(os.getpid())
        tree = tree_cpu_seconds(os.getpid())
        assert tree - own >= 0.25  # the child's 0.3 s, less a clock tick of rounding
        assert tree_cpu_seconds(child.pid) >= 0.25
    finally:
        child.communicate("")


def test_the_co_tenant_keeps_its_share_of_a_core_busy_and_no_more() -> None:
    """The calibration neighbour burns a quarter of a core: it takes at least four times as long in wall time as
    it uses in CPU (a whole-core spinner would use one second a second); a slower or busier machine only
    stretches the wall time."""
    burner = subprocess.Popen([sys.executable, "-c", CO_TENANT, "0.25"], stdout=subprocess.PIPE, text=True)
    try:
        assert burner.stdout.readline().strip() == "burning"  # Python's start (its own CPU) is behind it
        started, used = time.monotonic(), cpu_seconds(burner.pid)
        wait_until(lambda: cpu_seconds(burner.pid) - used >= 0.2, timeout=60, interval=0.05, what="0.2 s burnt")
        assert time.monotonic() - started >= 0.2 / 0.25 * 0.9
    finally:
        burner.kill()
        burner.wait()


@pytest.mark.integration
def test_the_replay_writes_labels_with_their_photos_and_captions(make_settings) -> None:
    """The benchmark writes through the classifier's own label sink: a change of the sink's arguments must fail
    here, not halfway through a benchmark run."""
    settings = make_settings()
    written = asyncio.run(_replay(settings, "R", rate=200.0, seconds=0.5, batch=25))
    assert len(written) == 100
    store = redis.Redis.from_url(settings.redis.url)
    assert store.xlen(settings.redis.keys.labels_stream) == 100
    thumb = store.hgetall(settings.redis.keys.thumb("R-7"))
    assert thumb[b"jpeg"][:2] == b"\xff\xd8" and thumb[b"caption"]
