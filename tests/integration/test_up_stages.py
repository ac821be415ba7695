"""``stylestream up`` (not the demo) restarts a stage process that dies: the classifier SIGKILLed mid-run comes
back, is counted on ``up``'s metrics port, and labels the posts that follow."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import redis

from serving.ontology import load_ontology
from streamcore.client import StylestreamClient
from tests.integration.test_up_durable import Up, _ready, _start_up
from tests.support import wait_until
from training.synthetic.posts import generate_posts

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _stage_pid(up: Up, stage: str) -> int:
    """Process id of ``up``'s child running ``stylestream worker STAGE``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat, argv = (entry / "stat").read_text(), (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == up.proc.pid and fields[0] != "Z" and argv[-3:-1] == [b"worker", stage.encode()]:
            return int(entry.name)
    raise AssertionError(f"up runs no {stage} stage")


def _as_a_background_job() -> None:
    """What a non-interactive shell does to a job it starts with ``&``: SIGINT ignored (Python then installs no
    handler of its own for it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_up_restarts_a_stage_that_was_killed_and_it_labels_the_posts_that_follow(tmp_path, tiny_registry):
    # Started as a background job: a SIGINT must stop it cleanly all the same.
    up, settings = _start_up(tmp_path, tiny_registry, preexec_fn=_as_a_background_job)
    try:
        killed = _stage_pid(up, "classify")
        killed_at = time.monotonic()
        os.kill(killed, signal.SIGKILL)
        up.wait_for(r"stage classify exited \(status -9\); restarted", timeout=30, after=killed_at)
        assert _stage_pid(up, "classify") != killed
        wait_until(lambda: _ready(settings.metrics.stage_port("classify")), timeout=150, what="classify ready again")

        posts = [p for p, _ in generate_posts(load_ontology(), 5, seed=31, prefix="restart")]
        with StylestreamClient(settings) as client:
            for post in posts:
                client.publish(post)
        store = redis.Redis.from_url(settings.redis.url)
        keys = [settings.redis.keys.label(p.post_id) for p in posts]
        wait_until(lambda: all(store.mget(keys)), timeout=120, what="the posts sent after the restart labelled")
        metrics = up.metrics(settings)
        assert 'stylestream_stage_restarts_total{stage="classify"} 1.0' in metrics
        assert 'stylestream_stage_restarts_total{stage="text"} 0.0' in metrics
    finally:
        up.stop()
        print(f"up's output:\n{up.text()[-4000:]}")  # shown when the test fails
    assert up.proc.returncode == 0 and "stopping…" in up.text(), up.text()[-3000:]
    assert "Traceback" not in up.text(), up.text()[-3000:]
