"""Classifier stage: posts + hints → labels. This module is the wiring; each job has a room of its own.

Where a post goes next: its record is parsed (:mod:`.parse`), joined with its hints by post id
(:mod:`.join`), its photo decoded just ahead of the model (:mod:`.feeder`), micro-batched
(:class:`streamcore.batcher.MicroBatcher`) through the serving model into the label sink (:mod:`.batches`),
and only then marked done, so the loop commits it. Byte-identical copies of a post read while it waits
(:attr:`.join.Waiting.redos`) end with it: its stored label sent again for each, byte for byte, once the
label is written; or, when it ends as a dead letter, each classified again, as a copy read later would be.

Join invariant: the text stage writes a post's hints to the partition number of the post, and the
co-partitioning assignor (:mod:`streamcore.assignor`) gives partition ``i`` of ``posts`` and ``hints`` to
the same member, for any replica count. Memory is bounded in bytes: when held posts exceed
``max_inflight`` records or ``max_inflight_bytes`` the posts partitions pause until half are done; held
hints over ``max_held_hint_bytes`` pause the hints partitions. Pauses are re-applied after a reassignment
(the client forgets them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from redis.exceptions import RedisError

from serving.hotswap import ModelSlot, load_last_good
from serving.images import make_preview
from serving.predict import Prepared, resolve_device
from serving.registry import check_version_name
from streamcore.batcher import MicroBatcher
from streamcore.exceptions import BadInput, InfrastructureError
from streamcore.preview import Preview
from streamcore.schemas import Hints, Post
from streamcore.settings import Settings
from streamcore.sinks import LabelSink, RedisLookups
from streamcore.sources import load_bytes
from streamcore.stage import Stage
from workers.classify.batches import BatchRunner, Item
from workers.classify.feeder import ImageFeeder
from workers.classify.join import HintJoin, Release, Start, Waiting
from workers.classify.parse import Parser

log = logging.getLogger(__name__)

#: 9999-12-31T23:59:59.999Z, the latest instant a ``datetime`` holds.
_MAX_TIMESTAMP_MS = 253_402_300_799_999


class ClassifyStage(Stage):
    """Posts + hints → labels."""

    name = "classify"
    inputs = ("posts", "hints")
    outputs = ("labels", "posts.dlq")

    def __init__(self, settings: Settings, **kwargs) -> None:
        super().__init__(settings, **kwargs)
        self.join = HintJoin(hold_s=settings.classify.hint_hold_s)
        self.parser = Parser(settings)
        self.feeder = ImageFeeder(settings.classify, lambda post: self._prepare(post), lambda: self.batcher.queued,
                                  cpu_model=resolve_device(settings.serving.device).type == "cpu")
        self.lookups: RedisLookups | None = None  # Redis reads, opened on the stage's loop
        self._tasks: dict[asyncio.Task, Waiting] = {}
        self._paused: set[str] = set()  # logical topics whose partitions are paused
        self._bad_pointer: bytes | str | None = None
        self._model_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._next_model_check = 0.0

    async def setup(self) -> None:
        loop = asyncio.get_running_loop()
        self.lookups = RedisLookups(self.settings)
        version = await self._serving_pointer(retry=True)
        # A pointer to a version that fails its checks: the last good one serves (never no model at all).
        predictor, failed = await loop.run_in_executor(self._model_pool, load_last_good, self.settings, version,
                                                       self.metrics)
        self.models = ModelSlot(self.settings, predictor, self.metrics, refused=failed)
        self.sink = LabelSink(self.settings, self.producer)
        self.runner = BatchRunner(self.models, self.sink, self.metrics, self.retrying, self._model_pool,
                                  vectors=self.settings.classify.fashion_vectors)
        self.batcher = MicroBatcher(self.runner, max_batch=self.settings.classify.max_batch,
                                    max_wait_s=self.settings.classify.max_wait_ms / 1000,
                                    adaptive=self.settings.classify.adaptive_batching,
                                    # three batches in flight: one staging, one in the model, one writing
                                    max_concurrent=3, wait_histogram=self.metrics.batch_wait,
                                    unsplittable=(InfrastructureError,))

    async def _serving_pointer(self, *, retry: bool = False) -> str | None:
        """The serving-version pointer if it names a version; garbage is logged, counted and ignored."""
        try:
            raw = await (self.retrying("model_pointer", self.lookups.current_model) if retry
                         else self.lookups.current_model())
        except RedisError as exc:
            self.metrics.infra_errors.labels(self.name, "model_pointer").inc()
            log.warning("classify: cannot read the serving pointer (%s); keeping %s", exc, self.models.current.version)
            return None
        except UnicodeDecodeError as exc:
            raw, problem = exc.object, "is not UTF-8"
        else:
            if raw is None:
                return None
            try:
                return check_version_name(raw)
            except ValueError:
                problem = "is not a version name"
        if raw != self._bad_pointer:  # once per bad value, not once per poll
            self._bad_pointer = raw
            self.metrics.bad_state.labels(self.name, "model_current").inc()
            log.error("classify: serving pointer %s %r %s; ignored", self.settings.redis.keys.model_current, raw[:200], problem)
        return None

    # -- join ------------------------------------------------------------------------------------
    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        now = time.monotonic()
        deadline = now + self.settings.classify.hint_wait_ms / 1000
        held: list[str] = []
        for record, (message, print_) in zip(records, await self.parser.parse(records)):
            try:
                if isinstance(message, Exception):
                    raise message
                if isinstance(message, Hints):
                    self._apply(self.join.on_hints(record, message, now))
                    if self.join.holds(message.post_id):
                        held.append(message.post_id)
                else:
                    self._apply(self.join.on_post(record, message, print_, deadline))
            except BadInput as exc:
                await self.dead_letter(record, exc)
            except Exception as exc:  # noqa: BLE001 - the error boundary: this record fails alone
                await self.fail(record, exc)
        if held:
            await self._release_labelled(held)

    async def _release_labelled(self, held: list[str]) -> None:
        """Release newly held hints whose post is already labelled.

        After a restart or rebalance, hints re-read from the partition's commit point include some whose
        post was labelled (and committed) before; that post never comes again, so its hints would hold
        the commit point until ``hint_hold_s``.
        """
        held = [p for p in held if self.join.holds(p)]  # a post of the same round may have taken them
        try:
            labelled = await self.lookups.labelled(held)
        except RedisError as exc:  # they expire instead
            self.metrics.infra_errors.labels(self.name, "label_lookup").inc()
            log.warning("classify: cannot look up labelled posts (%s)", exc)
            return
        self._apply(self.join.already_labelled(p for p, done in zip(held, labelled) if done))

    def _apply(self, actions: list[Start | Release]) -> None:
        for action in actions:
            if isinstance(action, Start):
                self._start(action.waiting)
            else:
                self.metrics.hints_released.labels(action.reason).inc()
                self.done(action.record)

    async def tick(self) -> None:
        now = time.monotonic()
        self._apply(self.join.due(now))
        self._backpressure()
        self.metrics.queue_depth.labels(self.name).set(self.batcher.queued)
        if now >= self._next_model_check:
            self._next_model_check = now + self.settings.serving.model_poll_s
            self.models.offer(await self._serving_pointer())

    def _backpressure(self) -> None:
        held = self.join.waiting_records() + [r for w in self._tasks.values() for r in (w.record, *w.redos)]
        count, size = len(held), sum(len(r.value or b"") for r in held)
        cap, cap_bytes = self.settings.classify.max_inflight, self.settings.classify.max_inflight_bytes
        self._throttle("posts", over=count >= cap or size >= cap_bytes,
                       under=count <= cap // 2 and size <= cap_bytes // 2)
        cap_hints, held_hints = self.settings.classify.max_held_hint_bytes, self.join.held_bytes
        self._throttle("hints", over=held_hints >= cap_hints, under=held_hints <= cap_hints // 2)

    def _throttle(self, topic: str, *, over: bool, under: bool) -> None:
        if topic not in self._paused and over:
            self.consumer.pause(*self._owned(topic))
            self._paused.add(topic)
            self.metrics.backpressure.labels(self.name).inc()
        elif topic in self._paused and under:
            self.consumer.resume(*self._owned(topic))
            self._paused.discard(topic)

    def _owned(self, topic: str) -> list[TopicPartition]:
        return [tp for tp in self.consumer.assignment() if tp.topic == self.settings.kafka.topic(topic)]

    def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        """Keep paused topics paused on their newly assigned partitions (the client resumes them)."""
        for topic in self._paused:
            self.consumer.pause(*(tp for tp in partitions if tp.topic == self.settings.kafka.topic(topic)))

    # -- per post --------------------------------------------------------------------------------
    def _start(self, waiting: Waiting) -> None:
        task = asyncio.get_running_loop().create_task(self._process(waiting))
        self._tasks[task] = waiting
        task.add_done_callback(self._tasks.pop)

    async def _process(self, waiting: Waiting) -> None:
        """One post to one label or one dead letter, whatever happens on the way (the error boundary); then
        its byte-identical copies, each to one label or one dead letter too."""
        stored: bytes | None = None
        try:
            try:
                stored = await self._classify(waiting)
            except BadInput as exc:
                await self.dead_letter(waiting.record, exc)
                self.join.unlabelled(waiting.post.post_id, waiting.fingerprint)
            except InfrastructureError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bug or an input no check foresaw: this post only
                await self.fail(waiting.record, exc)
        except InfrastructureError as exc:  # stopping while Kafka/Redis fail: the next owner redoes it
            log.warning("classify: %s[%d]@%d left unfinished: %s", waiting.record.topic, waiting.record.partition,
                        waiting.record.offset, exc)
            return
        if waiting.hints_record is not None:  # the post is finished, so its hints are used
            self.done(waiting.hints_record)
        if not waiting.redos:
            return
        if stored is None:  # dead-lettered: each copy is classified again, as a copy read later would be
            again = [Waiting(r, waiting.post, 0.0, waiting.fingerprint, hints=waiting.hints) for r in waiting.redos]
            await asyncio.gather(*(self._process(w) for w in again))
        else:
            await self._reemit(waiting.post.post_id, stored, waiting.redos)

    async def _reemit(self, post_id: str, stored: bytes, redos: list[ConsumerRecord]) -> None:
        """Send a post's stored label again for each of its copies, byte for byte; then they are done."""
        key = post_id.encode()
        try:
            try:
                await self.retrying("label_write", lambda: self.send_to_partitions(
                    "labels", [(r.partition, key, stored) for r in redos]))
            except BadInput as exc:  # refused for good, as a copy read later would be: a letter each
                for redo in redos:
                    await self.dead_letter(redo, exc)
                return
        except InfrastructureError as exc:  # stopping while Kafka fails: the next owner redoes them
            log.warning("classify: %d copies of %r left unfinished: %s", len(redos), post_id, exc)
            return
        now = time.time()
        for redo in redos:
            self.done(redo)
            self.metrics.labeled.inc()
            self.metrics.reemitted.inc()
            self.metrics.e2e_latency.observe(max(0.0, now - received_ms(redo) / 1000))

    async def _classify(self, waiting: Waiting) -> bytes:
        """Classify one post, write its label and mark it done; its stored label JSON."""
        record = waiting.record
        place = await self.feeder.place()
        try:
            image, preview = await self.feeder.decode(waiting.post)
            post = waiting.post
            item = Item(image, waiting.hints, post.post_id, received_ms(record), waiting.fingerprint,
                        record.partition, place, post.user, int(post.created_at.timestamp() * 1000), preview)
            stored = await self.batcher.submit(item)
        finally:
            place.give_back()  # a refused image, a cancelled task: the place is not lost
        if isinstance(stored, BadInput):  # the image was refused where it was decoded, on the device
            raise stored
        if stored is None:
            raise BadInput("duplicate_post_id", f"post {item.post_id!r} was labelled from other content")
        self.done(record)
        self.metrics.labeled.inc()
        if waiting.hints is not None and not waiting.hints.is_empty:
            self.metrics.hinted.inc()
        self.metrics.e2e_latency.observe(max(0.0, time.time() - item.timestamp_ms / 1000))
        return stored

    def _prepare(self, post: Post) -> tuple[Prepared, Preview]:
        # Every source takes the same path: DCT-scaled decode on the CPU, or nvJPEG on the device. The
        # review page's thumbnail is made here too, from the model's decoded square where there is one.
        data = load_bytes(post.image, self.settings)
        prepared = self.models.current.prepare(data, max_pixels=self.settings.limits.max_image_pixels)
        return prepared, make_preview(data, post.caption, max_pixels=self.settings.limits.max_image_pixels,
                                      decoded=prepared)

    # -- lifecycle -------------------------------------------------------------------------------
    async def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        # Held posts and hints of these partitions stay uncommitted: their next owner re-reads them.
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self.join.forget(gone)
        # Let batches already in the model finish, so their offsets are committed before we let go.
        leaving = [t for t, w in self._tasks.items() if (w.record.topic, w.record.partition) in gone]
        if leaving:
            await asyncio.wait(leaving, timeout=self.settings.kafka.session_timeout_ms / 2000)

    async def shutdown(self) -> None:
        """Finish posts already in a batch; posts still waiting for hints stay uncommitted for the next owner."""
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        await self.batcher.close()
        await self.sink.close()
        await self.lookups.close()
        self.models.close()
        self.runner.close()
        self.feeder.close()
        self.parser.close()
        self._model_pool.shutdown()


def received_ms(record: ConsumerRecord) -> int:
    """The record's broker timestamp, or now when a producer set one no ``datetime`` can hold."""
    if record.timestamp is None or not 0 <= record.timestamp <= _MAX_TIMESTAMP_MS:
        return int(time.time() * 1000)
    return record.timestamp


def run(settings: Settings) -> None:
    """Run one classifier consumer until SIGTERM/SIGINT."""
    stage = ClassifyStage(settings)
    stage.serve_health(settings.metrics.stage_port("classify"))
    asyncio.run(stage.run())
