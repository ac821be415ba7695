"""The review page's JSON API as a client meets it: whatever a request holds, the answer is a 4xx with a JSON error,
never a 500 (the routes on a Starlette app with stand-ins for Redis, Kafka and the recommender)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.middleware import Middleware

from serving.ontology import load_ontology
from workers.ui import routes, security

TOKEN = SecretStr("s3cret")
SIGNED_IN = f"{security.CSRF_COOKIE}=c5rf; {security.AUTH_COOKIE}={security.session_value(TOKEN)}"
BIG = b'{"token": "' + b"x" * (routes.MAX_BODY + 1) + b'"}'


class _Recommendations:
    async def answer(self, *, user: str, like: str, k: int) -> dict:
        return {"user": user, "like": like, "k": k}


class _Publisher:
    async def send(self, correction) -> dict:
        return {"topic": "feedback", "partition": 0, "offset": 7}


@pytest.fixture
def app(monkeypatch) -> Starlette:
    async def corrections_multi(settings, redis):
        return False

    monkeypatch.setattr(routes, "corrections_multi", corrections_multi)
    app = Starlette(routes=routes.ROUTES, middleware=[Middleware(security.SecurityHeaders)])
    app.state.ui = SimpleNamespace(settings=SimpleNamespace(ui=SimpleNamespace(token=TOKEN)), redis=None,
                                   publisher=_Publisher(), ontology=load_ontology(), terms={})
    app.state.recommendations = _Recommendations()
    return app


def _call(app: Starlette, method: str, target: str, body: bytes | list[bytes] = b"",
          headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """One request through the whole app: its status and JSON answer (an exception in a route propagates)."""
    path, _, query = target.partition("?")
    headers = {"host": "127.0.0.1", "content-type": "application/json", security.CSRF_HEADER: "c5rf",
               "cookie": SIGNED_IN, **(headers or {})}
    chunks = list(body) if isinstance(body, list) else [body]
    answer: dict = {"body": b""}

    async def receive() -> dict:
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": query.encode(), "scheme": "http", "http_version": "1.1", "server": ("127.0.0.1", 80),
             "client": ("127.0.0.1", 5000), "headers": [(k.encode(), v.encode("latin-1")) for k, v in headers.items()]}
    asyncio.run(app(scope, receive, send))
    return answer["status"], json.loads(answer["body"]) if answer["body"] else {}


def test_the_stand_ins_answer_a_good_request(app):
    assert _call(app, "GET", "/api/recommend?user=anna&k=5") == (200, {"user": "anna", "like": "", "k": 5})
    assert _call(app, "POST", "/api/session", b'{"token": "s3cret"}') == (200, {"signed_in": True})
    status, answer = _call(app, "POST", "/api/feedback", b'{"post_id": "p1", "categories": ["coats"]}')
    assert status == 200 and answer["received"]


@pytest.mark.parametrize("k", ["%C2%B2", "%EF%BC%95", "9" * 5000, "00005", "", "0", "51", "-5", "+5", "%205"])
def test_k_is_one_to_fifty_in_at_most_four_ascii_digits(app, k):
    status, answer = _call(app, "GET", f"/api/recommend?user=anna&k={k}")
    assert status == 400 and "k from 1 to 50" in answer["error"]


@pytest.mark.parametrize("like", ["X%0A", "X%0D", "%0AX", "X%00"])
def test_a_post_id_with_a_trailing_newline_or_anything_else_around_it_is_refused(app, like):
    assert _call(app, "GET", f"/api/recommend?like={like}")[0] == 400
    assert _call(app, "GET", f"/api/thumbs?ids=p1,{like}")[0] == 400


@pytest.mark.parametrize("path", ["/api/session", "/api/feedback"])
def test_json_nested_too_deep_to_parse_is_refused_as_any_unparseable_body_is(app, path):
    deep = b"[" * 30000 + b"]" * 30000
    assert len(deep) < routes.MAX_BODY
    assert _call(app, "POST", path, deep) == _call(app, "POST", path, b"not json")
    assert _call(app, "POST", path, deep)[0] in (401, 422)


def test_a_token_utf8_cannot_hold_is_a_wrong_token():
    assert not security.token_matches("\ud800", TOKEN)
    assert not security.token_matches("s3cret\udcff", TOKEN)
    assert security.token_matches("\udcff", SecretStr("\udcff"))  # an undecodable byte in the environment


def test_signing_in_with_a_lone_surrogate_is_refused_as_a_wrong_token(app):
    assert _call(app, "POST", "/api/session", b'{"token": "\\ud800"}') == (401, {"error": "wrong token"})


@pytest.mark.parametrize("path", ["/api/session", "/api/feedback"])
@pytest.mark.parametrize("how", ["declared", "undeclared", "chunked"])
def test_a_body_over_the_limit_is_answered_413_before_any_token_check(app, path, how):
    headers = {"content-length": str(len(BIG))} if how == "declared" else {}
    body = [BIG[i:i + 4096] for i in range(0, len(BIG), 4096)] if how == "chunked" else BIG
    for cookie in (SIGNED_IN, f"{security.CSRF_COOKIE}=c5rf"):  # signed in, or not
        status, answer = _call(app, "POST", path, body, {**headers, "cookie": cookie})
        assert status == 413 and "too large" in answer["error"]


@pytest.mark.parametrize(("length", "status"), [("\u00b2", 200), ("9" * 5000, 413)])
def test_a_content_length_int_cannot_read_is_no_crash(app, length, status):
    assert _call(app, "POST", "/api/session", b'{"token": "s3cret"}', {"content-length": length})[0] == status
