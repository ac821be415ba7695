"""Shared fixtures: the real embedded broker + Redis (or external ones), isolated settings per test."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator

import pytest

from streamcore.embedded import EmbeddedStack, stop_processes
from streamcore.kafka import ensure_topics
from streamcore.settings import Settings


@pytest.fixture(scope="session")
def infra() -> Iterator[tuple[str, str]]:
    """``(bootstrap, redis_url)``: external when STYLESTREAM_KAFKA and STYLESTREAM_REDIS_URL are set."""
    env = Settings()
    if env.kafka and env.redis_url:
        yield env.kafka, env.redis_url
        return
    with EmbeddedStack() as stack:
        yield env.kafka or stack.bootstrap, env.redis_url or stack.redis_url


@pytest.fixture
def make_settings(infra: tuple[str, str]) -> Callable[..., Settings]:
    """Settings on the test infrastructure with fresh topic, group and Redis key prefixes (no cross-talk)."""

    def make(**overrides) -> Settings:
        run = uuid.uuid4().hex[:8]
        values = {"kafka": infra[0], "redis_url": infra[1], "topic_prefix": f"t{run}.", "group_prefix": f"g{run}",
                  "redis_prefix": f"r{run}",
                  "metrics_port": 0, "hint_wait_ms": 3000, **overrides}
        settings = Settings(**values)
        ensure_topics(settings)
        return settings

    return make


class Workers:
    """Stage processes started the way operators start them: ``stylestream worker STAGE``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.procs: dict[str, list[subprocess.Popen]] = {}

    def start(self, stage: str, **env: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "worker", stage],
                                env={**self.settings.child_env(), **env})
        self.procs.setdefault(stage, []).append(proc)
        return proc

    def alive(self) -> bool:
        return all(p.poll() is None for ps in self.procs.values() for p in ps)

    def stop(self) -> None:
        stop_processes((p for ps in self.procs.values() for p in ps), timeout=20)


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

