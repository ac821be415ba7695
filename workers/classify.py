"""Classifier stage: join ``posts`` with ``hints`` by post_id, micro-batch images through the Dynamic CNN,
write labels to Redis and the ``labels`` topic, then let the loop commit.

Both input topics are keyed by post_id with the same partition count, so one member owns a post's
partition on both topics. A post waits at most ``hint_wait_ms`` for its hints, then is classified
without them (``hints_used.source`` says which); later hints for it are ignored. When more than
``max_inflight`` posts are held, the posts partitions are paused until half of them are done.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from kafka.errors import KafkaError
from redis.exceptions import RedisError

from streamcore.batcher import MicroBatcher
from streamcore.exceptions import BadInput
from streamcore.images import load_image
from streamcore.schemas import Hints, Post
from streamcore.serde import decode, decode_post
from streamcore.settings import Settings
from streamcore.sinks import RedisLabelSink
from streamcore.stage import Stage
from training.hotswap import ModelSlot
from training.predict import Predictor, Prepared

log = logging.getLogger(__name__)

#: Bound on join state: hints waiting for their post, and recently labelled ids (to drop late hints).
_MAX_REMEMBERED = 100_000
_RETRY_S = 1.0


@dataclass
class _Waiting:
    record: ConsumerRecord
    post: Post
    deadline: float
    hints: Hints | None = None


@dataclass(frozen=True)
class _Item:
    image: Prepared
    hints: Hints | None
    post_id: str
    timestamp_ms: int
    source: str


class ClassifyStage(Stage):
    """Posts + hints → labels."""

    name = "classify"
    inputs = ("posts", "hints")

    def __init__(self, settings: Settings, **kwargs) -> None:
        super().__init__(settings, **kwargs)
        self._hints: OrderedDict[str, Hints] = OrderedDict()
        self._waiting: OrderedDict[str, _Waiting] = OrderedDict()
        self._started: OrderedDict[str, str] = OrderedDict()  # post_id -> source of the message started
        self._tasks: dict[asyncio.Task, ConsumerRecord] = {}
        self._paused = False
        self._decode_pool = ThreadPoolExecutor(max_workers=settings.decode_workers or os.cpu_count() or 1,
                                               thread_name_prefix="decode")
        # One thread stages batch n+1 onto the device while the model thread runs batch n.
        self._prep_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prep")
        self._model_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    async def setup(self) -> None:
        self.sink = RedisLabelSink(self.settings.redis_url, keys=self.settings.keys,
                                   stream_maxlen=self.settings.redis_stream_maxlen)
        loop = asyncio.get_running_loop()
        version = await self.sink.current_model()
        try:
            predictor = await loop.run_in_executor(self._model_pool, Predictor.load, self.settings, version)
        except Exception as exc:  # noqa: BLE001 - serve what the registry has rather than not at all
            log.error("serving pointer %s unusable (%s); falling back to the newest local version", version, exc)
            predictor = await loop.run_in_executor(self._model_pool, Predictor.load, self.settings, None)
        self.models = ModelSlot(self.settings, predictor, self.metrics)
        self._next_model_check = 0.0
        self.batcher = MicroBatcher(self._run_batch, max_batch=self.settings.max_batch,
                                    max_wait_s=self.settings.max_wait_ms / 1000,
                                    adaptive=self.settings.adaptive_batching,
                                    # three batches in flight: one staging, one in the model, one writing
                                    max_concurrent=3,
                                    wait_histogram=self.metrics.batch_wait)

    # -- join ------------------------------------------------------------------------------------
    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        deadline = time.monotonic() + self.settings.hint_wait_ms / 1000
        hints_topic = self.settings.topic("hints")
        for record in records:
            try:
                if record.topic == hints_topic:
                    self._on_hints(record, decode(record.value, Hints, max_bytes=self.settings.max_message_bytes))
                else:
                    self._on_post(record, decode_post(record.value, self.settings), deadline)
            except BadInput as exc:
                await self.dead_letter(record, exc)

    def _on_hints(self, record: ConsumerRecord, hints: Hints) -> None:
        waiting = self._waiting.pop(hints.post_id, None)
        if waiting is not None:
            waiting.hints = hints
            self._start(waiting)
        elif hints.post_id not in self._started:
            _remember(self._hints, hints.post_id, hints)
        self.done(record)

    def _on_post(self, record: ConsumerRecord, post: Post, deadline: float) -> None:
        # The same message fetched again (after a rebalance) is a redo, not a duplicate.
        seen = self._started.get(post.post_id) or (
            _source(self._waiting[post.post_id].record) if post.post_id in self._waiting else None)
        if seen is not None and seen != _source(record):
            raise BadInput("duplicate_post_id", f"post {post.post_id!r} was already received at {seen}")
        waiting = _Waiting(record, post, deadline, self._hints.pop(post.post_id, None))
        if waiting.hints is not None:
            self._start(waiting)
        else:
            self._waiting[post.post_id] = waiting

    async def tick(self) -> None:
        now = time.monotonic()
        while self._waiting:
            first = next(iter(self._waiting.values()))
            if first.deadline > now:  # insertion order = deadline order
                break
            self._start(self._waiting.pop(first.post.post_id))
        self._backpressure()
        self.metrics.queue_depth.labels(self.name).set(self.batcher.queued)
        if now >= self._next_model_check:
            self._next_model_check = now + self.settings.model_poll_s
            self.models.offer(await self.sink.current_model())

    def _backpressure(self) -> None:
        held = len(self._waiting) + len(self._tasks)
        pause = not self._paused and held >= self.settings.max_inflight
        resume = self._paused and held <= self.settings.max_inflight // 2
        if not (pause or resume):
            return
        posts = [tp for tp in self.consumer.assignment() if tp.topic == self.settings.topic("posts")]
        if pause:
            self.consumer.pause(*posts)
            self.metrics.backpressure.labels(self.name).inc()
        else:
            self.consumer.resume(*posts)
        self._paused = pause

    # -- per post --------------------------------------------------------------------------------
    def _start(self, waiting: _Waiting) -> None:
        _remember(self._started, waiting.post.post_id, _source(waiting.record))
        task = asyncio.get_running_loop().create_task(self._process(waiting))
        self._tasks[task] = waiting.record
        task.add_done_callback(self._tasks.pop)

    async def _process(self, waiting: _Waiting) -> None:
        record = waiting.record
        loop = asyncio.get_running_loop()
        try:
            image = await loop.run_in_executor(self._decode_pool, self._prepare, waiting.post)
        except BadInput as exc:
            await self.dead_letter(record, exc)
            return
        item = _Item(image, waiting.hints, waiting.post.post_id, record.timestamp, _source(record))
        while True:
            try:
                stored = await self.batcher.submit(item)
                break
            except (RedisError, KafkaError, OSError) as exc:
                # Outputs could not be written: keep the record unfinished (uncommitted) and retry.
                log.warning("classify: output write failed (%s); retrying in %.0fs", exc, _RETRY_S)
                await asyncio.sleep(_RETRY_S)
        if isinstance(stored, BadInput):  # the image was refused where it was decoded, on the device
            await self.dead_letter(record, stored)
            return
        if stored is None:
            await self.dead_letter(record, BadInput("duplicate_post_id",
                                                    f"post {item.post_id!r} was labelled from another message"))
            return
        self.done(record)
        self.metrics.labeled.inc()
        if waiting.hints is not None and not waiting.hints.is_empty:
            self.metrics.hinted.inc()
        self.metrics.e2e_latency.observe(max(0.0, time.time() - record.timestamp / 1000))

    def _prepare(self, post: Post) -> Prepared:
        predictor = self.models.current
        if post.image.b64 is not None:
            return predictor.prepare(post.image.raw_bytes(), max_pixels=self.settings.max_image_pixels)
        return predictor.to_tensor(load_image(post.image, self.settings))

    async def _run_batch(self, items: Sequence[_Item]) -> list[bytes | BadInput | None]:
        """Per item: the stored label JSON, ``None`` for a duplicate post, or why its image was refused."""
        self.metrics.batch_size.observe(len(items))
        loop = asyncio.get_running_loop()
        # The model is read once per batch: a swap lands between two batches, never inside one.
        predictor = self.models.current
        staged = await loop.run_in_executor(self._prep_pool, predictor.stage, [i.image for i in items],
                                            [i.hints for i in items])
        scores = await loop.run_in_executor(self._model_pool, predictor.infer, staged)
        results = await loop.run_in_executor(self._prep_pool, predictor.label_json, scores,
                                             [i.post_id for i in items], [i.timestamp_ms for i in items])
        kept = [n for n, r in enumerate(results) if not isinstance(r, BadInput)]
        stored = await self.sink.write(predictor.version, [(items[n].post_id, results[n]) for n in kept],
                                       [items[n].source for n in kept])
        for n, value in zip(kept, stored):
            results[n] = value
        # Labels go to the partition of their post (same key, same partition count): one batch per partition.
        await self.send_to_partitions("labels", [(_partition(items[n].source), items[n].post_id.encode(), results[n])
                                                 for n in kept if results[n] is not None])
        return results

    # -- lifecycle -------------------------------------------------------------------------------
    async def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        for post_id in [p for p, w in self._waiting.items() if (w.record.topic, w.record.partition) in gone]:
            del self._waiting[post_id]
        # Let batches already in the model finish, so their offsets are committed before we let go.
        leaving = [t for t, r in self._tasks.items() if (r.topic, r.partition) in gone]
        if leaving:
            await asyncio.wait(leaving, timeout=self.settings.session_timeout_ms / 2000)

    async def shutdown(self) -> None:
        """Finish posts already in a batch; posts still waiting for hints stay uncommitted for the next owner."""
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        await self.batcher.close()
        await self.sink.close()
        self.models.close()
        self._decode_pool.shutdown()
        self._prep_pool.shutdown()
        self._model_pool.shutdown()


def _source(record: ConsumerRecord) -> str:
    return f"{record.topic}/{record.partition}/{record.offset}"


def _partition(source: str) -> int:
    return int(source.rsplit("/", 2)[1])


def _remember(cache: OrderedDict, key, value) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _MAX_REMEMBERED:
        cache.popitem(last=False)


def run(settings: Settings) -> None:
    """Run one classifier consumer until SIGTERM/SIGINT."""
    stage = ClassifyStage(settings)
    stage.serve_health(settings.stage_metrics_port("classify"))
    asyncio.run(stage.run())
