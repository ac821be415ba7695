"""The page's HTTP surface: two pages, their static files, and a small JSON/SSE API.

Reads are open to whoever reaches the address (it is loopback unless configured); writes need the
sign-in cookie and pass the CSRF check (:mod:`workers.ui.security`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from streamcore.extras import MissingExtra
from streamcore.settings import Settings
from workers.ui import security
from workers.ui.cards import Filters
from workers.ui.corrections import Publisher, Refused, check, corrections_multi
from workers.ui.live import Broadcaster
from workers.ui.models import model_facts
from workers.ui.sheets import MAX_CELLS, contact_sheet
from workers.ui.store import LabelReader, stream_id

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
#: A post id, whole (``fullmatch``: ``$`` would let a trailing newline through).
_POST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_NO_STORE = {"cache-control": "no-store"}
#: The largest request body a write takes (a correction is a few hundred bytes).
MAX_BODY = 64 * 1024
_TOO_LARGE = {"error": f"the request body is too large: a write takes at most {MAX_BODY} bytes"}


class TooLarge(Exception):
    """A request body over :data:`MAX_BODY` (answered 413)."""


@dataclass
class Ui:
    """What the routes share (built by :func:`workers.ui.server.build_app`)."""

    settings: Settings
    redis: Redis
    reader: LabelReader
    broadcaster: Broadcaster
    publisher: Publisher
    ontology: Any
    terms: dict[str, list]


def _ui(request: Request) -> Ui:
    return request.app.state.ui


def _json(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=_NO_STORE)


async def page(request: Request) -> Response:
    name = "model.html" if request.url.path == "/model" else "index.html"
    response = FileResponse(STATIC / name, headers=_NO_STORE)
    if security.CSRF_COOKIE not in request.cookies:
        response.set_cookie(security.CSRF_COOKIE, security.new_csrf(), httponly=True, samesite="strict")
    return response


async def session(request: Request) -> Response:
    """GET: the CSRF token and sign-in state; POST ``{"token"}``: sign in; DELETE: sign out."""
    ui = _ui(request)
    if request.method == "GET":
        csrf = request.cookies.get(security.CSRF_COOKIE) or security.new_csrf()
        response = _json({"csrf": csrf, "signed_in": security.signed_in(request, ui.settings.ui.token),
                          "corrections": ui.settings.ui.token is not None})
        if security.CSRF_COOKIE not in request.cookies:  # called before any page: the cookie comes with this
            response.set_cookie(security.CSRF_COOKIE, csrf, httponly=True, samesite="strict")
        return response
    refusal = security.write_refusal(request)
    if refusal:
        return _json({"error": refusal}, 403)
    response = _json({"signed_in": request.method == "POST"})
    if request.method == "DELETE":
        response.delete_cookie(security.AUTH_COOKIE)
        return response
    try:
        body = await _body(request)
    except TooLarge:
        return _json(_TOO_LARGE, 413)
    if ui.settings.ui.token is None:
        return _json({"error": "corrections are off: no STYLESTREAM_UI_TOKEN is configured"}, 403)
    if not isinstance(body, dict) or not security.token_matches(str(body.get("token", "")), ui.settings.ui.token):
        return _json({"error": "wrong token"}, 401)
    response.set_cookie(security.AUTH_COOKIE, security.session_value(ui.settings.ui.token), httponly=True,
                        samesite="strict")
    return response


def _number(text: str, digits: int) -> int | None:
    """``text`` as a number when it is 1 to ``digits`` ASCII digits, else ``None`` (``str.isdigit`` alone also
    takes "²", which ``int`` refuses, and "５", and ``int`` refuses more than 4300 digits)."""
    return int(text) if 0 < len(text) <= digits and text.isascii() and text.isdigit() else None


async def _body(request: Request) -> Any:
    """The request's JSON; ``None`` for anything else (nested too deep to parse included).

    Raises:
        TooLarge: a body over :data:`MAX_BODY`, as soon as it says or shows so (never held in memory whole).
    """
    declared = request.headers.get("content-length", "")  # ASCII digits only: a header is read as Latin-1 ("²")
    if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > MAX_BODY):
        raise TooLarge
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise TooLarge
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


async def feedback(request: Request) -> Response:
    """One correction → one ``feedback`` record; answers where it landed."""
    ui = _ui(request)
    refusal = security.write_refusal(request)
    if refusal:
        return _json({"error": refusal}, 403)
    try:
        body = await _body(request)
    except TooLarge:
        return _json(_TOO_LARGE, 413)
    if not security.signed_in(request, ui.settings.ui.token):
        return _json({"error": "sign in with the page's token first"}, 401)
    try:
        correction = check(body, ui.ontology, multi=await corrections_multi(ui.settings, ui.redis))
    except Refused as exc:
        return _json({"error": str(exc)}, 422)
    try:
        sent = await ui.publisher.send(correction)
    except (KafkaError, RedisError, OSError) as exc:
        log.warning("review page: correction of %s not sent: %s", correction.post_id, exc)
        return _json({"error": f"not sent, try again: {type(exc).__name__}"}, 503)
    log.info("review page: correction of %s sent to %s[%d]@%d", correction.post_id, sent["topic"],
             sent["partition"], sent["offset"])
    return _json({"received": True, **sent})


async def events(request: Request) -> Response:
    """Server-sent events: ``reset`` (the newest cards the filters keep), then ``labels`` (new ones)."""
    ui = _ui(request)
    try:
        filters = Filters.from_query(request.query_params)
    except ValueError as exc:
        return _json({"error": str(exc)}, 400)

    async def stream():
        viewer = ui.broadcaster.join()  # before the snapshot: nothing written in between is missed
        try:
            while True:
                cards, last = await ui.reader.newest(filters)
                yield {"event": "reset", "data": json.dumps(cards)}
                viewer.caught_up()
                while not viewer.behind:
                    batch = await viewer.queue.get()
                    if batch is None:
                        return
                    new = [c for c in batch if stream_id(c["seq"]) > last and filters.keeps(c)]
                    if new:
                        yield {"event": "labels", "data": json.dumps(new[::-1])}  # newest first
        finally:
            ui.broadcaster.leave(viewer)

    return EventSourceResponse(stream(), ping=15, headers=_NO_STORE)


async def thumb(request: Request) -> Response:
    post_id = request.path_params["post_id"]
    jpeg = await _ui(request).reader.thumb(post_id) if _POST_ID.fullmatch(post_id) else None
    if jpeg is None:
        return Response(status_code=404)
    return Response(jpeg, media_type="image/jpeg", headers={"cache-control": "private, max-age=3600"})


async def sheet(request: Request) -> Response:
    """``?ids=A,B,C``: those posts' thumbnails side by side in one JPEG (:mod:`workers.ui.sheets`)."""
    ids = request.query_params.get("ids", "").split(",")
    if not 1 <= len(ids) <= MAX_CELLS or not all(_POST_ID.fullmatch(post_id) for post_id in ids):
        return _json({"error": f"ask for ?ids= 1 to {MAX_CELLS} post ids, comma-separated"}, 400)
    try:
        jpegs = await _ui(request).reader.thumbs(ids)
    except RedisError as exc:
        return _json({"error": f"Redis: {exc}"}, 503)
    jpeg = await asyncio.to_thread(contact_sheet, jpegs)
    return Response(jpeg, media_type="image/jpeg", headers={"cache-control": "private, max-age=3600"})


