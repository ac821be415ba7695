"""SSRF-safe downloads: every non-public address form refused, one resolution, one deadline, a byte cap."""

from __future__ import annotations

import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpcore
import pytest

from streamcore.exceptions import BadInput
from streamcore.fetch import FetchPolicy, fetch_url
from streamcore.schemas import ImageSource
from streamcore.settings import Settings
from streamcore.sources import load_bytes

PUBLIC = "93.184.215.14"  # a globally routable address; tests never really reach it
BODY = b"\x89PNG not really, but bytes" * 10


class Recording(httpcore.NetworkBackend):
    """Records every address dialled; dials ``redirect[address]`` instead when given (a stub network)."""

    def __init__(self, redirect: dict[str, tuple[str, int]] | None = None) -> None:
        self.dialled: list[tuple[str, int]] = []
        self._redirect = redirect or {}
        self._real = httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.dialled.append((host, port))
        host, port = self._redirect.get(host, (host, port))
        return self._real.connect_tcp(host, port, timeout=timeout, local_address=local_address,
                                      socket_options=socket_options)


def _code(fn: Callable, *args, **kwargs) -> BadInput:
    with pytest.raises(BadInput) as info:
        fn(*args, **kwargs)
    return info.value


# -- the SSRF table --------------------------------------------------------------------------------

LITERAL_URLS = [
    "https://127.0.0.1/a.jpg", "https://2130706433/a.jpg", "https://0177.0.0.1/a.jpg", "https://0x7f.1/a.jpg",
    "https://127.1/a.jpg", "https://0.0.0.0/a.jpg", "https://0/a.jpg", "https://[::1]/a.jpg", "https://[::]/a.jpg",
    "https://[::ffff:127.0.0.1]/a.jpg", "https://[::ffff:7f00:1]/a.jpg", "https://[::127.0.0.1]/a.jpg",
    "https://[64:ff9b::127.0.0.1]/a.jpg", "https://[64:ff9b::a9fe:a9fe]/a.jpg", "https://[64:ff9b:1::7f00:1]/a.jpg",
    "https://[2002:7f00:1::1]/a.jpg", "https://[2002:a9fe:a9fe::]/a.jpg", "https://[2002:0a00:0001::1]/a.jpg",
    "https://[2001:0:4136:e378:8000:63bf:80ff:fffe]/a.jpg",  # Teredo, client 127.0.0.1
    "https://[2001:0:5db8:d822:8000:63bf:f7f7:f7f7]/a.jpg",  # Teredo with a public client: still 2001::/32
    "https://10.0.0.7/a.jpg", "https://172.16.5.4/a.jpg", "https://192.168.1.1/a.jpg", "https://169.254.169.254/latest",
    "https://100.64.0.1/a.jpg", "https://198.18.0.1/a.jpg", "https://192.0.2.1/a.jpg", "https://224.0.0.1/a.jpg",
    "https://255.255.255.255/a.jpg", "https://[fe80::1]/a.jpg", "https://[fe80::1%25eth0]/a.jpg",
    "https://[fc00::1]/a.jpg", "https://[fd12:3456::1]/a.jpg", "https://[fec0::1]/a.jpg", "https://[ff02::1]/a.jpg",
    "https://[2001:db8::1]/a.jpg", "https://localhost/a.png", "https://localhost:6379/a.png",
    # not https, no host, credentials, malformed
    "http://example.com/a.jpg", "ftp://example.com/a.jpg", "file:///etc/passwd", "gopher://127.0.0.1:6379/_",
    "https:///a.jpg", "https://user:pw@example.com/a.jpg", "https://[::1/a.jpg", "https://example.com:99999/a.jpg",
]


@pytest.mark.parametrize("url", LITERAL_URLS)
def test_literal_and_scheme_refusals_dial_nothing(url):
    network = Recording()
    error = _code(fetch_url, url, FetchPolicy(timeout_s=2), network=network)
    assert error.code == "url_refused", error
    assert network.dialled == []


