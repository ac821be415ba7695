"""Trainer stage: keep posts and corrections durably, retrain when due (one replica at a time), guard promotions.

* **Inputs.** One consumer group (``<prefix>-trainer``) reads ``posts`` and ``feedback``. Posts go into
  the durable post store (:mod:`training.state`, in Redis); a feedback record joins to its stored post
  and becomes a training :class:`~training.feedback.Example` (image, hints mined from the post's text,
  targets from the feedback), stored durably too. A record's offset is committed only after its write
  to Redis returned, so a crash re-reads whatever was not stored (and a replayed correction is stored
  once). Feedback for a post not stored yet waits for it in Redis (``result="held"``; a trainer catching up on
  ``posts`` reads the small ``feedback`` topic first) and joins when the post is stored, before the post's offset
  is committed; malformed feedback is dead-lettered. Posts of a fetch are handled before its feedback.
* **When.** :meth:`TrainerStage.tick` asks Redis about once a second whether a run is due (:func:`due`:
  nothing serves yet; the schedule ``interval_s``; or ``min_feedback`` corrections absorbed since the
  last run started, counted across replicas), then takes the run lease (:mod:`streamcore.lease`): one
  run at a time across all replicas, and the holder marks its trigger consumed before letting go. The
  run (:mod:`training.retrain`) trains on a dedicated thread, so the loop keeps polling, heartbeating
  and renewing the lease.
* **Cancellation.** SIGTERM (:meth:`TrainerStage.stop`) cancels the run at its next step boundary; a
  cancelled run publishes nothing and leaves its trigger pending for the next start.
* **Live guard.** Every correction is also a verdict on the label the classifier gave the post
  (:mod:`training.guard`); a newly promoted version that agrees worse than the previous one is rolled
  back.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

from serving.promotion import PointerMoved
from streamcore import redisconn
from streamcore.exceptions import BadInput
from streamcore.lease import Lease, LeaseLost
from streamcore.schemas import Feedback
from streamcore.serde import decode, decode_post
from streamcore.settings import Settings
from streamcore.stage import Stage
from training.feedback import Example, StoredPost, join, targets
from training.guard import LiveGuard
from training.retrain import (
    RunCancelled,
    RunProgress,
    RunResult,
    Trainer,
    TrainerConfig,
)
from training.state import RunStatus, TrainerState
from training.text import TextMiner

log = logging.getLogger(__name__)

#: After a failed run, no replica starts another for this long.
_RETRY_AFTER_S = 60.0
#: After a run an operator's promotion superseded, the next starts this soon (from the version they chose).
_REDO_AFTER_S = 5.0
#: How often a replica asks Redis whether a run is due.
_CHECK_EVERY_S = 1.0


def due(status: RunStatus, now: float, *, interval_s: float | None, min_feedback: int | None) -> bool:
    """Whether a run should start at unix time ``now``: the schedule (which runs at once while nothing serves and
    no run has finished: a rejected first candidate waits for the next slot, not a loop of retries), or enough
    feedback; never during the back-off after a failed run."""
    if status.retry_at is not None and now < status.retry_at:
        return False
    bootstrap = not status.serving and not status.finished
    scheduled = interval_s is not None and (bootstrap or (status.next_run_at or float("inf")) <= now)
    return scheduled or (min_feedback is not None and status.pending >= min_feedback)


class TrainerStage(Stage):
    """Consumes posts and feedback into the durable state; runs :meth:`Trainer.run_once` when due, off the loop."""

    name = "trainer"
    inputs = ("posts", "feedback")

    def __init__(self, settings: Settings, config: TrainerConfig | None = None, **kwargs) -> None:
        super().__init__(settings, **kwargs)
        self.config = config or TrainerConfig.from_settings(settings)
        self.trainer = Trainer(settings, self.config, self.metrics)
        client = redisconn.connect(settings.redis)
        self.state = TrainerState(client, prefix=settings.redis.prefix, model_current=settings.redis.keys.model_current,
                                  max_posts=self.config.max_posts, max_examples=self.config.max_examples)
        self.lease = Lease(client, settings.redis.keys.run_lease, ttl_s=settings.trainer.lease_ttl_s)
        self.guard = LiveGuard(settings, client, self.metrics)
        self.last_run: RunResult | None = None
        self.feedback = Counter("stylestream_trainer_feedback_total", "Feedback records, by outcome", ("result",),
                                registry=self.metrics.registry)
        self.stored_posts = Gauge("stylestream_trainer_stored_posts", "Posts held for joining feedback",
                                  registry=self.metrics.registry)
        self.held_feedback = Gauge("stylestream_trainer_held_feedback", "Corrections waiting for their post",
                                   registry=self.metrics.registry)
        self._train_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="train")
        self._cancel = threading.Event()
        self._running: asyncio.Future | None = None
        self._next_check = 0.0
        self._next_renew = 0.0

    async def setup(self) -> None:
        loop = asyncio.get_running_loop()
        self.miner = await loop.run_in_executor(None, TextMiner.load, self.trainer.ontology)
        # The miner's vocabularies are millions of long-lived objects: keep them out of every full garbage
        # collection, including the ones at interpreter exit (seconds on a busy box, after SIGTERM).
        gc.freeze()
        if self.config.interval_s is not None:
            await loop.run_in_executor(None, self.state.schedule, time.time() + self.config.interval_s)

    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        posts_topic = self.settings.kafka.topic("posts")
        loop = asyncio.get_running_loop()
        posts = [r for r in records if r.topic == posts_topic]  # posts first: see module doc
        if posts:
            await self._on_posts(posts)
        corrections, judged = [], []
        for record in records:
            if record.topic == posts_topic:
                continue
            try:
                corrections.append(await self._on_feedback(record))
            except BadInput as exc:
                await self.dead_letter(record, exc)
                continue
            judged.append(record)
        if corrections:  # verdicts are idempotent per correction: Redis away, the same ones are tried again
            await self.retrying("guard", lambda: loop.run_in_executor(None, self._judge, corrections))
        for record in judged:  # only now: a stop while the guard waits leaves them to be redelivered and judged
            self.done(record)
        if records:
            try:
                for gauge, count in zip((self.stored_posts, self.held_feedback),
                                        await loop.run_in_executor(None, self.state.counts)):
                    gauge.set(count)
            except RedisError:  # a gauge: the next round sets it (the records above are done)
                pass

    async def _on_posts(self, records: Sequence[ConsumerRecord]) -> None:
        keep, stored = [], []
        for record in records:
            try:
                keep.append((record, decode_post(record.value, self.settings.limits)))
            except BadInput as exc:  # the classifier owns a bad post's letter; bad feedback's is ours
                self.skip(record, exc)
        loop = asyncio.get_running_loop()
        for _, post in keep:
            try:
                stored.append(await loop.run_in_executor(
                    None, lambda p=post: StoredPost.from_post(p, self.settings, image_size=self.config.post_image_size)))
            except BadInput as exc:  # the classifier dead-letters image problems; here the post is just not kept
                log.info("trainer: post %s not stored: %s", post.post_id, exc)
        # Redis away: retried (the posts stay uncommitted), never a dead letter for a post that is fine.
        await self.retrying("post_store", lambda: loop.run_in_executor(None, self.state.put_posts, stored))
        if stored:  # before the posts' offsets: a crash here re-reads the posts and joins again
            await self.retrying("feedback_store", lambda: loop.run_in_executor(None, self._join_waiting, stored))
        for record, _ in keep:  # written: now their offsets may be committed
            self.done(record)

    async def _on_feedback(self, record: ConsumerRecord) -> Feedback:
        feedback = decode(record.value, Feedback, max_bytes=self.settings.limits.max_message_bytes)
        loop = asyncio.get_running_loop()
        outcome = await self.retrying("feedback_store", lambda: loop.run_in_executor(None, self._absorb, feedback))
        self.feedback.labels(outcome).inc()
        if outcome == "held":
            log.info("feedback %s[%d]@%d: post %s not stored yet; the correction waits for it",
                     record.topic, record.partition, record.offset, feedback.post_id)
        return feedback

    def _absorb(self, feedback: Feedback) -> str:
        """Join ``feedback`` with its stored post and store the example (``"joined"``), or hold it until the post is
        stored (``"held"``).

        Raises:
            BadInput: the correction names what no model of the kind it teaches can learn (checked before the
                post is looked up: a bad correction of an unknown post is a dead letter too, never a verdict for
                the live guard).
        """
        multi = self.trainer.learns_multi()
        targets(feedback, ontology=self.trainer.ontology, multi=multi)
        post = self.state.post(feedback.post_id)
        if post is None:
            held = self.state.hold(feedback.post_id, feedback.model_dump_json().encode())
            self._dropped(held.dropped)
            if not held.stored:
                return "held"
            post = self.state.post(feedback.post_id)  # stored since it was looked up
            if post is None:  # and already evicted by newer posts
                return "unknown_post"
        self._store_example(feedback, post, multi=multi)
        return "joined"

    def _join_waiting(self, posts: Sequence[StoredPost]) -> None:
        """Join the corrections that waited for any of ``posts``, just stored."""
        by_id = {post.post_id: post for post in posts}
        waiting = self.state.waiting(list(by_id))
        multi = self.trainer.learns_multi() if waiting else False  # once per batch: a Redis read and a config
        for post_id, blob in waiting.items():
            try:
                self._store_example(Feedback.model_validate_json(blob), by_id[post_id], multi=multi)
                self.feedback.labels("joined").inc()
            except (BadInput, ValueError) as exc:  # e.g. the served model's kind changed while it waited
                self.feedback.labels("dropped").inc()
                log.warning("feedback for post %s held until the post came, then not learnable: %s", post_id, exc)
            self.state.release(post_id, blob)

    def _store_example(self, feedback: Feedback, post: StoredPost, *, multi: bool) -> None:
        example = join(feedback, post, ontology=self.trainer.ontology, miner=self.miner, settings=self.settings,
                       multi=multi, image_size=self.config.post_image_size)
        self.state.put_example(feedback.post_id, example)

    def _dropped(self, count: int) -> None:
        if count:
            self.feedback.labels("dropped").inc(count)
            log.warning("%d held correction(s) dropped: more than %d waited for posts never stored", count,
                        self.config.max_examples)

    def _judge(self, corrections: list[Feedback]) -> None:
        self.guard.observe(corrections)
        self.guard.check()

    async def tick(self) -> None:
        try:
            await self._tick()
        except RedisError as exc:  # Redis away: asked again within a second; one line (rate-limited), no traceback
            self.metrics.infra_errors.labels(self.name, "tick").inc()
            log.warning("trainer: cannot check whether a run is due (%s: %s)", type(exc).__name__, exc)

    async def _tick(self) -> None:
        loop, now = asyncio.get_running_loop(), time.monotonic()
        if self._running is not None and not self._running.done():
            if now >= self._next_renew:
                self._next_renew = now + self.settings.trainer.lease_ttl_s / 3
                if not await loop.run_in_executor(None, self.lease.renew):
                    log.error("trainer: run lease lost; cancelling the run")
                    self._cancel.set()
            return
        if now < self._next_check or self._stopping.is_set():
            return
        self._next_check = now + _CHECK_EVERY_S
        if not await loop.run_in_executor(None, self._is_due):
            return
        if await loop.run_in_executor(None, self.lease.acquire) is None:
            return  # another replica is training
        # Re-check under the lease: the previous holder marks its trigger consumed before releasing.
        if not await loop.run_in_executor(None, self._is_due):
            await loop.run_in_executor(None, self.lease.release)
            return
        examples, absorbed = await loop.run_in_executor(None, self.state.snapshot)
        self._next_renew = now + self.settings.trainer.lease_ttl_s / 3
        self._cancel = threading.Event()  # per run: a run cancelled for a lost lease must not block the next
        self._running = loop.run_in_executor(self._train_pool, self._run, examples, absorbed)

    def _is_due(self) -> bool:
        return due(self.state.status(), time.time(), interval_s=self.config.interval_s,
                   min_feedback=self.config.min_feedback)

    def _run(self, examples: list[Example], absorbed: int) -> None:
        self.metrics.trainer_running.set(1)
        try:
            self.last_run = self.trainer.run_once(examples, progress=RunProgress(self.metrics, self._cancel),
                                                  lease=self.lease)
            interval = self.config.interval_s
            self.state.finish_run(absorbed, next_run_at=time.time() + interval if interval is not None else None)
        except RunCancelled as exc:  # its trigger stays pending: the next start trains on the same data
            log.info("%s; nothing published", exc)
        except LeaseLost as exc:
            log.error("trainer run abandoned: %s", exc)
        except PointerMoved as exc:  # its trigger stays pending: redone soon, from what the operator chose
            log.warning("trainer run superseded: %s; redoing it in %.0f s", exc, _REDO_AFTER_S)
            self.state.retry_after(time.time() + _REDO_AFTER_S)
        except Exception:  # a failed run is counted and logged; the next one may succeed
            log.exception("trainer run failed; retrying in %.0f s", _RETRY_AFTER_S)
            self.state.retry_after(time.time() + _RETRY_AFTER_S)
        finally:
            self.lease.release()
            self.metrics.trainer_running.set(0)

    def stop(self) -> None:
        """Stop the loop and cancel a run in progress at its next step boundary."""
        self._cancel.set()
        super().stop()

    async def shutdown(self) -> None:
        """Wait for a cancelled run to reach its step boundary (seconds, not the whole run)."""
        self._cancel.set()
        if self._running is not None and not self._running.done():
            log.info("trainer: stopping the training run in progress")
            await self._running
        self._train_pool.shutdown()


def run(settings: Settings) -> None:
    """Run the trainer stage until SIGTERM/SIGINT (``stylestream worker trainer``)."""
    stage = TrainerStage(settings)
    stage.serve_health(settings.metrics.stage_port("trainer"))
    asyncio.run(stage.run())