async def ontology(request: Request) -> Response:
    """The form's choices, and whether a correction may name several categories: asked each time, since a
    promotion can change the kind of model the next correction teaches."""
    ui = _ui(request)
    multi = await corrections_multi(ui.settings, ui.redis)
    return JSONResponse({**ui.terms, "multi": multi}, headers=_NO_STORE)


async def model(request: Request) -> Response:
    ui = _ui(request)
    try:
        return _json(await model_facts(ui.settings, ui.redis))
    except RedisError as exc:
        return _json({"error": f"Redis: {exc}"}, 503)


async def recommend(request: Request) -> Response:
    """``?like=POST_ID`` or ``?user=NAME``, and ``k`` (1-50): the recommender's answer as JSON."""
    params = request.query_params
    user, like, k = params.get("user", ""), params.get("like", ""), _number(params.get("k", "10"), 4)
    if (k is None or not 1 <= k <= 50 or bool(user) == bool(like) or len(user) > 256
            or (like and not _POST_ID.fullmatch(like))):
        return _json({"error": "ask for ?like=POST_ID or ?user=NAME, with k from 1 to 50"}, 400)
    try:
        return _json(await request.app.state.recommendations.answer(user=user, like=like, k=k))
    except MissingExtra as exc:
        return _json({"error": str(exc)}, 501)
    except RedisError as exc:
        return _json({"error": f"Redis: {exc}"}, 503)


ROUTES = [
    Route("/", page),
    Route("/model", page),
    Route("/api/session", session, methods=["GET", "POST", "DELETE"]),
    Route("/api/events", events),
    Route("/api/feedback", feedback, methods=["POST"]),
    Route("/api/thumb/{post_id}", thumb),
    Route("/api/thumbs", sheet),
    Route("/api/ontology", ontology),
    Route("/api/model", model),
    Route("/api/recommend", recommend),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
]
