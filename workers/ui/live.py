"""New labels to every open page: one follower of the labels stream per server, fanned out to viewers.

However many pages are open, Redis sees one follower of the labels stream and one enrichment pipeline per
batch of new labels. New labels go out in batches: those written within half a second of the last batch
wait for the next one, unless 50 have gathered first. A classifier's few writes a second reach every page as
two events a second (what an event costs the server and every browser is mostly per event, not per label); a
flood, as batches of about 50, two to a page's draw of 100 (bigger ones would be cut by the page, which keeps
the newest 100 between draws). Each viewer has a bounded queue of batches; a viewer that falls behind (a
stalled tab) loses its queue and is told to start again from a fresh snapshot rather than holding memory
for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.exceptions import RedisError

from workers.ui.store import LabelReader

log = logging.getLogger(__name__)

#: Batches a viewer may have waiting before it is reset.
QUEUE_BATCHES = 256


class Viewer:
    """One open page's queue of card batches."""

    def __init__(self) -> None:
        #: Batches of new cards; ``None`` when the server is stopping.
        self.queue: asyncio.Queue[list[dict[str, Any]] | None] = asyncio.Queue(QUEUE_BATCHES)
        self.behind = False

    def offer(self, cards: list[dict[str, Any]]) -> None:
        try:
            self.queue.put_nowait(cards)
        except asyncio.QueueFull:
            self.behind = True
            while not self.queue.empty():
                self.queue.get_nowait()

    def caught_up(self) -> None:
        self.behind = False

    def end(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class Broadcaster:
    """Follows the labels stream and hands each batch of new cards to every viewer."""

    def __init__(self, reader: LabelReader, *, block_ms: int = 1000, count: int = 1000, gap_s: float = 0.5,
                 batch: int = 50, look_s: float = 0.1) -> None:
        self._reader = reader
        self._gap_s, self._batch, self._look_s = gap_s, batch, look_s
        self._block_ms = block_ms
        self._count = count
        self._viewers: set[Viewer] = set()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="labels-follower")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def close(self) -> None:
        """End every open stream (the server is stopping: it would otherwise wait for them)."""
        for viewer in list(self._viewers):
            viewer.end()

    def join(self) -> Viewer:
        viewer = Viewer()
        self._viewers.add(viewer)
        return viewer

    def leave(self, viewer: Viewer) -> None:
        self._viewers.discard(viewer)

    async def _follow(self) -> None:
        last, pause, held, sent_at = None, 0.5, [], 0.0
        clock = asyncio.get_running_loop().time
        while True:
            try:
                if last is None:
                    last = await self._reader.last_id()
                if held:  # a batch is being gathered: look again when it is due, or soon if it fills before
                    await asyncio.sleep(self._until_due(len(held), clock() - sent_at))
                entries = await self._reader.after(last, block_ms=None if held else self._block_ms, count=self._count)
                if entries:
                    last = entries[-1].id
                    held += entries
                if held and (len(held) >= self._batch or clock() - sent_at >= self._gap_s):
                    await self._send(held)
                    held, sent_at = [], clock()
                pause = 0.5
            except RedisError as exc:  # Redis away: viewers keep what they have; retry with a growing pause
                log.warning("review page: cannot read the labels stream (%s); retrying in %.1f s", exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)

    def _until_due(self, held: int, since: float) -> float:
        """Seconds to wait before looking for more: until the batch is due by time, unless at the rate seen so
        far it would fill first (judged once a look's worth of time has passed: the first read after a quiet
        moment returns as soon as one label is written)."""
        left = self._gap_s - since
        filling = since < self._look_s or held / since * self._gap_s >= self._batch
        return max(0.0, min(left, self._look_s) if filling else left)

    async def _send(self, entries: list) -> None:
        if self._viewers:
            cards = await self._reader.cards(entries)
            for viewer in list(self._viewers):
                viewer.offer(cards)
