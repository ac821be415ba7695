"""``stylestream up`` (not the demo) as an operator runs it: the broker and then Redis are SIGKILLed mid-stream.

``up`` restarts each on its port and data; no post is lost, each is labelled once, the labels, the serving
pointer and the trainer's state written before the kills are still there, every stage's committed offsets
reach the end of every partition, and the log lines written during each outage stay few.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest
import redis

from serving.ontology import load_ontology
from streamcore.client import StylestreamClient
from streamcore.embedded import EmbeddedStack
from streamcore.exceptions import DeliveryError
from streamcore.schemas import DeadLetter
from streamcore.sections import STAGE_PORT_OFFSET
from streamcore.settings import Settings
from tests.integration.test_end_to_end import _read_topic
from tests.support import committed_behind, wait_until
from training.state import TrainerState
from training.synthetic.posts import generate_posts
from workers import STAGES

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_POSTS = 160
RATE = 8.0  # posts/s: the feed lasts 20 s; the kills come at a third and two thirds of it
STAGE_INPUTS = {"text": ("posts",), "classify": ("posts", "hints"), "trainer": ("posts", "feedback"),
                "profiles": ("labels",)}
#: Lines ``up`` (its stages included) may write during one outage. The stages let the first of a run of like
#: warnings through, then one line per 30 s per kind; ``up`` writes two per restart. Measured: 19-25 (broker), 6-7 (Redis).
MAX_OUTAGE_LINES = 40


def _free_base(span: int) -> int:
    """A port ``p`` with ``p .. p + span - 1`` free (the stages' health ports are offsets from one base)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + span > 65535:
            continue
        try:
            for port in range(base, base + span):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no block of free ports")


class Up:
    """``stylestream up`` in a child process; its output lines kept with the time each arrived."""

    def __init__(self, cwd: Path, env: dict[str, str], **popen) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "up", "--no-ui"], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def text(self) -> str:
        return "\n".join(line for _, line in list(self.lines))

    def wait_for(self, pattern: str, *, timeout: float, after: float = 0.0) -> re.Match:
        found: list[re.Match] = []

        def seen() -> bool:
            assert self.proc.poll() is None, f"up exited:\n{self.text()[-3000:]}"
            found.extend(m for t, line in list(self.lines) if t >= after and (m := re.search(pattern, line)))
            return bool(found)

        wait_until(seen, timeout=timeout, what=f"up to print {pattern!r}")
        return found[0]

    def lines_between(self, start: float, end: float) -> list[str]:
        return [line for t, line in list(self.lines) if start <= t < end]

    def child(self, command: str) -> int:
        """Process id of ``up``'s child whose command name starts with ``command`` (the kernel keeps 15 characters
        of it; the broker's binary carries its version)."""
        for entry in Path("/proc").iterdir():
            try:
                stat = (entry / "stat").read_text()
            except (OSError, ValueError):
                continue
            name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            if name.startswith(command) and int(rest[1]) == self.proc.pid and rest[0] != "Z":
                return int(entry.name)
        raise AssertionError(f"up has no child {command!r}")

    @staticmethod
    def metrics(settings: Settings) -> str:
        """What ``up`` serves on its own metrics port."""
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.metrics.stage_port('up')}/metrics") as reply:
            return reply.read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=10)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _feed(settings: Settings, posts, sent: list, failed: list) -> threading.Thread:
    """Publish ``posts`` at RATE per second through the client, from a started thread; each post's id goes to
    ``sent`` once published, and to ``failed`` if the client reports it not delivered."""
    def feed() -> None:
        try:
            with StylestreamClient(settings) as client:  # closing raises for posts the broker did not take
                start = time.monotonic()
                for i, post in enumerate(posts):
                    time.sleep(max(0.0, start + i / RATE - time.monotonic()))
                    client.publish(post)
                    sent.append(post.post_id)
        except DeliveryError as failure:
            failed.extend(failure.failed)

    feeder = threading.Thread(target=feed, name="feed")
    feeder.start()
    return feeder


def _seed(data: Path, settings: Settings) -> None:
    """What an earlier run of ``up`` left: the serving pointer, in the data directory's Redis."""
    with EmbeddedStack(data_dir=data) as stack:
        redis.Redis.from_url(stack.redis_url).set(settings.redis.keys.model_current, "tiny-test")


