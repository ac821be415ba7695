"""Micro-batcher: gather items until ``max_batch`` or ``max_wait`` after the *first* item, then run them
through one batch handler; one future per item.

Modelled on Ray Serve's ``@serve.batch`` (and its lessons): the timer starts at the first item of a
batch, not when waiting began; a result list of the wrong length is an error, never silently misaligned.
Unlike Ray, a failed batch is retried item by item, so one poison item fails alone — except for errors
that are nobody's item's fault (``unsplittable``, e.g. a stopped worker's outage), which reach every member.

``adaptive=True`` lets the batch size follow the queue instead (continuous batching, as Triton's dynamic
batcher without a queue delay): a batch leaves as soon as a handler slot is free, with everything queued
up to ``max_batch``. Under light load each item goes alone at once (lowest latency); under heavy load
items pile up while the model is busy, so batches grow to ``max_batch`` and fill the accelerator.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from prometheus_client import Histogram

T = TypeVar("T")
R = TypeVar("R")

BatchHandler = Callable[[Sequence[T]], Awaitable[Sequence[R]]]


class MicroBatcher(Generic[T, R]):
    """Batches :meth:`submit` calls for an async ``handler(items) -> results``.

    Args:
        handler: called with 1..max_batch items; must return one result per item, in order.
        max_batch: flush as soon as this many items wait.
        max_wait_s: flush this long after the first item of a batch arrived, even if not full.
        adaptive: flush whenever a handler slot is free (``max_wait_s`` then never delays a batch).
        max_concurrent: batches allowed in the handler at once (2 overlaps one batch's output writes
            with the next one's compute).
        unsplittable: exception types delivered to every member as they are, without the per-item retry.
        clock: monotonic clock (tests pass a fake one).
    """

    def __init__(self, handler: BatchHandler, *, max_batch: int, max_wait_s: float, max_concurrent: int = 2,
                 adaptive: bool = False, wait_histogram: Histogram | None = None,
                 unsplittable: tuple[type[BaseException], ...] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        self._handler = handler
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.adaptive = adaptive
        self._clock = clock
        self._wait_histogram = wait_histogram
        self._unsplittable = unsplittable
        self._queue: list[tuple[T, asyncio.Future, float]] = []
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(max_concurrent)
        self._running: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None

    @property
    def queued(self) -> int:
        """Items waiting for a batch."""
        return len(self._queue)

    @property
    def busy(self) -> int:
        """Batches currently in the handler."""
        return len(self._running)

    def submit(self, item: T) -> asyncio.Future:
        """Queue ``item``; the returned future resolves to its result (or its batch's exception)."""
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        self._queue.append((item, future, self._clock()))
        self._arrived.set()
        return future

    async def _run(self) -> None:
        while True:
            await self._arrived.wait()
            if self.adaptive:  # wait for a free slot, not for companions: the queue grows meanwhile
                await self._slots.acquire()
                self._dispatch()
                continue
            deadline = self._queue[0][2] + self.max_wait_s
            while len(self._queue) < self.max_batch:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
            await self._slots.acquire()
            self._dispatch()

    def _dispatch(self) -> None:
        """Start a batch of the first ``max_batch`` queued items (a slot is held for it)."""
        batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
        if not self._queue:
            self._arrived.clear()
        task = asyncio.get_running_loop().create_task(self._execute(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _execute(self, batch: list[tuple[T, asyncio.Future, float]]) -> None:
        try:
            now = self._clock()
            if self._wait_histogram is not None:
                for _, _, arrived in batch:
                    self._wait_histogram.observe(now - arrived)
            try:
                results = await self._call([item for item, _, _ in batch])
            except Exception as exc:  # noqa: BLE001 - delivered to the members, or retried one by one
                if len(batch) == 1 or isinstance(exc, self._unsplittable):
                    for _, future, _ in batch:
                        _settle(future, error=exc)
                    return
                # A poison item must not fail its batch-mates: each is tried again on its own.
                for item, future, _ in batch:
                    try:
                        _settle(future, result=(await self._call([item]))[0])
                    except Exception as single:  # noqa: BLE001 - this item's own failure
                        _settle(future, error=single)
                return
            for (_, future, _), result in zip(batch, results):
                _settle(future, result=result)
        finally:
            self._slots.release()

    async def _call(self, items: list[T]) -> Sequence[R]:
        results = await self._handler(items)
        if len(results) != len(items):
            raise RuntimeError(f"batch handler returned {len(results)} results for {len(items)} items")
        return results

    async def close(self) -> None:
        """Stop the batching task; pending futures are cancelled."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except asyncio.CancelledError:
                pass
        for _, future, _ in self._queue:
            future.cancel()
        self._queue.clear()


def _settle(future: asyncio.Future, *, result: object = None, error: BaseException | None = None) -> None:
    if future.done():  # the submitter gave up (cancelled)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
