"""One HTTP port per worker: ``/metrics`` (Prometheus), ``/healthz`` (liveness), ``/readyz`` (readiness).

Liveness means "the run loop still turns": the loop calls :meth:`Heartbeat.beat` every round and the
probe fails once the last beat is older than ``max_age_s`` (a wedged loop gets restarted). Readiness is a
callable owned by the stage (model loaded, consumer joined); it must be cheap and thread-safe, since it
runs on the server thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from streamcore.exceptions import StylestreamError
from streamcore.sections import MetricsSettings

log = logging.getLogger(__name__)


class PortUnavailable(StylestreamError):
    """The health port cannot be listened on (another worker has it, a port below 1024, an unknown host)."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        names = MetricsSettings.variables()
        super().__init__(
            f"cannot serve /metrics on {host}:{port}: {reason}; set {names['port']} to another base port (each "
            f"stage adds its offset) or to 0 for free ports, or {names['health_host']} to another interface")
        self.host, self.port = host, port


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
        """Listen on ``host:port`` (0 = ephemeral) in a daemon thread; returns the bound port.

        Raises :class:`PortUnavailable` when the port is taken or cannot be bound."""
        try:
            self._server = ThreadingHTTPServer((host, port), _handler(self))
        except (OSError, OverflowError) as exc:  # EADDRINUSE, EACCES, an unknown host; a port over 65535
            raise PortUnavailable(host, port, getattr(exc, "strerror", None) or str(exc)) from None
        self._server.daemon_threads = True
        server = self._server  # short poll: stop() returns within 0.1 s
        threading.Thread(target=lambda: server.serve_forever(poll_interval=0.1), name="health-http", daemon=True).start()
        bound = self._server.server_address[1]
        # A port 0 picked is found here (STYLESTREAM_METRICS_PORT=0 runs several workers of a stage on one host).
        log.log(logging.INFO if port == 0 else logging.DEBUG, "/metrics, /healthz and /readyz on %s:%d", host, bound)
        return bound

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
