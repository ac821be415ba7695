"""Micro-batcher behaviour, driven by events and a fake clock rather than sleeps."""

from __future__ import annotations

import asyncio

import pytest

from streamcore.batcher import MicroBatcher


class Recorder:
    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = gate

    async def __call__(self, items):
        self.batches.append(list(items))
        if self.gate is not None:
            await self.gate.wait()
        return [i * 10 for i in items]


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_limits_are_validated():
    with pytest.raises(ValueError, match="got 0"):
        MicroBatcher(Recorder(), max_batch=0, max_wait_s=1)
    with pytest.raises(ValueError, match="got -1"):
        MicroBatcher(Recorder(), max_batch=1, max_wait_s=-1)


def test_nine_items_wait_the_tenth_releases_the_batch():
    async def scenario():
        handler = Recorder()
        batcher = MicroBatcher(handler, max_batch=10, max_wait_s=3600)
        futures = [batcher.submit(i) for i in range(9)]
        await _settle()
        assert handler.batches == [] and batcher.queued == 9
        futures.append(batcher.submit(9))
        assert await asyncio.gather(*futures) == [i * 10 for i in range(10)]
        assert handler.batches == [list(range(10))]
        await batcher.close()

    asyncio.run(scenario())


# Fixed: the lone item leaves after max_wait; adaptive: at once, even with an hour's max_wait.
@pytest.mark.parametrize(("adaptive", "max_wait_s"), [(False, 0.02), (True, 3600)])
def test_a_lone_item_is_released(adaptive: bool, max_wait_s: float):
    async def scenario():
        handler = Recorder()
        batcher = MicroBatcher(handler, max_batch=64, max_wait_s=max_wait_s, adaptive=adaptive)
        assert await asyncio.wait_for(batcher.submit(7), timeout=5) == 70
        assert handler.batches == [[7]]
        await batcher.close()

    asyncio.run(scenario())


def test_timer_starts_at_the_first_item_not_when_waiting_began():
    async def scenario():
        now = [0.0]
        handler = Recorder()
        batcher = MicroBatcher(handler, max_batch=64, max_wait_s=10.0, clock=lambda: now[0])
        first = batcher.submit(1)
        now[0] = 9.0
        second = batcher.submit(2)
        await _settle()
        assert handler.batches == []
        now[0] = 10.5  # 10 s after the first item, only 1.5 s after the second
        batcher.submit(3)  # wakes the batcher so it re-reads the clock
        assert await asyncio.wait_for(asyncio.gather(first, second), timeout=5) == [10, 20]
        assert handler.batches[0] == [1, 2, 3]
        await batcher.close()

    asyncio.run(scenario())


def test_oversized_queue_is_split_into_max_batch_chunks_and_overlaps_two_batches():
    async def scenario():
        gate = asyncio.Event()
        handler = Recorder(gate)
        batcher = MicroBatcher(handler, max_batch=4, max_wait_s=3600, max_concurrent=2)
        futures = [batcher.submit(i) for i in range(12)]
        await _settle()
        assert handler.batches == [[0, 1, 2, 3], [4, 5, 6, 7]]  # third waits for a free slot
        assert batcher.busy == 2
        gate.set()
        await asyncio.gather(*futures)
        assert handler.batches[2] == [8, 9, 10, 11]
        await batcher.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("bad", ["raise", "short"])
def test_a_failed_batch_fails_every_member(bad):
    async def handler(items):
        if bad == "raise":
            raise ValueError("model exploded")
        return items[:-1]

    async def scenario():
        batcher = MicroBatcher(handler, max_batch=3, max_wait_s=3600)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
        assert all(isinstance(r, (ValueError, RuntimeError)) for r in results)
        if bad == "short":  # the batch, then each item alone, returned one result too few
            assert "0 results for 1 items" in str(results[0])
        # the batcher keeps working after a failure
        batcher._handler = Recorder()
        assert await asyncio.gather(*(batcher.submit(i) for i in range(3))) == [0, 10, 20]
        await batcher.close()

    asyncio.run(scenario())


def test_a_poison_item_fails_alone_and_its_batch_mates_get_results():
    calls: list[list[int]] = []

    async def handler(items):
        calls.append(list(items))
        if 13 in items:
            raise ValueError("poison")
        return [i * 10 for i in items]

    async def scenario():
        batcher = MicroBatcher(handler, max_batch=4, max_wait_s=3600)
        results = await asyncio.gather(*(batcher.submit(i) for i in (1, 13, 2, 3)), return_exceptions=True)
        assert results[0] == 10 and results[2:] == [20, 30]
        assert isinstance(results[1], ValueError)
        assert calls == [[1, 13, 2, 3], [1], [13], [2], [3]]
        await batcher.close()

    asyncio.run(scenario())


def test_adaptive_batch_follows_the_queue_while_the_handler_is_busy():
    async def scenario():
        gate = asyncio.Event()
        handler = Recorder(gate)
        batcher = MicroBatcher(handler, max_batch=4, max_wait_s=3600, max_concurrent=1, adaptive=True)
        first = batcher.submit(0)
        await _settle()
        assert handler.batches == [[0]]  # the handler was free: no waiting for companions
        rest = [batcher.submit(i) for i in range(1, 11)]  # arrive while batch [0] is in the handler
        await _settle()
        assert batcher.queued == 10 and len(handler.batches) == 1
        gate.set()
        assert await asyncio.gather(first, *rest) == [i * 10 for i in range(11)]
        # The queue, cut at max_batch, set the sizes: 1 while idle, then full batches, then the rest.
        assert handler.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
        await batcher.close()

    asyncio.run(scenario())