RESOLVED = ["127.0.0.1", "127.255.255.254", "0.0.0.0", "::1", "::ffff:127.0.0.1", "::127.0.0.1", "64:ff9b::7f00:1",
            "2002:7f00:1::", "2001:0:4136:e378:8000:63bf:80ff:fffe", "10.1.2.3", "169.254.169.254", "fe80::1%2",
            "fd00::1", "::ffff:169.254.169.254", "64:ff9b::a00:1", "2002:c0a8:101::1"]


@pytest.mark.parametrize("address", RESOLVED)
def test_names_resolving_to_non_public_addresses_are_refused(address):
    network = Recording()
    error = _code(fetch_url, "https://images.example/a.jpg", FetchPolicy(timeout_s=2),
                  resolve=lambda host, port: [address], network=network)
    assert error.code == "url_refused" and "images.example" in error.detail
    assert network.dialled == []


def test_one_private_answer_among_public_ones_refuses_the_name():
    error = _code(fetch_url, "https://images.example/a.jpg", FetchPolicy(timeout_s=2),
                  resolve=lambda host, port: [PUBLIC, "10.0.0.1"], network=Recording())
    assert error.code == "url_refused" and "10.0.0.1" in error.detail


def test_existing_settings_path_refuses_private_urls_and_plain_http():
    for url in ("https://127.0.0.1:6379/x.jpg", "https://[::ffff:10.0.0.1]/a.png", "http://example.com/a.jpg"):
        assert _code(load_bytes, ImageSource(url=url), Settings()).code == "url_refused"


# -- local servers -----------------------------------------------------------------------------------

class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def serve(behaviour: Callable[[socket.socket, dict], None], context: ssl.SSLContext | None = None) -> Iterator[dict]:
    """A loopback TCP server running ``behaviour(conn, state)`` per connection; ``state`` records what it saw."""
    state: dict = {"accepted": 0, "requests": [], "sni": []}

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            state["accepted"] += 1
            conn = self.request
            try:
                if context is not None:
                    conn = context.wrap_socket(conn, server_side=True)
                behaviour(conn, state)
            except (OSError, ssl.SSLError):
                pass  # the client gave up: that is what several tests provoke

    server = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    state["port"] = server.server_address[1]
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _read_request(conn: socket.socket, state: dict) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    state["requests"].append(data.decode("latin-1"))


def ok(conn: socket.socket, state: dict) -> None:
    _read_request(conn, state)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(BODY) + BODY)


def drip(conn: socket.socket, state: dict) -> None:
    """Headers at once, then one body byte every 100 ms: 100 s for the whole body without a deadline."""
    _read_request(conn, state)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(1000):
        conn.sendall(b"x")
        time.sleep(0.1)  # the slow server under test, not synchronisation


def stall(conn: socket.socket, state: dict) -> None:
    """Accepts, reads the request, never answers (until the client hangs up)."""
    _read_request(conn, state)
    conn.recv(1)


def _pinned(state: dict) -> tuple[Callable, Recording]:
    """A resolver answering the public address, and a network that delivers it to the local server."""
    return (lambda host, port: [PUBLIC]), Recording({PUBLIC: ("127.0.0.1", state["port"])})


def test_request_goes_to_the_vetted_address_with_the_original_host_header():
    with serve(ok) as state:
        resolve, network = _pinned(state)
        policy = FetchPolicy(timeout_s=5, allow_http=True)
        assert fetch_url(f"http://images.example:{state['port']}/a.png", policy, resolve=resolve,
                         network=network) == BODY
    assert network.dialled == [(PUBLIC, state["port"])]
    assert f"Host: images.example:{state['port']}" in state["requests"][0]


def test_dns_rebinding_never_reaches_loopback():
    calls: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:  # public first, loopback from then on
        calls.append(host)
        return [PUBLIC] if len(calls) == 1 else ["127.0.0.1"]

    with serve(ok) as state:
        network = Recording()
        error = _code(fetch_url, f"https://rebind.example:{state['port']}/a.png", FetchPolicy(timeout_s=1.5),
                      resolve=rebinding, network=network)
        assert error.code == "url_unreachable"  # the public address is not reachable from here
        assert state["accepted"] == 0  # ... and nothing ever connected to the loopback server
    assert calls == ["rebind.example"]
    assert {host for host, _ in network.dialled} == {PUBLIC}


