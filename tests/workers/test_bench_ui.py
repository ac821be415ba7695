"""The page benchmark: it counts the CPU of a whole process tree (a browser's work is in its children) and
replays labels as the classifier writes them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
import redis

from workers.benchmarks.pipeline_alone import cpu_seconds
from workers.benchmarks.ui import _replay, _tree_cpu_seconds

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
        tree = _tree_cpu_seconds(os.getpid())
        assert tree - own >= 0.25  # the child's 0.3 s, less a clock tick of rounding
        assert _tree_cpu_seconds(child.pid) >= 0.25
    finally:
        child.communicate("")


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
