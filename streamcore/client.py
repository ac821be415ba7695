"""Public client API for people who use stylestream: publish posts, corrections and catalogue items, read labels.

Synchronous (kafka-python, redis-py) so it drops into scripts and notebooks::

    with StylestreamClient(Settings.named(kafka="broker:9092", redis_url="redis://cache:6379")) as client:
        delivery = client.publish_image("look.jpg", caption="new #ootd 👗")
        client.flush()                                 # raises DeliveryError naming the posts the broker did not take
        label = client.wait_label(delivery.post_id, timeout=60)
        print(label.post_id, [c.term for c in label.categories] or label.abstain)

Inputs are checked at the call (a file that does not exist, an image that cannot be sent), delivery failures are
reported by :meth:`StylestreamClient.flush` (and ``close``), and labels are read tolerantly: fields and heads this
version does not know are kept, a record that cannot be read is skipped and counted in ``skipped_labels``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Self

import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaConfigurationError, KafkaError, KafkaTimeoutError

from streamcore import redisconn
from streamcore.delivery import Delivery, close_producer, reason
from streamcore.exceptions import BadInput, DeliveryError, InfrastructureError
from streamcore.kafka import bootstrap, kafka_python_security
from streamcore.kafka_options import blamed_on_options, options_for
from streamcore.schemas import Feedback, ImageSource, LabelView, Post, check_post_id, utcnow
from streamcore.serde import decode, encode
from streamcore.settings import Settings
from streamcore.sources import check_image, image_source

#: What users of the client import from here.
__all__ = ["Delivery", "DeliveryError", "LabelView", "StylestreamClient", "check_image", "image_source"]

log = logging.getLogger(__name__)

#: Skipped labels logged one by one before the client logs only every thousandth.
_LOGGED_SKIPS = 5


class StylestreamClient:
    """Publishes ``post/v1`` and ``feedback/v1`` records; reads ``label/v1`` records."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: KafkaProducer | None = None
        self._redis: redis.Redis | None = None
        self._lock = threading.Lock()  # the producer's I/O thread settles deliveries
        self._outstanding: dict[int, Delivery] = {}
        self._failed: dict[str, str] = {}
        #: Label records skipped because they could not be read, by reason (``bad_json``, ``bad_schema``...).
        self.skipped_labels: Counter[str] = Counter()

    # -- publishing ------------------------------------------------------------------------------
    def publish(self, post: Post) -> Delivery:
        """Send a post to the ``posts`` topic, keyed by its id.

        Raises:
            ValueError: the image source cannot be read by a stage, or the post exceeds ``max_message_bytes``.
        """
        check_image(post.image)
        value = encode(post)
        if len(value) > self.settings.limits.max_message_bytes:
            raise ValueError(f"post {post.post_id} is {len(value)} bytes, limit {self.settings.limits.max_message_bytes}")
        return self._send("posts", post.post_id, value)

    def publish_image(self, image: bytes | Path | str | ImageSource, *, caption: str = "",
                      comments: list[str] | None = None, hashtags: list[str] | None = None,
                      user_tags: list[str] | None = None, user: str = "anonymous",
                      post_id: str | None = None) -> Delivery:
        """Publish a post from image bytes, a local file, an ``http(s)://`` URL or an :class:`ImageSource`.

        Raises:
            FileNotFoundError: a path that names no local file.
            ValueError: see :meth:`publish`.
        """
        post = Post(post_id=post_id or uuid.uuid4().hex, created_at=utcnow(), user=user, caption=caption,
                    comments=comments or [], hashtags=hashtags or [], user_tags=user_tags or [],
                    image=image_source(image))
        return self.publish(post)

    def add_catalogue_item(self, image: bytes | Path | str | ImageSource, *, item_id: str | None = None,
                           title: str = "", shop: str = "catalogue") -> Delivery:
        """Send a shop's item to the ``catalogue`` topic, keyed by its id: the catalogue stage labels its photo with the
        serving model and the item joins the repository recommendations are drawn from (docs/recommendations.md).

        The record is a ``post/v1``: ``post_id`` is the item id (default: a digest of the image source, its bytes or
        its URL or path, so adding one photo twice is one item), ``user`` the shop, ``caption`` the title. Item ids
        share the post ids' space.

        Raises:
            FileNotFoundError, ValueError: as :meth:`publish_image`.
        """
        source = image_source(image)
        item_id = item_id or "item-" + hashlib.sha256(source.model_dump_json().encode()).hexdigest()[:20]
        post = Post(post_id=item_id, created_at=utcnow(), user=shop, caption=title, image=source)
        check_image(post.image)
        value = encode(post)
        if len(value) > self.settings.limits.max_message_bytes:
            raise ValueError(f"item {item_id} is {len(value)} bytes, limit {self.settings.limits.max_message_bytes}")
        return self._send("catalogue", item_id, value)

    def remove_catalogue_item(self, item_id: str) -> Delivery:
        """Remove a shop's item: a tombstone (its id as the key, no value) on the compacted ``catalogue`` topic;
        the catalogue stage takes it out of the repository.

        Raises:
            BadInput: ``item_id`` is not a post id.
        """
        return self._send("catalogue", check_post_id(item_id), None)

    def correct(self, post_id: str, categories: Iterable[str], *, subcategories: Iterable[str] = (),
                attributes: Iterable[str] = (), sent_by: str | None = None) -> Delivery:
        """Send a user's correction of one post's labels (ontology term names) to the ``feedback`` topic; no
        category says the photo shows no garment.

        Raises:
            pydantic.ValidationError: an invalid post id, or no category with sub-categories or attributes.
        """
        return self.send_feedback(Feedback(post_id=post_id, categories=list(categories),
                                           subcategories=list(subcategories), attributes=list(attributes),
                                           sent_by=sent_by))

    def send_feedback(self, feedback: Feedback) -> Delivery:
        """Send a correction to the ``feedback`` topic, keyed by its post id."""
        return self._send("feedback", feedback.post_id, encode(feedback))

    def serving_version(self) -> str | None:
        """The version classifiers serve (the Redis pointer); None while nothing is promoted.

        Raises:
            redis.exceptions.RedisError: Redis cannot be reached.
        """
        raw = self._redis_client().get(self.settings.redis.keys.model_current)
        return raw.decode() if raw is not None else None

    def _send(self, topic: str, key: str, value: bytes | None) -> Delivery:
        producer = self._connected_producer()
        try:
            future = producer.send(self.settings.kafka.topic(topic), key=key.encode(), value=value)
        except KafkaError as exc:  # no metadata for the topic in time, a record the producer refuses
            error = reason(exc)
            with self._lock:
                self._failed[key] = error
            return Delivery(key, error=error)
        delivery = Delivery(key, future, limit_s=self._flush_limit_s)
        with self._lock:  # before the callbacks: they may run at once
            self._outstanding[id(delivery)] = delivery
        future.add_callback(self._delivered, delivery)
        future.add_errback(self._not_delivered, delivery)
        return delivery

    def _delivered(self, delivery: Delivery, _metadata: Any) -> None:
        with self._lock:
            self._outstanding.pop(id(delivery), None)

    def _not_delivered(self, delivery: Delivery, exc: BaseException) -> None:
        with self._lock:
            self._outstanding.pop(id(delivery), None)
            self._failed[delivery.post_id] = reason(exc)

    def _connected_producer(self) -> KafkaProducer:
        if self._producer is None:
            timeout_ms, linger_ms = int(self.settings.kafka.delivery_timeout_s * 1000), 5
            # The broker not answering is reported within delivery_timeout_s, not kafka-python's minutes.
            # Not idempotent (kafka-python's default is): a Tansu broker killed between recording a producer's
            # sequence and storing its batch acknowledges the retry as a duplicate and the post is lost (1 in 3
            # kills, measured); a plain retry can only duplicate a post, which the stages take as a redo.
            self._producer = _connect(
                KafkaProducer, self.settings, acks="all", linger_ms=linger_ms, delivery_timeout_ms=timeout_ms,
                enable_idempotence=False,
                request_timeout_ms=min(30_000, timeout_ms - linger_ms), max_block_ms=timeout_ms,
                max_request_size=self.settings.limits.max_message_bytes + 65536)
        return self._producer

    @property
    def failed(self) -> dict[str, str]:
        """Records known to have failed since the last :meth:`flush`: ``{post_id: reason}``."""
        with self._lock:
            return dict(self._failed)

    @property
    def _flush_limit_s(self) -> float:
        # A batch in flight when the broker went away can be retried past its delivery timeout (kafka-python
        # 3.0 left flush() waiting forever on one): nothing waits longer than this for the broker.
        return self.settings.kafka.delivery_timeout_s + 5.0

    def flush(self, timeout: float | None = None) -> None:
        """Block until every published record is delivered or has failed, for ``timeout`` seconds at most (by
        default a little longer than ``delivery_timeout_s``).

        Raises:
            DeliveryError: listing every record not delivered since the last flush (those still unanswered after
                ``timeout`` included); the client stays usable.
        """
        timeout = self._flush_limit_s if timeout is None else timeout
        if self._producer is not None:
            try:
                self._producer.flush(timeout)
            except KafkaTimeoutError:
                pass  # the records still outstanding are reported below
        with self._lock:
            failed, self._failed = self._failed, {}
            for delivery in self._outstanding.values():
                failed.setdefault(delivery.post_id, f"no answer from the broker within {timeout:g}s")
            self._outstanding.clear()
        if failed:
            raise DeliveryError(failed)

    # -- reading ---------------------------------------------------------------------------------
    def labels(self, *, timeout: float | None = None, from_beginning: bool = False,
               group: str | None = None, stop: threading.Event | None = None) -> Iterator[LabelView]:
        """Labels from the ``labels`` topic as they arrive; stops after ``timeout`` s without one, or within
        half a second of ``stop`` being set (a Ctrl-C handler sets it: an interrupt raised inside the
        Kafka client could leave it unable to close). Records that cannot be read are skipped and counted.
        Without ``from_beginning`` or ``group`` it starts at the end of each partition as its first fetch reports
        it, not as the broker's ListOffsets does (Tansu on S3 answers that far behind the end)."""
        consumer = _connect(
            KafkaConsumer, self.settings, self.settings.kafka.topic("labels"), group_id=group,
            auto_offset_reset="earliest" if from_beginning else "latest", enable_auto_commit=group is not None,
            session_timeout_ms=self.settings.kafka.session_timeout_ms)
        # From the latest: the end as the first fetch of each partition saw it (a group resumes where it was).
        ends: dict[TopicPartition, int] | None = None if from_beginning or group is not None else {}
        try:
            idle_since = time.monotonic()
            while stop is None or not stop.is_set():
                batches = consumer.poll(timeout_ms=500)
                if ends is not None:
                    _skip_to_fetched_end(consumer, ends, batches)
                for records in batches.values():
                    for record in records:
                        label = self._read(record.value, f"{record.topic}[{record.partition}]@{record.offset}")
                        if label is not None:
                            yield label
                if batches:
                    idle_since = time.monotonic()
                elif timeout is not None and time.monotonic() - idle_since >= timeout:
                    return
        finally:
            consumer.close()

    def label(self, post_id: str) -> LabelView | None:
        """The stored label of one post from Redis, if any (None for a stored value that cannot be read)."""
        raw = self._redis_client().get(self.settings.redis.keys.label(post_id))
        return self._read(raw, self.settings.redis.keys.label(post_id)) if raw else None

    def wait_label(self, post_id: str, *, timeout: float) -> LabelView:
        """The label of ``post_id`` from Redis, waiting up to ``timeout`` seconds for it to be written.

        Raises:
            TimeoutError: no label within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while (label := self.label(post_id)) is None:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no label for {post_id} within {timeout:g}s")
            time.sleep(0.1)
        return label

    def stream_labels(self, *, timeout: float | None = None, last_id: str = "$") -> Iterator[LabelView]:
        """Labels from the ``<prefix>:labels`` Redis Stream (``last_id="0"`` replays the capped history)."""
        client = self._redis_client()
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            block = 1000 if deadline is None else max(1, int((deadline - time.monotonic()) * 1000))
            for _, entries in client.xread({self.settings.redis.keys.labels_stream: last_id}, block=block, count=500) or []:
                for entry_id, fields in entries:
                    last_id = entry_id
                    if deadline is not None:
                        deadline = time.monotonic() + timeout
                    label = self._read(fields.get(b"label"), f"{self.settings.redis.keys.labels_stream} {entry_id!r}")
                    if label is not None:
                        yield label

    def _read(self, raw: bytes | None, where: str) -> LabelView | None:
        try:
            return decode(raw, LabelView, max_bytes=self.settings.limits.max_message_bytes)
        except BadInput as exc:
            self.skipped_labels[exc.code] += 1
            skipped = self.skipped_labels.total()
            if skipped <= _LOGGED_SKIPS or skipped % 1000 == 0:
                log.warning("label %s skipped (%d so far): %s", where, skipped, exc)
            return None

    def _redis_client(self) -> redis.Redis:
        if self._redis is None:
            if not self.settings.redis.url:
                raise ValueError("STYLESTREAM_REDIS_URL is not set")
            self._redis = redisconn.connect(self.settings.redis)
        return self._redis

    def close(self) -> None:
        """Flush and release connections.

        Raises:
            DeliveryError: as :meth:`flush` (connections are released first).
        """
        try:
            self.flush()
        finally:
            if self._producer is not None:
                close_producer(self._producer)
                self._producer = None
            if self._redis is not None:
                self._redis.close()
                self._redis = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            self.close()
        except DeliveryError as failure:
            if exc_type is None:
                raise
            # The error already on its way out is the one to see; this one is logged, not lost.
            log.error("%s", failure)


def _skip_to_fetched_end(consumer: KafkaConsumer, ends: dict[TopicPartition, int],
                         batches: dict[TopicPartition, list]) -> None:
    """Drop from ``batches`` (in place) the records a consumer reset to "latest" read from before the end of
    its partition as the first fetch saw it, and move it there.

    The reset asks the broker for the end (ListOffsets), which Tansu storing in S3 answers far behind the end:
    a reader "from now" would start with old records. Every fetch answer carries the partition's high
    watermark (kafka-python's ``highwater()``, known once a fetch of the partition was read): the first one
    known per partition is taken as the end, ``ends`` remembers it.
    """
    for tp in consumer.assignment():
        if tp in ends or (end := consumer.highwater(tp)) is None:
            continue
        ends[tp] = end
        if consumer.position(tp) < end:  # the rest of the old records need not be fetched
            consumer.seek(tp, end)
    for tp, records in list(batches.items()):
        kept = [record for record in records if record.offset >= ends.get(tp, 0)]
        if kept:
            batches[tp] = kept
        else:
            del batches[tp]


def _connect(factory: type, settings: Settings, *args: Any, **options: Any) -> Any:
    """A kafka-python client that gives up bootstrapping after ``delivery_timeout_s``.

    Raises:
        InfrastructureError: no broker answered.
        KafkaOptionsError: the client refused a value of ``STYLESTREAM_KAFKA_OPTIONS``.
    """
    given = options_for(factory, settings.kafka.options)
    try:
        with blamed_on_options(factory, given):
            return factory(*args, **{"bootstrap_servers": bootstrap(settings.kafka),
                                     "bootstrap_timeout_ms": int(settings.kafka.delivery_timeout_s * 1000),
                                     **options, **given, **kafka_python_security(settings.security)})
    except KafkaConfigurationError:
        raise  # a client refusing its configuration is no broker out of reach
    except KafkaError as exc:
        raise InfrastructureError(f"cannot reach the Kafka broker at {settings.kafka.bootstrap}: {exc}") from None
