"""The page's defences: a strict Content-Security-Policy on every response, sign-in by token, CSRF on writes.

* **CSP.** Scripts, styles and images only from the page's own origin, no inline script or style, no
  framing: a caption that slipped into markup still could not run.
* **Sign-in.** A person gives the configured token once (``POST /api/session``); the page then holds an
  HttpOnly cookie derived from it (an HMAC, never the token itself). Without a configured token every
  write is refused: the page is read-only.
* **CSRF.** Synchroniser token: the server sets a random HttpOnly ``SameSite=Strict`` cookie and hands its
  value to the page's own script (``GET /api/session``, readable only same-origin); every write must echo
  it in ``X-CSRF-Token``, send JSON, and come from the page's origin when the browser names one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from pydantic import SecretStr
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
CSRF_COOKIE, AUTH_COOKIE, CSRF_HEADER = "ss_csrf", "ss_auth", "x-csrf-token"


class SecurityHeaders:
    """ASGI middleware: the headers above on every HTTP response, streams included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def new_csrf() -> str:
    return secrets.token_urlsafe(32)


def _utf8(text: str) -> bytes:
    """``text`` as UTF-8, a lone surrogate (JSON's ``"\\ud800"``, an undecodable byte in the environment) as its
    own three bytes instead of an error: still one byte string per text, which no valid text's UTF-8 holds."""
    return text.encode(errors="surrogatepass")


def session_value(token: SecretStr) -> str:
    """The sign-in cookie's value: changes when the token does, and does not reveal it."""
    return hmac.new(_utf8(token.get_secret_value()), b"stylestream-ui-session", hashlib.sha256).hexdigest()


def token_matches(given: str, token: SecretStr | None) -> bool:
    """Whether ``given`` is the configured token, compared in constant time; any text is an answer, never an
    error (a lone surrogate matches nothing but the same text)."""
    secret = token.get_secret_value() if token is not None else ""
    return bool(given and secret.strip()) and hmac.compare_digest(_utf8(given), _utf8(secret))


def signed_in(request: Request, token: SecretStr | None) -> bool:
    cookie = request.cookies.get(AUTH_COOKIE, "")
    return token is not None and hmac.compare_digest(cookie.encode(), session_value(token).encode())


def write_refusal(request: Request) -> str | None:
    """Why a write is refused on CSRF grounds, or ``None`` when it may proceed."""
    cookie, header = request.cookies.get(CSRF_COOKIE, ""), request.headers.get(CSRF_HEADER, "")
    if not cookie or not header or not hmac.compare_digest(cookie.encode(), header.encode()):
        return "missing or wrong CSRF token"
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return "writes take application/json"
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
        return "cross-origin write"
    return None