@pytest.mark.parametrize("behaviour", [drip, stall], ids=["drip", "stall"])
def test_slow_servers_are_cut_at_the_total_deadline(behaviour):
    with serve(behaviour) as state:
        resolve, network = _pinned(state)
        started = time.monotonic()
        error = _code(fetch_url, f"http://slow.example:{state['port']}/a.png",
                      FetchPolicy(timeout_s=1.0, allow_http=True), resolve=resolve, network=network)
        elapsed = time.monotonic() - started
    assert error.code == "url_unreachable" and "1s" in error.detail
    # Without the total deadline the drip takes 100 s and each stall wait 1 s per phase, without end.
    assert elapsed < 3.0, elapsed


def test_body_over_the_cap_is_refused():
    with serve(ok) as state:
        resolve, network = _pinned(state)
        error = _code(fetch_url, f"http://big.example:{state['port']}/a.png",
                      FetchPolicy(timeout_s=5, allow_http=True, max_bytes=len(BODY) - 1), resolve=resolve,
                      network=network)
    assert error.code == "image_too_large"


def test_redirects_are_not_followed():
    def redirect(conn: socket.socket, state: dict) -> None:
        _read_request(conn, state)
        conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:6379/\r\nContent-Length: 0\r\n\r\n")

    with serve(redirect) as state:
        resolve, network = _pinned(state)
        error = _code(fetch_url, f"http://r.example:{state['port']}/a.png", FetchPolicy(timeout_s=5, allow_http=True),
                      resolve=resolve, network=network)
    assert error.code == "url_unreachable" and "302" in error.detail
    assert len(network.dialled) == 1


# -- TLS: SNI and certificate checked against the URL's name while the socket goes to the pinned address

@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a self-signed certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=images.example", "-addext", "subjectAltName=DNS:images.example",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return str(cert), str(key)


def test_https_keeps_sni_and_verifies_the_name(certificate):
    cert, key = certificate
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    seen_sni: list[str | None] = []
    server_context.sni_callback = lambda sock, name, ctx: seen_sni.append(name)
    client_context = ssl.create_default_context(cafile=cert)

    with serve(ok, context=server_context) as state:
        resolve, network = _pinned(state)
        policy = FetchPolicy(timeout_s=5, ssl_context=client_context)
        assert fetch_url(f"https://images.example:{state['port']}/a.png", policy, resolve=resolve,
                         network=network) == BODY
        # The same server under a name its certificate does not carry: the check uses the URL's name.
        error = _code(fetch_url, f"https://other.example:{state['port']}/a.png", policy, resolve=resolve,
                      network=network)
    assert seen_sni[0] == "images.example"
    assert {host for host, _ in network.dialled} == {PUBLIC}
    assert error.code == "url_unreachable" and "certificate" in error.detail.lower()


def test_proxies_and_netrc_from_the_environment_are_ignored(monkeypatch, tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine images.example login user password from-netrc\n")
    monkeypatch.setenv("NETRC", str(netrc))
    with serve(ok) as proxy, serve(ok) as state:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy['port']}")
        resolve, network = _pinned(state)
        assert fetch_url(f"http://images.example:{state['port']}/a.png", FetchPolicy(timeout_s=5, allow_http=True),
                         resolve=resolve, network=network) == BODY
        assert proxy["accepted"] == 0
    assert "authorization" not in state["requests"][0].lower()


def test_a_dripped_tls_handshake_is_cut_at_the_deadline():
    def slow_hello(conn: socket.socket, state: dict) -> None:
        # A TLS handshake record announcing 16 kB, then one byte every 50 ms: each read of the client's
        # handshake succeeds within any per-call timeout; only a total deadline ends it.
        conn.sendall(b"\x16\x03\x03\x40\x00")
        for _ in range(2000):
            conn.sendall(b"\x00")
            time.sleep(0.05)  # the slow server under test, not synchronisation

    with serve(slow_hello) as state:
        resolve, network = _pinned(state)
        started = time.monotonic()
        error = _code(fetch_url, f"https://slow.example:{state['port']}/a.png", FetchPolicy(timeout_s=1.0),
                      resolve=resolve, network=network)
        elapsed = time.monotonic() - started
    assert error.code == "url_unreachable" and "1s" in error.detail, error
    assert elapsed < 3.0, elapsed
