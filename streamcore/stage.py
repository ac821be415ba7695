"""The run loop every stream stage shares: poll → handle → write outputs → commit.

A stage subclass implements :meth:`Stage.handle` (and optionally :meth:`Stage.setup`, :meth:`Stage.tick`,
:meth:`Stage.on_assigned`, :meth:`Stage.on_revoked`). It calls :meth:`Stage.done` for each record once all of that
record's outputs are written; the loop commits per partition up to the lowest unfinished offset, after each round.

Error boundary: whatever a record raises ends it as one dead letter (``unexpected_error`` with the exception class and
message, or the :class:`BadInput` code), never as a dead loop. A round whose :meth:`Stage.handle` raises is handled
again record by record, so one poison record cannot take its round-mates down. Broker and Redis errors
(:data:`INFRA_ERRORS`) are retried with jittered backoff by :meth:`Stage.retrying` while the record stays unfinished
(uncommitted); they are counted and logged. Errors that retrying cannot cure (too large, invalid, not authorised:
:func:`streamcore.faults.rejection`) end the record as a dead letter, which itself is cut to fit what the producer may
send. An operation failing for ``stuck_after_s`` makes the stage say it is stuck (``/readyz``, ``stylestream_stuck``).

Topics: every ``topic_check_s``, and whenever a write or commit keeps failing, the stage checks that its input and
output topics exist; missing ones are created again (``recreate_topics``) or reported. An owned partition that ends
before the offsets already read from it restarted empty: read from its start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

import aiokafka.errors
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from streamcore import faults
from streamcore.exceptions import BadInput, InfrastructureError
from streamcore.faults import INFRA_ERRORS, Original, RecordRejected, Streaks, backoff, bounded_letter, rejection
from streamcore.health import HealthServer, Heartbeat
from streamcore.kafka import TopicWatch, make_consumer, make_producer, request_limit
from streamcore.metrics import StageMetrics
from streamcore.offsets import OffsetTracker
from streamcore.serde import encode
from streamcore.settings import Settings
from streamcore.sinks import produce_by_partition

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["INFRA_ERRORS", "Stage"]
_FIRST_BACKOFF_S = 0.1


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, stage: Stage) -> None:
        self._stage = stage

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._stage._revoke(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("%s assigned %s", self._stage.name, sorted((tp.topic, tp.partition) for tp in assigned))
        stage = self._stage
        for topic in (stage.settings.kafka.topic(t) for t in stage.inputs):
            owned = sum(1 for tp in assigned if tp.topic == topic)
            stage.metrics.assigned.labels(stage.name, topic).set(owned)
        stage.on_assigned(assigned)


class Stage(ABC):
    """One consumer-group member of a stream stage."""

    #: Stage name: consumer group suffix, metrics label, DLQ ``stage`` field.
    name: str = "stage"
    #: Logical input topics (before the prefix).
    inputs: tuple[str, ...] = ()
    #: Logical topics the stage writes (checked, and created again if missing, like the inputs).
    outputs: tuple[str, ...] = ("posts.dlq",)
    #: How long one poll may block; short so that timers in :meth:`tick` stay responsive.
    poll_timeout_ms: int = 100
    #: The consumer group's name after the prefix, when not the stage's name (a group per model version).
    group_suffix: str | None = None

    def __init__(self, settings: Settings, *, metrics: StageMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or StageMetrics(self.name)
        self.offsets = OffsetTracker()
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self._stopping = asyncio.Event()
        self.heartbeat = Heartbeat(60.0)
        self.ready = False
        self.streaks = Streaks()
        self._loop_streaks: dict[str, int] = {}  # fetch, commit: one streak each, held across rounds
        self.topics = TopicWatch(settings, tuple(dict.fromkeys((*self.inputs, *self.outputs))),
                                 self.metrics.topics_created.labels(self.name).inc, owner=self.name)
        self.metrics.stuck.labels(self.name).set_function(lambda: int(self.stuck() is not None))
        # Per-record counters, resolved once: labels() costs a lock and a dict lookup per call.
        self._processed = self.metrics.processed.labels(self.name)
        self._latency = self.metrics.stage_latency.labels(self.name)

    # -- hooks ---------------------------------------------------------------------------------
    async def setup(self) -> None:
        """Load models or other heavy state, before the consumer joins its group."""

    @abstractmethod
    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        """Process fetched records (possibly none); call :meth:`done` for each finished one."""

    async def tick(self) -> None:
        """Called every round even without records (join timeouts)."""

    def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        """React to a new assignment before the next fetch (the client forgets pauses on reassignment)."""

    async def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        """Finish or drop work of partitions that now belong to another member (before the last commit)."""

    async def shutdown(self) -> None:
        """Finish in-flight work before the final commit."""

    # -- helpers for subclasses ----------------------------------------------------------------
    def done(self, record: ConsumerRecord) -> None:
        """Mark a record's outputs as written, so its offset may be committed."""
        self.offsets.done(TopicPartition(record.topic, record.partition), record.offset)
        self._processed.inc()
        now = time.time()
        if record.timestamp is not None and 0 < record.timestamp / 1000 <= now:  # producers may set any value
            self._latency.observe(now - record.timestamp / 1000)

    async def dead_letter(self, record: ConsumerRecord, error: BadInput) -> None:
        """Send ``record`` to ``posts.dlq`` with the reason and mark it done.

        The letter fits the producer's request limit (the original cut to what fits); if the broker
        still refuses it as too large or invalid, it goes again without the original.

        Raises:
            InfrastructureError: the letter could not be written before the stage was stopped.
        """
        original = Original(record.topic, record.partition, record.offset, record.key, record.value or b"")
        limit = min(self.settings.limits.max_message_bytes, request_limit(self.producer, self.settings.limits))
        for keep in (True, False):
            letter = encode(bounded_letter(original, error, stage=self.name, limit=limit, keep_original=keep))
            try:  # the last try retries whatever happens: a letter is never given up
                await self.retrying("dead_letter", lambda v=letter: self.send("posts.dlq", original.letter_key(), v),
                                    rejectable=keep)
                break
            except RecordRejected as refused:
                log.error("%s: dead letter of %s[%d]@%d refused (%s); sending it without the original",
                          self.name, record.topic, record.partition, record.offset, refused.detail)
        log.warning("dead letter %s[%d]@%d: %s", record.topic, record.partition, record.offset,
                    str(error)[:500], extra={"repeat_key": f"dead letter {error.code}"})
        self.metrics.dead_letters.labels(self.name, error.code).inc()
        self.done(record)

    def skip(self, record: ConsumerRecord, error: BadInput) -> None:
        """Drop a bad record whose dead letter another stage owns (one letter per bad message); count it."""
        self.metrics.skipped.labels(self.name, error.code).inc()
        self.done(record)

    async def fail(self, record: ConsumerRecord, exc: Exception) -> None:
        """Dead-letter ``record`` after an error no check foresaw: ``unexpected_error``, traceback logged.

        Raises:
            InfrastructureError: the letter could not be written before the stage was stopped.
        """
        log.error("%s: unexpected error on %s[%d]@%d", self.name, record.topic, record.partition, record.offset,
                  exc_info=exc)
        await self.dead_letter(record, BadInput("unexpected_error", f"{type(exc).__name__}: {exc}"))

    async def retrying(self, operation: str, call: Callable[[], Awaitable[T]], *, rejectable: bool = True) -> T:
        """``await call()`` until it succeeds, backing off exponentially (with jitter) on :data:`INFRA_ERRORS`.

        Each failure is counted (``stylestream_infrastructure_errors_total{operation}``) and logged at a
        bounded rate; a streak of failures longer than ``stuck_after_s`` makes the stage stuck.

        Raises:
            RecordRejected: the error is permanent for what is written (too large, invalid, not
                authorised) and ``rejectable``: the caller dead-letters the record.
            InfrastructureError: the stage was asked to stop while the operation still failed; the
                record stays unfinished, so the next owner redoes it.
        """
        delays, streak = backoff(_FIRST_BACKOFF_S, self.settings.faults.retry_backoff_max_s), None
        try:
            while True:
                try:
                    return await call()
                except INFRA_ERRORS as exc:
                    self.metrics.infra_errors.labels(self.name, operation).inc()
                    code = rejection(exc)
                    if code is not None and rejectable:
                        raise RecordRejected(code, f"{operation}: {type(exc).__name__}: {exc}") from exc
                    if self._stopping.is_set():
                        raise InfrastructureError(f"{operation} failed while stopping: {exc}") from exc
                    if streak is None:
                        streak = self.streaks.begin(operation, exc)
                    else:
                        self.streaks.failed_again(streak, exc)
                    delay = next(delays)
                    log.warning("%s: %s failed (%s: %s); retrying in %.1fs", self.name, operation,
                                type(exc).__name__, exc, delay,
                                extra={"repeat_key": f"{self.name} {operation} {type(exc).__name__}"})
                    await self._check_topics(force=False)
                    await self._backoff(delay)
        finally:
            self.streaks.end(streak)

    async def _backoff(self, seconds: float) -> None:
        """Wait ``seconds`` (less if stopping). Waiting out an outage is alive: ``/readyz`` says stuck, not ``/healthz``."""
        self.heartbeat.beat()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Produce one message and wait for the broker's acknowledgement."""
        await (await self.producer.send(self.settings.kafka.topic(topic), value=value, key=key))

    async def send_to_partitions(self, topic: str, messages: Iterable[tuple[int, bytes | None, bytes]]) -> None:
        """Produce ``(partition, key, value)`` messages as per-partition batches; wait for all acks."""
        await produce_by_partition(self.producer, self.settings.kafka.topic(topic), messages)

    def stop(self) -> None:
        """Ask the loop to finish the current round, commit and leave the group (each within stop_timeout_s)."""
        self._stopping.set()

    def serve_health(self, port: int) -> int:
        """``/metrics``, ``/healthz`` and ``/readyz`` on ``port`` (0 = ephemeral); returns the bound port."""
        server = HealthServer(self.metrics.registry, heartbeat=self.heartbeat, ready=lambda: self.ready,
                              problem=self.stuck)
        return server.start(port, self.settings.metrics.health_host)

    def stuck(self) -> str | None:
        """Why the stage cannot make progress (an operation failing for ``stuck_after_s``, missing
        topics it may not create), or None. Cheap and thread-safe: ``/readyz`` calls it."""
        oldest = self.streaks.oldest()
        if self.topics.problem is not None or oldest is None or oldest[1] < self.settings.faults.stuck_after_s:
            return self.topics.problem
        operation, seconds, error = oldest
        return f"stuck: {self.name} {operation} failing for {seconds:.0f} s (last: {error})"

    # -- the loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Run until :meth:`stop` (or SIGTERM/SIGINT)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (embedded use)
                pass
        self.producer = make_producer(self.settings)
        self.consumer = make_consumer(self.settings, group=self.settings.kafka.group(self.group_suffix or self.name))
        self.consumer.subscribe([self.settings.kafka.topic(t) for t in self.inputs], listener=_Rebalance(self))
        await self.producer.start()
        try:
            # Heavy state (a model) loads before the consumer joins its group: a member that joined and then
            # loaded for longer than max_poll_interval_ms would be dropped and make the group rebalance.
            await self.setup()
            await self.consumer.start()
            self._set_ready(True)
            while not self._stopping.is_set():
                await self._round()
            self._set_ready(False)
            await faults.within(self.settings.faults.stop_timeout_s, self.shutdown(), f"{self.name}: finishing work")
            await self._commit()  # bounded by stop_timeout_s as well
        finally:
            for client in (self.consumer, self.producer):
                await faults.within(self.settings.faults.stop_timeout_s, client.stop(), f"{self.name}: leaving Kafka")

    def _set_ready(self, ready: bool) -> None:
        # Readiness does not require owning partitions: replicas beyond the partition count are spares.
        self.ready = ready
        self.metrics.ready.labels(self.name).set(int(ready))

    async def _round(self) -> None:
        try:
            batches = await self.consumer.getmany(timeout_ms=self.poll_timeout_ms,
                                                  max_records=self.settings.kafka.fetch_max_records)
        except aiokafka.errors.KafkaError as exc:
            self._loop_failed("fetch", exc)
            await self._check_topics(force=False)
            await self._backoff(self.settings.faults.retry_backoff_max_s)
            return
        self._loop_ok("fetch")
        records = [r for tp in sorted(batches, key=lambda t: (t.topic, t.partition)) for r in batches[tp]]
        for record in records:
            self.offsets.add(TopicPartition(record.topic, record.partition), record.offset)
            self.metrics.consumed.labels(self.name, record.topic).inc()
        await self._handle(records)
        try:
            await self.tick()
        except Exception:  # timers run again next round; a bug here must not stop the stage
            self.metrics.infra_errors.labels(self.name, "tick").inc()
            log.exception("%s: tick failed", self.name)
        await self._commit()
        await self._check_topics(force=False)
        self.metrics.inflight.labels(self.name).set(self.offsets.pending())
        await self._observe_partitions()
        self.heartbeat.beat()

    def _loop_failed(self, operation: str, exc: BaseException) -> None:
        """Count and log (at a bounded rate) a failure of the loop's own fetch or commit; open its streak."""
        self.metrics.infra_errors.labels(self.name, operation).inc()
        if operation in self._loop_streaks:
            self.streaks.failed_again(self._loop_streaks[operation], exc)
        else:
            self._loop_streaks[operation] = self.streaks.begin(operation, exc)
        log.warning("%s: %s failed (%s: %s); will retry", self.name, operation, type(exc).__name__, exc,
                    extra={"repeat_key": f"{self.name} {operation} {type(exc).__name__}"})

    def _loop_ok(self, operation: str) -> None:
        self.streaks.end(self._loop_streaks.pop(operation, None))

    async def _check_topics(self, *, force: bool) -> None:
        if self.consumer is not None:
            await self.topics.check(self.consumer, force=force)

    async def _handle(self, records: list[ConsumerRecord]) -> None:
        try:
            await self.handle(records)
            return
        except InfrastructureError as exc:  # stopping: what is unfinished stays uncommitted
            log.warning("%s: %s", self.name, exc)
            return
        except Exception:  # retried one record at a time below
            log.exception("%s: a round of %d records failed; handling them one by one", self.name, len(records))
        for record in records:
            if not self.offsets.is_pending(TopicPartition(record.topic, record.partition), record.offset):
                continue  # finished before the round failed
            try:
                try:
                    await self.handle([record])
                except InfrastructureError:
                    raise
                except BadInput as exc:  # its output was refused for good (RecordRejected)
                    await self.dead_letter(record, exc)
                except Exception as exc:  # noqa: BLE001 - the error boundary: this record, and only it, fails
                    await self.fail(record, exc)
            except InfrastructureError as stop:
                log.warning("%s: %s", self.name, stop)
                return

    async def _observe_partitions(self) -> None:
        """Lag of every owned partition (every round, so a stuck consumer's lag keeps growing on the
        dashboard); a partition whose end lies before what was read from it restarted empty (deleted and
        created again, a broker that lost its storage) and is read again from its start."""
        restarted, now = [], time.monotonic()
        for tp in self.consumer.assignment():
            end, position = self.consumer.highwater(tp), self.offsets.next_offset(tp)
            if end is not None and position is not None:
                self.metrics.lag.labels(self.name, tp.topic, str(tp.partition)).set(max(0, end - position))
            if self.offsets.restarted(tp, end, now):
                restarted.append(tp)
        if restarted:
            log.error("%s: %s end before the offsets already read: the broker lost them; reading them from the start",
                      self.name, sorted((tp.topic, tp.partition) for tp in restarted))
            self.metrics.partitions_restarted.labels(self.name).inc(len(restarted))
            await self._forget(restarted)
            await self.consumer.seek_to_beginning(*restarted)

    async def _commit(self) -> None:
        assigned = self.consumer.assignment()
        offsets = {tp: o for tp, o in self.offsets.committable().items() if tp in assigned}
        if not offsets:
            return
        commit = self.consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
        try:  # bounded: the client waits for a group coordinator as long as the broker is gone
            await asyncio.wait_for(commit, self.settings.faults.stop_timeout_s)
        except (aiokafka.errors.KafkaError, TimeoutError) as exc:
            # CommitFailedError in a rebalance, a broker hiccup or outage: the offsets stay uncommitted and are
            # tried again next round (or redone by the partition's next owner).
            self._loop_failed("commit", exc)
            return
        self._loop_ok("commit")
        self.offsets.mark_committed(offsets)
        self.metrics.commits.labels(self.name).inc()

    async def _revoke(self, revoked: list[TopicPartition]) -> None:
        if revoked:  # the first join "revokes" nothing
            self.metrics.rebalances.labels(self.name).inc()
        try:
            await self.on_revoked(revoked)
        except Exception:  # the revocation goes ahead; unfinished records go to the next owner
            log.exception("%s: on_revoked failed", self.name)
        try:
            await self._commit()
        except Exception as exc:  # noqa: BLE001 - the group may already be gone; the next owner redoes
            log.warning("%s: commit on revoke failed: %s", self.name, exc)
        self.offsets.drop(revoked)
        for tp in revoked:
            try:
                self.metrics.lag.remove(self.name, tp.topic, str(tp.partition))
            except KeyError:
                pass

    async def _forget(self, partitions: list[TopicPartition]) -> None:
        """Drop the stage's work and the offsets of partitions whose records are gone; commit nothing."""
        try:
            await self.on_revoked(partitions)
        except Exception:  # the records are gone either way
            log.exception("%s: on_revoked failed", self.name)
        self.offsets.drop(partitions)
