"""Classifier stage: join ``posts`` with ``hints`` by post_id, micro-batch images through the Dynamic CNN,
write labels to Redis and the ``labels`` topic, then commit.

Both input topics are keyed by post_id with the same partition count, so one member owns a post's
partition on both topics. A post waits at most ``hint_wait_ms`` for its hints, then is classified
without them (``hints_used.source`` says which); later hints for it are ignored.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from streamcore.exceptions import BadInput
from streamcore.images import load_image
from streamcore.schemas import Hints, Post
from streamcore.serde import decode, decode_post
from streamcore.settings import Settings
from streamcore.sinks import RedisLabelSink
from streamcore.stage import Stage
from training.predict import Predictor

#: Bound on join state: hints waiting for their post, post ids already labelled (to drop late hints).
_MAX_HINTS = 100_000
_MAX_WAITING = 10_000


@dataclass
class _Waiting:
    record: ConsumerRecord
    post: Post
    deadline: float
    hints: Hints | None = None


class ClassifyStage(Stage):
    """Posts + hints → labels."""

    name = "classify"
    inputs = ("posts", "hints")

    def __init__(self, settings: Settings, **kwargs) -> None:
        super().__init__(settings, **kwargs)
        self._hints: OrderedDict[str, Hints] = OrderedDict()
        self._waiting: OrderedDict[str, _Waiting] = OrderedDict()
        self._labelled: OrderedDict[str, None] = OrderedDict()
        self._decode_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode")
        self._model_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    async def setup(self) -> None:
        self.sink = RedisLabelSink(self.settings.redis_url, stream_maxlen=self.settings.redis_stream_maxlen)
        loop = asyncio.get_running_loop()
        version = await self.sink.current_model()
        self.predictor = await loop.run_in_executor(self._model_pool, Predictor.load, self.settings, version)
        self.metrics.model.info({"version": self.predictor.version, "head": self.predictor.head})

    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        now = time.monotonic()
        wait = self.settings.hint_wait_ms / 1000
        for record in records:
            try:
                if record.topic == self.settings.topic("hints"):
                    self._on_hints(record, decode(record.value, Hints, max_bytes=self.settings.max_message_bytes))
                else:
                    self._on_post(record, decode_post(record.value, self.settings), now + wait)
            except BadInput as exc:
                await self.dead_letter(record, exc)

    def _on_hints(self, record: ConsumerRecord, hints: Hints) -> None:
        waiting = self._waiting.get(hints.post_id)
        if waiting is not None:
            waiting.hints = hints
            waiting.deadline = 0.0
        elif hints.post_id not in self._labelled:
            _bounded_put(self._hints, hints.post_id, hints, _MAX_HINTS)
        self.done(record)

    def _on_post(self, record: ConsumerRecord, post: Post, deadline: float) -> None:
        if post.post_id in self._waiting:
            raise BadInput("duplicate_post_id", f"post {post.post_id!r} is already being classified")
        hints = self._hints.pop(post.post_id, None)
        self._waiting[post.post_id] = _Waiting(record, post, 0.0 if hints else deadline, hints)

    async def tick(self) -> None:
        now = time.monotonic()
        overflow = len(self._waiting) - _MAX_WAITING
        ready = [w for i, w in enumerate(self._waiting.values()) if w.deadline <= now or i < overflow]
        for start in range(0, len(ready), self.settings.max_batch):
            await self._classify(ready[start:start + self.settings.max_batch])

    async def _classify(self, batch: list[_Waiting]) -> None:
        loop = asyncio.get_running_loop()
        images = await asyncio.gather(*[loop.run_in_executor(self._decode_pool, _load, w.post, self.settings)
                                        for w in batch])
        ok = []
        for waiting, image in zip(batch, images):
            if isinstance(image, BadInput):
                self._waiting.pop(waiting.post.post_id, None)
                await self.dead_letter(waiting.record, image)
            else:
                ok.append((waiting, image))
        if not ok:
            return
        self.metrics.batch_size.observe(len(ok))
        labels = await loop.run_in_executor(
            self._model_pool, self.predictor.predict,
            [img for _, img in ok], [w.hints for w, _ in ok], [w.post.post_id for w, _ in ok],
            [w.record.timestamp for w, _ in ok])
        stored = await self.sink.write(labels)
        await self.send_many("labels", [(w.post.post_id.encode(), v) for (w, _), v in zip(ok, stored)])
        for (waiting, _), label in zip(ok, labels):
            self._waiting.pop(waiting.post.post_id, None)
            _bounded_put(self._labelled, waiting.post.post_id, None, _MAX_HINTS)
            self.done(waiting.record)
            self.metrics.labeled.inc()
            if label.hints_used.source == "mined":
                self.metrics.hinted.inc()
            self.metrics.e2e_latency.observe(max(0.0, time.time() - waiting.record.timestamp / 1000))

    async def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        for post_id in [p for p, w in self._waiting.items() if (w.record.topic, w.record.partition) in gone]:
            del self._waiting[post_id]

    async def shutdown(self) -> None:
        for waiting in self._waiting.values():
            waiting.deadline = 0.0
        await self.tick()
        await self.sink.close()
        self._decode_pool.shutdown()
        self._model_pool.shutdown()


def _load(post: Post, settings: Settings):
    try:
        return load_image(post.image, settings)
    except BadInput as exc:
        return exc


def _bounded_put(cache: OrderedDict, key, value, limit: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)


def run(settings: Settings) -> None:
    """Run one classifier consumer until SIGTERM/SIGINT."""
    stage = ClassifyStage(settings)
    stage.metrics.serve(settings.stage_metrics_port("classify"))
    asyncio.run(stage.run())
