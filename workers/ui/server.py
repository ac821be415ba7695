"""``stylestream ui``: the review page's server (Starlette on uvicorn), alone or inside ``stylestream up``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import threading
from collections.abc import AsyncIterator, Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from serving.ontology import load_ontology
from streamcore.redisconn import connect_async
from streamcore.settings import Settings
from workers.ui.cards import Highlighter
from workers.ui.corrections import Publisher, terms
from workers.ui.live import Broadcaster
from workers.ui.recommend import Recommendations
from workers.ui.routes import ROUTES, Ui
from workers.ui.security import SecurityHeaders
from workers.ui.store import LabelReader

log = logging.getLogger(__name__)
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_app(settings: Settings) -> Starlette:
    """The page as an ASGI app; Redis and the stream follower start with it and stop with it."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ontology = load_ontology()
        client = connect_async(settings.redis)
        reader = LabelReader(settings.redis.keys, client, Highlighter(ontology))
        follower_client = connect_async(settings.redis)  # its blocking XREAD must not hold up the page's reads
        broadcaster = Broadcaster(LabelReader(settings.redis.keys, follower_client, Highlighter(ontology)))
        publisher = Publisher(settings, client)
        app.state.ui = Ui(settings, client, reader, broadcaster, publisher, ontology, terms(ontology))
        app.state.recommendations = Recommendations(settings)
        app.state.loop = asyncio.get_running_loop()
        await broadcaster.start()
        try:
            yield
        finally:
            await broadcaster.stop()
            await publisher.close()
            await follower_client.aclose()
            await client.aclose()

    # On loopback, only loopback names: a page elsewhere cannot reach it by rebinding its own name to 127.0.0.1.
    hosts = ["127.0.0.1", "localhost", "[::1]"] if settings.ui.host in _LOOPBACK else ["*"]
    middleware = [Middleware(SecurityHeaders), Middleware(TrustedHostMiddleware, allowed_hosts=hosts)]
    return Starlette(routes=ROUTES, middleware=middleware, lifespan=lifespan)


def _server(settings: Settings) -> tuple[uvicorn.Server, socket.socket]:
    family = socket.AF_INET6 if ":" in settings.ui.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.ui.host, settings.ui.port))
    config = uvicorn.Config(build_app(settings), log_level="warning", access_log=False, timeout_graceful_shutdown=2,
                            lifespan="on")
    return uvicorn.Server(config), sock


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def _lower_priority(nice: int, *, thread: bool = False) -> None:
    """The page is a side job: on a busy machine the classifier beside it comes first. ``thread``: only the calling
    thread and those it starts (Linux gives each thread its own niceness; elsewhere it would be the process's)."""
    if thread and sys.platform != "linux":
        return
    who = threading.get_native_id() if thread else 0
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, who, max(nice, os.getpriority(os.PRIO_PROCESS, who)))


def run(settings: Settings, announce=print) -> None:
    """Serve until SIGINT/SIGTERM; ``announce`` gets the page's address."""
    _lower_priority(settings.ui.nice)
    server, sock = _server(settings)
    announce(f"review page {address(sock)}" + ("" if settings.ui.token is not None else " (read-only: no STYLESTREAM_UI_TOKEN)"))
    server.run(sockets=[sock])


@contextlib.contextmanager
def serving(settings: Settings, *, timeout: float = 30.0) -> Iterator[str]:
    """The page served from a thread of this process while the block runs; yields its address."""
    server, sock = _server(settings)

    def serve() -> None:
        _lower_priority(settings.ui.nice, thread=True)
        server.run(sockets=[sock])

    thread = threading.Thread(target=serve, name="review-page", daemon=True)
    thread.start()
    try:
        started = threading.Event()
        for _ in range(int(timeout / 0.05)):  # uvicorn offers no event for "listening"
            if server.started or not thread.is_alive():
                break
            started.wait(0.05)
        if not server.started:
            raise RuntimeError("the review page did not start")
        yield address(sock)
    finally:
        app = server.config.app
        if getattr(app.state, "loop", None) is not None:  # open event streams end first, or shutdown waits on them
            app.state.loop.call_soon_threadsafe(app.state.ui.broadcaster.close)
        server.should_exit = True
        thread.join(timeout=timeout)
        sock.close()
