"""SSRF-safe image download: resolve once, vet every address, connect only to a vetted one, one deadline.

The name in the URL is resolved once; every address must be globally routable, including IPv4 addresses
embedded in IPv6 forms (mapped, compatible, NAT64, 6to4, Teredo) that reach the same hosts. The HTTP
client then connects to the vetted address itself through a network backend that ignores what it is asked
to dial, so a second DNS answer (rebinding) can never move the request; the URL keeps its name, so the
Host header, TLS SNI and certificate check still use it. One monotonic deadline covers resolution,
connect, TLS, headers and body; the body is capped in bytes; redirects are not followed; nothing is taken
from the environment (no proxies, no ``.netrc``).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpcore

from streamcore.exceptions import BadInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def system_resolver(host: str, port: int) -> list[str]:
    """Addresses of ``host`` from the system resolver (numeric forms such as ``0177.1`` included)."""
    return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` must not be fetched from, or None when it is a public unicast address.

    An IPv6 address that embeds an IPv4 one (mapped, compatible, NAT64, 6to4, Teredo) is refused when the
    embedded address is; a mapped or NAT64 address of a public IPv4 host is that host and is allowed.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        for form, inner in embedded:
            reason = refusal(inner)
            if reason:
                return f"{address} is the {form} form of {reason}"
        if embedded and embedded[0][0] in ("IPv4-mapped", "NAT64"):
            return None
    if (address.is_multicast or address.is_unspecified or address.is_reserved or not address.is_global
            or getattr(address, "is_site_local", False)):  # fec0::/10: deprecated, still routed privately
        return f"non-public address {address}"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.ipv4_mapped:
        return [("IPv4-mapped", address.ipv4_mapped)]
    if address in _NAT64:
        return [("NAT64", low32)]
    if address.sixtofour:
        return [("6to4", address.sixtofour)]
    if address.teredo:
        return [("Teredo server", address.teredo[0]), ("Teredo client", address.teredo[1])]
    if address in _IPV4_COMPATIBLE and int(address) > 1:  # ::, ::1 are themselves, not IPv4 forms
        return [("IPv4-compatible", low32)]
    return []


@dataclass(frozen=True)
class FetchPolicy:
    """What a download may do.

    Args:
        timeout_s: one deadline for resolve + connect + TLS + response.
        max_bytes: body cap (larger bodies are refused as ``image_too_large``).
        allow_http: accept plain ``http`` URLs (the contract says https).
        ssl_context: trust roots for https; the system's by default.
    """

    timeout_s: float = 5.0
    max_bytes: int = 8 * 1024 * 1024
    allow_http: bool = False
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False)


def fetch_url(url: str, policy: FetchPolicy, *, resolve: Resolver = system_resolver,
              network: httpcore.NetworkBackend | None = None) -> bytes:
    """Download ``url`` under ``policy``.

    Args:
        resolve: name → addresses; called exactly once per download.
        network: the backend that dials the vetted addresses (tests give one that records or redirects).

    Raises:
        BadInput: ``url_refused`` (scheme, host or address not allowed), ``url_unreachable`` (resolution,
            connection, HTTP status, deadline), ``image_too_large`` (body over ``max_bytes``).
    """
    deadline = time.monotonic() + policy.timeout_s
    host, port = _check_url(url, policy)
    addresses = _vetted(host, port, resolve, deadline)
    backend = _PinnedBackend(addresses, deadline, network or httpcore.SyncBackend())
    timeout = {"connect": policy.timeout_s, "read": policy.timeout_s, "write": policy.timeout_s,
               "pool": policy.timeout_s}
    try:
        with (httpcore.ConnectionPool(ssl_context=policy.ssl_context or _default_tls(),
                                      network_backend=backend, max_connections=1, retries=0) as pool,
              pool.stream("GET", url, headers=[(b"Accept", b"image/*"), (b"User-Agent", b"stylestream")],
                          extensions={"timeout": timeout}) as response):
            if response.status != 200:  # redirects included: their target was never vetted
                raise BadInput("url_unreachable", f"HTTP {response.status} for {url[:200]!r}")
            return _read_capped(response, policy.max_bytes)
    except httpcore.TimeoutException:
        raise BadInput("url_unreachable", f"no complete response within {policy.timeout_s:g}s from {url[:200]!r}") from None
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
        raise BadInput("url_unreachable", f"{type(exc).__name__}: {exc}") from None


@functools.cache
def _default_tls() -> ssl.SSLContext:
    """The system's TLS context, built once: creating one reloads the CA bundle from disk."""
    return ssl.create_default_context()


