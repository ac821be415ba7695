"""Classifier stage: join ``posts`` with ``hints`` by post_id, micro-batch images through the Dynamic CNN,
write labels to Redis and the ``labels`` topic, then let the loop commit.

Join invariant: the text stage writes a post's hints to the partition number of the post, and the
co-partitioning assignor (:mod:`streamcore.assignor`) gives partition ``i`` of ``posts`` and ``hints`` to
the same member, for any replica count. A post waits at most ``hint_wait_ms`` for its hints, then is
classified without them (``hints_used.source`` says which); later hints for it are released.

Hints are durable until used: a hints record stays unfinished (its offset uncommitted) until its post
is labelled or dead-lettered, so a restart or rebalance re-reads the hints of every unlabelled post. A
hint whose post does not come within ``hint_hold_s`` is released as ``expired`` (counted), so the hints
partition's commit point never stalls for good.

Memory is bounded in bytes: when held posts exceed ``max_inflight`` records or ``max_inflight_bytes``,
the posts partitions pause until half are done; held hints over ``max_held_hint_bytes`` pause the hints
partitions. Pauses are re-applied after a reassignment (the client forgets them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from redis.exceptions import RedisError

from streamcore.batcher import MicroBatcher
from streamcore.exceptions import BadInput, InfrastructureError
from streamcore.images import load_bytes
from streamcore.runtime import run_at_idle_priority
from streamcore.schemas import Hints, Post
from streamcore.serde import decode, decode_post
from streamcore.settings import Settings
from streamcore.sinks import RedisLabelSink, fingerprint
from streamcore.stage import Stage
from training.hotswap import ModelSlot
from training.predict import Predictor, Prepared, resolve_device
from training.registry import check_version_name

log = logging.getLogger(__name__)

#: Bound on join state: hints waiting for their post, and recently labelled ids (to drop late hints).
_MAX_REMEMBERED = 100_000
#: Records parsed per parse-thread call: enough to amortise the hop, small enough to spread a round.
_PARSE_CHUNK = 64
#: 9999-12-31T23:59:59.999Z, the latest instant a ``datetime`` holds.
_MAX_TIMESTAMP_MS = 253_402_300_799_999


@dataclass
class _Held:
    """A hints record waiting for its post; its offset stays uncommitted meanwhile."""

    record: ConsumerRecord
    hints: Hints
    since: float


@dataclass
class _Waiting:
    record: ConsumerRecord
    post: Post
    deadline: float
    hints: Hints | None = None
    hints_record: ConsumerRecord | None = None
    fingerprint: str = ""
    #: Byte-identical copies fetched while this one waited: finished with it, not labelled twice.
    redos: list[ConsumerRecord] = field(default_factory=list)


class _Ahead:
    """A place among the images prepared ahead of the model; given back once, when its batch starts."""

    def __init__(self, places: asyncio.Semaphore) -> None:
        self._places = places
        self._held = True

    def give_back(self) -> None:
        if self._held:
            self._held = False
            self._places.release()


@dataclass(frozen=True)
class _Item:
    image: Prepared
    hints: Hints | None
    post_id: str
    timestamp_ms: int
    fingerprint: str
    partition: int  # of the post: its label goes to the same partition of ``labels``
    ahead: _Ahead


class ClassifyStage(Stage):
    """Posts + hints → labels."""

    name = "classify"
    inputs = ("posts", "hints")

    def __init__(self, settings: Settings, **kwargs) -> None:
        super().__init__(settings, **kwargs)
        self._hints: OrderedDict[str, _Held] = OrderedDict()  # arrival order = expiry order
        self._hint_bytes = 0
        self._waiting: OrderedDict[str, _Waiting] = OrderedDict()
        self._started: OrderedDict[str, str] = OrderedDict()  # post_id -> fingerprint of the message started
        self._tasks: dict[asyncio.Task, ConsumerRecord] = {}
        self._paused: set[str] = set()  # logical topics whose partitions are paused
        self._bad_pointer: bytes | str | None = None
        self._decode_workers = settings.decode_workers or os.cpu_count() or 1
        self._decode_pool = ThreadPoolExecutor(max_workers=self._decode_workers, thread_name_prefix="decode")
        # On a CPU model the decoding shares cores with the forward (settings.decode_idle_priority): images the
        # next batch still lacks are decoded at normal priority, so the model never waits for them; the rest
        # at idle priority, in the time the forward leaves, so they never stall its OpenMP team.
        yields = settings.decode_idle_priority and resolve_device(settings.device).type == "cpu"
        self._spare_decode_pool = ThreadPoolExecutor(max_workers=self._decode_workers, thread_name_prefix="decode-idle",
                                                     initializer=run_at_idle_priority) if yields else None
        self._urgent_decodes = 0
        # Parsing has threads of its own: a round's messages never queue behind the images of the last.
        self._parse_pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="parse")
        # One thread stages batch n+1 onto the device while the model thread runs batch n.
        self._prep_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prep")
        self._model_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    async def setup(self) -> None:
        self.sink = RedisLabelSink(self.settings)
        loop = asyncio.get_running_loop()
        version = await self._serving_pointer(retry=True)
        try:
            predictor = await loop.run_in_executor(self._model_pool, Predictor.load, self.settings, version)
        except Exception as exc:  # noqa: BLE001 - serve what the registry has rather than not at all
            log.error("serving pointer %s unusable (%s); falling back to the newest local version", version, exc)
            predictor = await loop.run_in_executor(self._model_pool, Predictor.load, self.settings, None)
        self.models = ModelSlot(self.settings, predictor, self.metrics)
        self._next_model_check = 0.0
        # Images are prepared just ahead of the model (two batches and one per decode thread), not for every
        # post in flight: decoding far ahead holds memory and, on shared cores, only moves the decode work
        # to the front of a backlog, where it competes with the forward anyway.
        self._ahead = asyncio.Semaphore(2 * self.settings.max_batch + self._decode_workers)
        self.batcher = MicroBatcher(self._run_batch, max_batch=self.settings.max_batch,
                                    max_wait_s=self.settings.max_wait_ms / 1000,
                                    adaptive=self.settings.adaptive_batching,
                                    # three batches in flight: one staging, one in the model, one writing
                                    max_concurrent=3,
                                    wait_histogram=self.metrics.batch_wait)

    async def _serving_pointer(self, *, retry: bool = False) -> str | None:
        """The serving-version pointer if it names a version; garbage is logged, counted and ignored."""
        try:
            raw = await (self.retrying("model_pointer", self.sink.current_model) if retry
                         else self.sink.current_model())
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
            log.error("classify: serving pointer %s %r %s; ignored", self.settings.keys.model_current, raw[:200], problem)
        return None

    # -- join ------------------------------------------------------------------------------------
    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        deadline = time.monotonic() + self.settings.hint_wait_ms / 1000
        parsed = await self._parse(records)
        held: list[str] = []
        for record, (message, print_) in zip(records, parsed):
            try:
                if isinstance(message, Exception):
                    raise message
                if isinstance(message, Hints):
                    if self._on_hints(record, message):
                        held.append(message.post_id)
                else:
                    self._on_post(record, message, deadline, print_)
            except BadInput as exc:
                await self.dead_letter(record, exc)
            except Exception as exc:  # noqa: BLE001 - the error boundary: this record fails alone
                await self.fail(record, exc)
        if held:
            await self._release_labelled(held)

    async def _parse(self, records: Sequence[ConsumerRecord]) -> list[tuple[Post | Hints | Exception, str]]:
        """Per record, its validated message (or why not) and, for posts, the content fingerprint.

        Parsing, validation and the SHA-256 of every post run in the parse threads, in chunks, so the
        event loop that feeds the model only joins; hashing a photo-sized post releases the GIL.
        """
        loop = asyncio.get_running_loop()
        chunks = [records[i : i + _PARSE_CHUNK] for i in range(0, len(records), _PARSE_CHUNK)]
        done = await asyncio.gather(*(loop.run_in_executor(self._parse_pool, self._parse_chunk, c) for c in chunks))
        return [entry for chunk in done for entry in chunk]

    def _parse_chunk(self, records: Sequence[ConsumerRecord]) -> list[tuple[Post | Hints | Exception, str]]:
        hints_topic, limit = self.settings.topic("hints"), self.settings.max_message_bytes
        out: list[tuple[Post | Hints | Exception, str]] = []
        for record in records:
            try:
                if record.topic == hints_topic:
                    out.append((decode(record.value, Hints, max_bytes=limit), ""))
                else:
                    out.append((decode_post(record.value, self.settings), fingerprint(record.value)))
            except Exception as exc:  # noqa: BLE001 - handed to the record's own error boundary
                out.append((exc, ""))
        return out

    async def _release_labelled(self, held: list[str]) -> None:
        """Release newly held hints whose post is already labelled.

        After a restart or rebalance, hints re-read from the partition's commit point include some whose
        post was labelled (and committed) before; that post never comes again, so its hints would hold
        the commit point until ``hint_hold_s``.
        """
        held = [p for p in held if p in self._hints]  # a post of the same round may have taken them
        try:
            labelled = await self.sink.labelled(held)
        except RedisError as exc:  # they expire instead
            self.metrics.infra_errors.labels(self.name, "label_lookup").inc()
            log.warning("classify: cannot look up labelled posts (%s)", exc)
            return
        for post_id, done in zip(held, labelled):
            if done and post_id in self._hints:
                self._release_held(post_id, "late")

    def _on_hints(self, record: ConsumerRecord, hints: Hints) -> bool:
        """Join ``hints`` to their waiting post, or hold them for it; True when they are now held."""
        post_id = hints.post_id
        waiting = self._waiting.pop(post_id, None)
        if waiting is not None:
            waiting.hints, waiting.hints_record = hints, record
            self._start(waiting)
        elif post_id in self._started:
            self._release(record, "late")  # its post was classified without them
        elif post_id in self._hints:
            if self._hints[post_id].record.offset != record.offset:
                self._release(record, "duplicate")  # the text stage redid the post
        else:
            self._hints[post_id] = _Held(record, hints, time.monotonic())
            self._hint_bytes += len(record.value)
            while len(self._hints) > _MAX_REMEMBERED:
                self._release_held(next(iter(self._hints)), "capacity")
            return True
        return False

    def _on_post(self, record: ConsumerRecord, post: Post, deadline: float, print_: str) -> None:
        # Redo vs conflict: a post id seen before with the same bytes (``print_``) is a redo (the message
        # read again after a rebalance or crash, or a producer retry) and is labelled again; the sink then
        # returns the stored label. The same id with other bytes is a conflicting duplicate.
        earlier = self._waiting.get(post.post_id)
        seen = self._started.get(post.post_id) or (earlier.fingerprint if earlier else None)
        if seen is not None and seen != print_:
            raise BadInput("duplicate_post_id", f"post {post.post_id!r} was already received with other content")
        if earlier is not None:  # already held: a copy at another offset gets the same label and finishes with it
            if _position(earlier.record) != _position(record):
                earlier.redos.append(record)
            return
        held = self._take_held(post.post_id)
        waiting = _Waiting(record, post, deadline, hints=held.hints if held else None,
                           hints_record=held.record if held else None, fingerprint=print_)
        if waiting.hints is not None:
            self._start(waiting)
        else:
            self._waiting[post.post_id] = waiting

    def _take_held(self, post_id: str) -> _Held | None:
        held = self._hints.pop(post_id, None)
        if held is not None:
            self._hint_bytes -= len(held.record.value)
        return held

    def _release_held(self, post_id: str, reason: str) -> None:
        self._release(self._take_held(post_id).record, reason)

    def _release(self, record: ConsumerRecord, reason: str) -> None:
        """Finish a hints record that no post will use (``late``, ``duplicate``, ``expired``, ``capacity``)."""
        self.metrics.hints_released.labels(reason).inc()
        self.done(record)

    async def tick(self) -> None:
        now = time.monotonic()
        while self._waiting:
            first = next(iter(self._waiting.values()))
            if first.deadline > now:  # insertion order = deadline order
                break
            self._start(self._waiting.pop(first.post.post_id))
        while self._hints and now - next(iter(self._hints.values())).since >= self.settings.hint_hold_s:
            self._release_held(next(iter(self._hints)), "expired")
        self._backpressure()
        self.metrics.queue_depth.labels(self.name).set(self.batcher.queued)
        if now >= self._next_model_check:
            self._next_model_check = now + self.settings.model_poll_s
            self.models.offer(await self._serving_pointer())

    def _backpressure(self) -> None:
        held = [w.record for w in self._waiting.values()] + list(self._tasks.values())
        count, size = len(held), sum(len(r.value or b"") for r in held)
        cap, cap_bytes = self.settings.max_inflight, self.settings.max_inflight_bytes
        self._throttle("posts", over=count >= cap or size >= cap_bytes,
                       under=count <= cap // 2 and size <= cap_bytes // 2)
        cap_hints = self.settings.max_held_hint_bytes
        self._throttle("hints", over=self._hint_bytes >= cap_hints, under=self._hint_bytes <= cap_hints // 2)

    def _throttle(self, topic: str, *, over: bool, under: bool) -> None:
        if topic not in self._paused and over:
            self.consumer.pause(*self._owned(topic))
            self._paused.add(topic)
            self.metrics.backpressure.labels(self.name).inc()
        elif topic in self._paused and under:
            self.consumer.resume(*self._owned(topic))
            self._paused.discard(topic)

    def _owned(self, topic: str) -> list[TopicPartition]:
        return [tp for tp in self.consumer.assignment() if tp.topic == self.settings.topic(topic)]

    def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        """Keep paused topics paused on their newly assigned partitions (the client resumes them)."""
        for topic in self._paused:
            self.consumer.pause(*(tp for tp in partitions if tp.topic == self.settings.topic(topic)))

    # -- per post --------------------------------------------------------------------------------
    def _start(self, waiting: _Waiting) -> None:
        _remember(self._started, waiting.post.post_id, waiting.fingerprint)
        task = asyncio.get_running_loop().create_task(self._process(waiting))
        self._tasks[task] = waiting.record
        task.add_done_callback(self._tasks.pop)

    async def _process(self, waiting: _Waiting) -> None:
        """One post to one label or one dead letter, whatever happens on the way (the error boundary)."""
        try:
            try:
                await self._classify(waiting)
            except BadInput as exc:
                await self.dead_letter(waiting.record, exc)
            except InfrastructureError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bug or an input no check foresaw: this post only
                await self.fail(waiting.record, exc)
        except InfrastructureError as exc:  # stopping while Kafka/Redis fail: the next owner redoes it
            log.warning("classify: %s[%d]@%d left unfinished: %s", waiting.record.topic, waiting.record.partition,
                        waiting.record.offset, exc)
            return
        for redo in waiting.redos:  # byte-identical copies end with the post, as its label or letter
            self.done(redo)
        if waiting.hints_record is not None:  # the post is finished, so its hints are used
            self.done(waiting.hints_record)

    async def _classify(self, waiting: _Waiting) -> None:
        record = waiting.record
        await self._ahead.acquire()
        ahead = _Ahead(self._ahead)
        try:
            image = await self._decode(waiting.post)
            item = _Item(image, waiting.hints, waiting.post.post_id, _received_ms(record), waiting.fingerprint,
                         record.partition, ahead)
            # Outputs not written: the record stays unfinished (uncommitted) while this retries.
            stored = await self.retrying("label_write", lambda: self.batcher.submit(item))
        finally:
            ahead.give_back()  # a refused image, a cancelled task: the place is not lost
        if isinstance(stored, BadInput):  # the image was refused where it was decoded, on the device
            raise stored
        if stored is None:
            raise BadInput("duplicate_post_id", f"post {item.post_id!r} was labelled from other content")
        self.done(record)
        self.metrics.labeled.inc()
        if waiting.hints is not None and not waiting.hints.is_empty:
            self.metrics.hinted.inc()
        self.metrics.e2e_latency.observe(max(0.0, time.time() - item.timestamp_ms / 1000))

    async def _decode(self, post: Post) -> Prepared:
        """Decode at normal priority while the next batch lacks images, at idle priority beyond it (CPU model)."""
        loop = asyncio.get_running_loop()
        spare = self._spare_decode_pool
        if spare is not None and self.batcher.queued + self._urgent_decodes >= self.settings.max_batch:
            return await loop.run_in_executor(spare, self._prepare, post)  # the next batch is covered
        self._urgent_decodes += 1
        try:
            return await loop.run_in_executor(self._decode_pool, self._prepare, post)
        finally:
            self._urgent_decodes -= 1

    def _prepare(self, post: Post) -> Prepared:
        # Every source takes the same path: DCT-scaled decode on the CPU, or nvJPEG on the device.
        return self.models.current.prepare(load_bytes(post.image, self.settings),
                                           max_pixels=self.settings.max_image_pixels)

    async def _run_batch(self, items: Sequence[_Item]) -> list[bytes | BadInput | None]:
        """Per item: the stored label JSON, ``None`` for a duplicate post, or why its image was refused."""
        self.metrics.batch_size.observe(len(items))
        for item in items:  # they leave the queue: the next images may be prepared
            item.ahead.give_back()
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
                                       [items[n].fingerprint for n in kept])
        for n, value in zip(kept, stored):
            results[n] = value
        # Labels go to the partition of their post (same key, same partition count): one batch per partition.
        await self.send_to_partitions("labels", [(items[n].partition, items[n].post_id.encode(), results[n])
                                                 for n in kept if results[n] is not None])
        return results

    # -- lifecycle -------------------------------------------------------------------------------
    async def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        # Held posts and hints of these partitions stay uncommitted: their next owner re-reads them.
        gone = {(tp.topic, tp.partition) for tp in partitions}
        for post_id in [p for p, w in self._waiting.items() if (w.record.topic, w.record.partition) in gone]:
            del self._waiting[post_id]
        for post_id in [p for p, h in self._hints.items() if (h.record.topic, h.record.partition) in gone]:
            self._take_held(post_id)
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
        if self._spare_decode_pool is not None:
            self._spare_decode_pool.shutdown()
        self._parse_pool.shutdown()
        self._prep_pool.shutdown()
        self._model_pool.shutdown()


def _position(record: ConsumerRecord) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset


def _received_ms(record: ConsumerRecord) -> int:
    """The record's broker timestamp, or now when a producer set one no ``datetime`` can hold."""
    if record.timestamp is None or not 0 <= record.timestamp <= _MAX_TIMESTAMP_MS:
        return int(time.time() * 1000)
    return record.timestamp


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
