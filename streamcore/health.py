"""One HTTP port per worker: ``/metrics`` (Prometheus), ``/healthz`` (liveness), ``/readyz`` (readiness).

Liveness means "the run loop still turns": the loop calls :meth:`Heartbeat.beat` every round and the
probe fails once the last beat is older than ``max_age_s`` (a wedged loop gets restarted). Readiness is a
callable owned by the stage (model loaded, consumer joined); it must be cheap and thread-safe, since it
runs on the server thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder


class Heartbeat:
    """Time of the last loop round; construction counts as a beat so startup has ``max_age_s`` of grace."""

    def __init__(self, max_age_s: float = 60.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        if max_age_s <= 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        self.max_age_s = max_age_s
        self._clock = clock
        self._last = clock()

    def beat(self) -> None:
        """Record that the loop completed a round."""
        self._last = self._clock()

    def age(self) -> float:
        """Seconds since the last beat."""
        return self._clock() - self._last

    def alive(self) -> bool:
        """True while the last beat is at most ``max_age_s`` old."""
        return self.age() <= self.max_age_s


class HealthServer:
    """Serves a registry and the two probes from a daemon thread.

    Args:
        registry: the worker's metrics registry.
        heartbeat: beaten by the run loop; drives ``/healthz``.
        ready: returns True when the worker should receive traffic; drives ``/readyz``. An exception
            counts as not ready.
        problem: returns why a worker that is otherwise ready cannot make progress (stuck retrying,
            topics missing), or None; a problem makes ``/readyz`` answer 503 with it.
    """

    def __init__(self, registry: CollectorRegistry, *, heartbeat: Heartbeat, ready: Callable[[], bool],
                 problem: Callable[[], str | None] = lambda: None) -> None:
        self.registry = registry
        self.heartbeat = heartbeat
        self.ready = ready
        self.problem = problem
        self._server: ThreadingHTTPServer | None = None

    def start(self, port: int, host: str = "127.0.0.1") -> int:
        """Listen on ``host:port`` (0 = ephemeral) in a daemon thread; returns the bound port."""
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        server = self._server  # short poll: stop() returns within 0.1 s
        threading.Thread(target=lambda: server.serve_forever(poll_interval=0.1), name="health-http", daemon=True).start()
        return self._server.server_address[1]

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def is_ready(self) -> tuple[bool, str]:
        """Readiness and a one-line reason."""
        try:
            if not self.ready():
                return False, "not ready"
            problem = self.problem()
            return (False, problem) if problem else (True, "ready")
        except Exception as exc:  # noqa: BLE001 - a failing check means "not ready", with the reason shown
            return False, f"readiness check failed: {exc!r}"


def _handler(owner: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept"))
                self._reply(200, encoder(owner.registry), content_type)
            elif path == "/healthz":
                age = owner.heartbeat.age()
                ok = owner.heartbeat.alive()
                self._reply(200 if ok else 503, f"{'ok' if ok else 'stale'}: last loop round {age:.1f}s ago\n")
            elif path == "/readyz":
                ok, reason = owner.is_ready()
                self._reply(200 if ok else 503, reason + "\n")
            else:
                self._reply(404, "not found: try /metrics, /healthz, /readyz\n")

        def _reply(self, status: int, body: bytes | str, content_type: str = "text/plain; charset=utf-8") -> None:
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # scrapes come every few seconds: stay quiet
            pass

    return Handler