def _check_url(url: str, policy: FetchPolicy) -> tuple[str, int]:
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:  # a broken IPv6 literal, a port out of range
        raise BadInput("url_refused", f"malformed URL {url[:200]!r}: {exc}") from None
    schemes = ("https", "http") if policy.allow_http else ("https",)
    if parts.scheme not in schemes or not host:
        raise BadInput("url_refused", f"only {'/'.join(schemes)} URLs with a host are fetched, got {url[:200]!r}")
    if parts.username is not None or parts.password is not None:
        raise BadInput("url_refused", "URLs with credentials are not fetched")
    return host, port or (443 if parts.scheme == "https" else 80)


def _vetted(host: str, port: int, resolve: Resolver, deadline: float) -> list[IPAddress]:
    """The addresses of ``host``, all public, resolved once within the deadline."""
    try:
        literal = ipaddress.ip_address(host.split("%", 1)[0])  # a zone id (fe80::1%eth0) stays link-local
    except ValueError:
        literal = None
    if literal is not None:
        found = [str(literal)]
    else:
        # The system resolver has no timeout of its own: wait for it on a helper thread, at most until the
        # deadline (a hung lookup then finishes in the background; the download is already refused).
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="resolve")
        try:
            found = pool.submit(resolve, host, port).result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            raise BadInput("url_unreachable", f"resolving {host!r} took longer than the deadline") from None
        except (OSError, UnicodeError) as exc:
            raise BadInput("url_unreachable", f"cannot resolve {host!r}: {exc}") from None
        finally:
            pool.shutdown(wait=False)
    try:
        addresses = list(dict.fromkeys(ipaddress.ip_address(a.split("%", 1)[0]) for a in found))
    except ValueError as exc:
        raise BadInput("url_refused", f"{host!r} resolved to an unusable address: {exc}") from None
    if not addresses:
        raise BadInput("url_unreachable", f"{host!r} has no addresses")
    for address in addresses:
        reason = refusal(address)
        if reason:  # one bad answer refuses the name: the attacker may control the order of answers
            raise BadInput("url_refused", f"{host!r} resolves to {reason}")
    return addresses


def _read_capped(response: Any, max_bytes: int) -> bytes:
    for name, value in response.headers:
        if name.lower() == b"content-length" and value.isdigit() and int(value) > max_bytes:
            raise BadInput("image_too_large", f"download is {int(value)} bytes, limit {max_bytes}")
    chunks, size = [], 0
    for chunk in response.iter_stream():
        size += len(chunk)
        if size > max_bytes:
            raise BadInput("image_too_large", f"download exceeds {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class _PinnedBackend(httpcore.NetworkBackend):
    """Dials only the vetted addresses, whatever host it is asked for; every stream obeys the deadline."""

    def __init__(self, addresses: list[IPAddress], deadline: float, inner: httpcore.NetworkBackend) -> None:
        self._addresses = addresses
        self._deadline = deadline
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        error: Exception = httpcore.ConnectError(f"no address to connect to for {host}")
        for address in self._addresses:  # the first that answers, as a browser would
            try:
                stream = self._inner.connect_tcp(str(address), port, timeout=_left(self._deadline, timeout,
                                                 httpcore.ConnectTimeout), local_address=local_address,
                                                 socket_options=socket_options)
                return _DeadlineStream(stream, self._deadline)
            except httpcore.ConnectError as exc:
                error = exc
        raise error

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not fetched from")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    """Every read, write and TLS handshake waits at most until the download's deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout=_left(self._deadline, timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout=_left(self._deadline, timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        tls = self._inner.start_tls(ssl_context, server_hostname=server_hostname,
                                    timeout=_left(self._deadline, timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(tls, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _left(deadline: float, timeout: float | None, error: type[Exception]) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the download's deadline has passed")
    return left if timeout is None else min(left, timeout)
