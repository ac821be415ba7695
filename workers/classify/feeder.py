"""The classifier's image feeder: decodes photos just ahead of the model, on threads of its own.

Images are prepared just ahead of the model (two batches and one per decode thread), not for every post in
flight: decoding far ahead only holds memory and, on shared cores, moves decode work to the front of a
backlog where it competes with the forward anyway. On a CPU model with cores of its own
(``decode_idle_priority``), images the next batch still lacks are decoded at normal priority, so the model
never waits for them, and the rest at idle priority, in the time the forward leaves, so they never stall
its OpenMP team.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from streamcore.runtime import run_at_idle_priority
from streamcore.schemas import Post
from streamcore.sections import ClassifySettings


class Place:
    """A place among the images prepared ahead of the model; given back once, when its batch starts."""

    def __init__(self, places: asyncio.Semaphore) -> None:
        self._places = places
        self._held = True

    def give_back(self) -> None:
        if self._held:
            self._held = False
            self._places.release()


class ImageFeeder:
    """Owns the decode threads, their priorities and the read-ahead bound.

    Args:
        prepare: decodes one post's image into what the model takes (runs on a decode thread).
        queued: how many decoded images wait for a batch right now.
        cpu_model: the model runs on the CPU (idle-priority decoding is only for that case).
    """

    def __init__(self, settings: ClassifySettings, prepare: Callable[[Post], Any], queued: Callable[[], int], *,
                 cpu_model: bool) -> None:
        self.workers = settings.decode_workers or os.cpu_count() or 1
        self._prepare = prepare
        self._queued = queued
        self._max_batch = settings.max_batch
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="decode")
        yields = settings.decode_idle_priority and cpu_model
        self._spare_pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="decode-idle",
                                              initializer=run_at_idle_priority) if yields else None
        self._urgent = 0
        self._places: asyncio.Semaphore | None = None

    async def place(self) -> Place:
        """Wait for room ahead of the model; the caller gives the place back when its batch starts."""
        if self._places is None:  # created on the loop that uses it
            self._places = asyncio.Semaphore(2 * self._max_batch + self.workers)
        await self._places.acquire()
        return Place(self._places)

    async def decode(self, post: Post) -> Any:
        """Decode at normal priority while the next batch lacks images, at idle priority beyond it."""
        loop = asyncio.get_running_loop()
        if self._spare_pool is not None and self._queued() + self._urgent >= self._max_batch:
            return await loop.run_in_executor(self._spare_pool, self._prepare, post)  # the next batch is covered
        self._urgent += 1
        try:
            return await loop.run_in_executor(self._pool, self._prepare, post)
        finally:
            self._urgent -= 1

    def close(self) -> None:
        self._pool.shutdown()
        if self._spare_pool is not None:
            self._spare_pool.shutdown()
