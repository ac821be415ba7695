"""Shared fixtures: the real embedded broker + Redis (or external ones), isolated settings per test."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import pytest

from streamcore.embedded import EmbeddedStack, stop_processes
from streamcore.kafka import ensure_topics
from streamcore.sections import STAGE_PORT_OFFSET
from streamcore.settings import Settings
from tests.support import wait_until

#: Input topics of each stage: a group is "ready" once every partition of these is owned by a member.
STAGE_INPUTS = {"text": ("posts",), "classify": ("posts", "hints"), "trainer": ("posts", "feedback")}


@pytest.fixture(scope="session")
def infra() -> Iterator[tuple[str, str]]:
    """``(bootstrap, redis_url)``: external when STYLESTREAM_KAFKA and STYLESTREAM_REDIS_URL are set."""
    env = Settings()
    if env.kafka.bootstrap and env.redis.url:
        yield env.kafka.bootstrap, env.redis.url
        return
    with EmbeddedStack() as stack:
        yield env.kafka.bootstrap or stack.bootstrap, env.redis.url or stack.redis_url


@pytest.fixture(scope="session")
def tiny_registry(tmp_path_factory: pytest.TempPathFactory):
    """A registry serving an untrained tiny model: the stream tests are about delivery, not labels, and the
    packaged real-photo model costs ~50 times the CPU per image (tests that mean the default name a
    ``model_dir`` of their own)."""
    from tests.support import publish_tiny

    path = tmp_path_factory.mktemp("tiny-registry")
    publish_tiny(path, "tiny-test")
    return path


@pytest.fixture
def make_settings(infra: tuple[str, str], tiny_registry, tmp_path_factory) -> Callable[..., Settings]:
    """Settings on the test infrastructure with fresh topic, group and Redis key prefixes (no cross-talk), and a
    registry of their own holding the tiny model (unless the test names one)."""

    def make(**overrides) -> Settings:
        if "model_dir" not in overrides:
            overrides["model_dir"] = tmp_path_factory.mktemp("registry") / "models"
            shutil.copytree(tiny_registry, overrides["model_dir"])
        run = uuid.uuid4().hex[:8]
        values = {"kafka": infra[0], "redis_url": infra[1], "topic_prefix": f"t{run}.", "group_prefix": f"g{run}",
                  "redis_prefix": f"r{run}",
                  "metrics_port": 0, "hint_wait_ms": 3000, **overrides}
        settings = Settings.named(**values)
        ensure_topics(settings)
        return settings

    return make


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


class Workers:
    """Stage processes started the way operators start them: ``stylestream worker STAGE``.

    Each process gets its own health port, so a test can wait for the state it needs (``wait_ready``)
    instead of assuming how fast a worker starts on this machine (CUDA init, a loaded CI box).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.procs: dict[str, list[subprocess.Popen]] = {}
        self.ports: dict[subprocess.Popen, int] = {}

    def start(self, stage: str, **env: str) -> subprocess.Popen:
        env = {**self.settings.child_env(), **env}
        port = self.settings.metrics.stage_port(stage)
        if not port:  # settings asked for an ephemeral port: pick one we can find again
            port = _free_port()
            env["STYLESTREAM_METRICS_PORT"] = str(port - STAGE_PORT_OFFSET[stage])
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "worker", stage], env=env)
        self.procs.setdefault(stage, []).append(proc)
        self.ports[proc] = port
        return proc

    def metrics(self, proc: subprocess.Popen) -> str:
        """The process's ``/metrics`` text ('' while it does not answer)."""
        return _scrape(self.ports[proc], "/metrics")[1]

    def wait_ready(self, timeout: float = 180) -> None:
        """Wait until every live process answers ``/readyz`` and each stage's members own all input partitions."""
        def ready() -> bool:
            for stage, procs in self.procs.items():
                live = [p for p in procs if p.poll() is None]
                assert live, f"every {stage} worker exited"
                if any(_scrape(self.ports[p], "/readyz")[0] != 200 for p in live):
                    return False
                for topic in STAGE_INPUTS[stage]:
                    owned = sum(_assigned(self.metrics(p), stage, self.settings.kafka.topic(topic)) for p in live)
                    if owned != self.settings.kafka.partitions:
                        return False
            return True

        wait_until(ready, timeout=timeout, what="workers ready with every input partition assigned")

    def alive(self) -> bool:
        return all(p.poll() is None for ps in self.procs.values() for p in ps)

    def stop(self) -> None:
        stop_processes((p for ps in self.procs.values() for p in ps), timeout=20)


def _assigned(metrics_text: str, stage: str, topic: str) -> int:
    pattern = rf'^stylestream_assigned_partitions\{{stage="{re.escape(stage)}",topic="{re.escape(topic)}"\}} ([0-9.e+]+)$'
    return sum(int(float(m.group(1))) for m in re.finditer(pattern, metrics_text, re.MULTILINE))


@pytest.fixture
def workers() -> Iterator[Callable[[Settings], Workers]]:
    """Factory of worker process groups; every process is stopped at teardown, pass or fail."""
    started: list[Workers] = []

    def make(settings: Settings) -> Workers:
        group = Workers(settings)
        started.append(group)
        return group

    yield make
    for group in started:
        group.stop()

