"""The worker HTTP endpoint: metrics exposition, liveness from a heartbeat, readiness from a callable."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from streamcore.health import HealthServer, Heartbeat


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _get(port: int, path: str, accept: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


@pytest.fixture
def served() -> Iterator[tuple[int, FakeClock, Heartbeat, dict]]:
    registry = CollectorRegistry()
    Counter("demo_events_total", "Events", registry=registry).inc(3)
    clock = FakeClock()
    heartbeat = Heartbeat(10.0, clock=clock)
    state: dict = {"ready": False}

    def ready() -> bool:
        if isinstance(state["ready"], Exception):
            raise state["ready"]
        return state["ready"]

    server = HealthServer(registry, heartbeat=heartbeat, ready=ready)
    port = server.start(0, "127.0.0.1")
    yield port, clock, heartbeat, state
    server.stop()


def test_metrics_are_the_registry_in_text_format(served):
    port, *_ = served
    status, content_type, body = _get(port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    assert "demo_events_total 3.0" in body


def test_metrics_negotiate_openmetrics(served):
    port, *_ = served
    status, content_type, body = _get(port, "/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


def test_liveness_follows_the_heartbeat(served):
    port, clock, heartbeat, _ = served
    assert _get(port, "/healthz")[0] == 200            # construction counts as a beat (startup grace)
    clock.now += 10.5
    status, _, body = _get(port, "/healthz")
    assert status == 503 and "10.5s" in body
    heartbeat.beat()
    assert _get(port, "/healthz")[0] == 200


def test_readiness_follows_the_callable(served):
    port, _, _, state = served
    assert _get(port, "/readyz")[:1] == (503,)
    state["ready"] = True
    assert _get(port, "/readyz")[0] == 200


def test_a_failing_readiness_check_is_not_ready_and_says_why(served):
    port, _, _, state = served
    state["ready"] = RuntimeError("consumer gone")
    status, _, body = _get(port, "/readyz")
    assert status == 503 and "consumer gone" in body


def test_unknown_path_is_404(served):
    port, *_ = served
    assert _get(port, "/nope")[0] == 404


def test_stop_releases_the_port():
    server = HealthServer(CollectorRegistry(), heartbeat=Heartbeat(), ready=lambda: True)
    port = server.start(0, "127.0.0.1")
    server.stop()
    again = HealthServer(CollectorRegistry(), heartbeat=Heartbeat(), ready=lambda: True)
    assert again.start(port, "127.0.0.1") == port
    again.stop()


def test_heartbeat_rejects_a_non_positive_age():
    with pytest.raises(ValueError, match="got 0"):
        Heartbeat(0)


def _connects(host: str, port: int) -> bool:
    import socket

    try:
        socket.create_connection((host, port), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("host, reaches_other", [("127.0.0.1", False), ("0.0.0.0", True)])
def test_stage_binds_the_configured_interface(host, reaches_other):
    """Loopback by default; 0.0.0.0 (the container images) answers on every address, here 127.0.0.2."""
    from streamcore.settings import Settings
    from workers.text import TextStage

    settings = Settings() if host == "127.0.0.1" else Settings.named(health_host=host)
    assert settings.metrics.health_host == host
    port = TextStage(settings).serve_health(0)
    assert _connects("127.0.0.1", port)
    assert _connects("127.0.0.2", port) is reaches_other


def test_a_port_in_use_is_a_stylestream_error_naming_the_setting_to_change():
    """Two workers of one stage on one host: the second gets one line saying what to set, not an OSError."""
    from streamcore.exceptions import StylestreamError
    from streamcore.health import PortUnavailable

    first = HealthServer(CollectorRegistry(), heartbeat=Heartbeat(), ready=lambda: True)
    port = first.start(0, "127.0.0.1")
    try:
        second = HealthServer(CollectorRegistry(), heartbeat=Heartbeat(), ready=lambda: True)
        with pytest.raises(PortUnavailable) as refused:
            second.start(port, "127.0.0.1")
    finally:
        first.stop()
    assert isinstance(refused.value, StylestreamError)
    message = str(refused.value)
    assert f"127.0.0.1:{port}" in message and "in use" in message
    assert "STYLESTREAM_METRICS_PORT" in message and "0 for free ports" in message