def _start_up(tmp_path: Path, tiny_registry: Path, **popen) -> tuple[Up, Settings]:
    data, models = tmp_path / "data", tmp_path / "models"
    shutil.copytree(tiny_registry, models)
    base = _free_base(max(STAGE_PORT_OFFSET.values()) + 1)
    settings = Settings.named(partitions=2, data_dir=data, model_dir=models, metrics_port=base)
    _seed(data, settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STYLESTREAM_")}
    # This checkout's code, whatever the installed one: the process runs elsewhere, so as not to write there.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")]))
    env.update(STYLESTREAM_DATA_DIR=str(data), STYLESTREAM_MODEL_DIR=str(models), STYLESTREAM_PARTITIONS="2",
               STYLESTREAM_METRICS_PORT=str(base), STYLESTREAM_HINT_WAIT_MS="500", COLUMNS="200")
    up = Up(tmp_path, env, **popen)
    started = time.monotonic()
    found = up.wait_for(r"embedded broker (\S+), redis (redis://\S+)", timeout=60)
    settings = settings.replace(kafka=found.group(1), redis_url=found.group(2))
    ports = [settings.metrics.stage_port(stage) for stage in STAGES]
    wait_until(lambda: all(_ready(port) for port in ports), timeout=150, what="every stage ready")
    print(f"up ready in {time.monotonic() - started:.0f} s")
    return up, settings


def _kill(up: Up, command: str, server: str) -> float:
    """SIGKILL ``up``'s child ``command``; returns when ``up`` says ``server`` is back (the kill's time)."""
    killed_at = time.monotonic()
    os.kill(up.child(command), signal.SIGKILL)
    up.wait_for(rf"{server} is back on", timeout=60, after=killed_at)
    return killed_at


def _label_contents(settings: Settings, ids: set[str]) -> dict[str, set[bytes]]:
    records = _read_topic(settings, "labels", until=lambda rs: ids <= {r.key.decode() for r in rs}, timeout=60)
    contents = defaultdict(set)
    for record in records:
        contents[record.key.decode()].add(record.value)
    return contents


def test_up_keeps_posts_labels_pointer_and_trainer_state_when_broker_and_redis_are_killed(tmp_path, tiny_registry):
    up, settings = _start_up(tmp_path, tiny_registry)
    try:
        store = redis.Redis.from_url(settings.redis.url)
        trainer = TrainerState(store, prefix=settings.redis.prefix, model_current=settings.redis.keys.model_current,
                               max_posts=settings.trainer.max_posts, max_examples=settings.trainer.max_examples)
        next_run_at = trainer.status().next_run_at
        posts = [p for p, _ in generate_posts(load_ontology(), N_POSTS, seed=26, prefix="durable")]
        keys = [settings.redis.keys.label(p.post_id) for p in posts]

        def labelled() -> dict[str, bytes]:
            return {k: v for k, v in zip(keys, store.mget(keys)) if v is not None}

        sent: list[str] = []
        failed: list[str] = []
        feeder = _feed(settings, posts, sent, failed)
        wait_until(lambda: len(sent) >= N_POSTS // 3 and labelled(), timeout=90, what="a third sent, labels coming")
        broker_down = _kill(up, "tansu", "broker")
        wait_until(lambda: len(sent) >= 2 * N_POSTS // 3, timeout=90, what="two thirds of the posts sent")
        before_redis = labelled()
        redis_down = _kill(up, "redis-server", "redis")
        assert feeder.is_alive() and before_redis, "not mid-stream"
        feeder.join(timeout=120)
        assert not failed, f"posts the client could not deliver: {failed[:5]}"

        wait_until(lambda: len(labelled()) == N_POSTS, timeout=120, what="every post labelled")
        for stage, topics in STAGE_INPUTS.items():
            wait_until(lambda s=stage, t=topics: not committed_behind(settings, s, t), timeout=60,
                       what=f"{stage}'s committed offsets at the end of {topics}")
        caught_up = time.monotonic()

        final = labelled()
        assert {k: final[k] for k in before_redis} == before_redis, "labels written before Redis died changed"
        assert store.get(settings.redis.keys.model_current) == b"tiny-test"
        assert trainer.posts() == N_POSTS and trainer.status().next_run_at == next_run_at
        contents = _label_contents(settings, {p.post_id for p in posts})
        assert set(contents) == {p.post_id for p in posts}
        assert not [k for k, v in contents.items() if len(v) > 1], "posts labelled twice, differently"
        letters = [DeadLetter.model_validate_json(r.value)
                   for r in _read_topic(settings, "posts.dlq", until=lambda rs: False, timeout=1)]
        assert letters == [], letters[:3]

        outages = {"broker": up.lines_between(broker_down, redis_down), "redis": up.lines_between(redis_down, caught_up)}
        print({name: len(lines) for name, lines in outages.items()})
        for name, lines in outages.items():
            assert len(lines) <= MAX_OUTAGE_LINES, f"{len(lines)} lines while {name} was away:\n" + "\n".join(lines)
        metrics = up.metrics(settings)
        assert 'stylestream_server_restarts_total{server="broker"} 1.0' in metrics
        assert 'stylestream_server_restarts_total{server="redis"} 1.0' in metrics
    finally:
        up.stop()
        (tmp_path / "up.log").write_text(up.text())
        print(f"up's output: {tmp_path / 'up.log'}; its log lines:")  # shown when the test fails
        print("\n".join(line for _, line in up.lines if re.match(r"\d{4}-\d\d-\d\d ", line))[-6000:])
    assert "Traceback" not in up.text(), up.text()[-3000:]
