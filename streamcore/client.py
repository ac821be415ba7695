"""Public client API for people who use stylestream: publish posts, read labels.

Synchronous (kafka-python, redis-py) so it drops into scripts and notebooks::

    with StylestreamClient(Settings(kafka="broker:9092", redis_url="redis://cache:6379")) as client:
        post_id = client.publish_image("look.jpg", caption="new #ootd 👗")
        for label in client.labels(timeout=30):
            print(label.post_id, [c.term for c in label.categories] or label.abstain)
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import redis
from kafka import KafkaConsumer, KafkaProducer

from streamcore import redisconn
from streamcore.kafka import bootstrap, kafka_python_security
from streamcore.schemas import ImageSource, Label, Post, utcnow
from streamcore.serde import decode, encode
from streamcore.settings import Settings


class StylestreamClient:
    """Publishes ``post/v1`` messages and iterates over ``label/v1`` results."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: KafkaProducer | None = None
        self._redis: redis.Redis | None = None

    # -- publishing ------------------------------------------------------------------------------
    def publish(self, post: Post) -> str:
        """Send a post keyed by its id (so its hints land on the same partition); returns the id."""
        if self._producer is None:
            self._producer = KafkaProducer(bootstrap_servers=bootstrap(self.settings), acks="all", linger_ms=5,
                                           max_request_size=self.settings.max_message_bytes + 65536,
                                           **self.settings.kafka_options, **kafka_python_security(self.settings))
        self._producer.send(self.settings.topic("posts"), key=post.post_id.encode(), value=encode(post))
        return post.post_id

    def publish_image(self, image: bytes | Path | str, *, caption: str = "", comments: list[str] | None = None,
                      hashtags: list[str] | None = None, user_tags: list[str] | None = None, user: str = "anonymous",
                      post_id: str | None = None) -> str:
        """Publish a post from image bytes, a local file, an ``http(s)://`` URL or a path under the image root."""
        if isinstance(image, bytes):
            source = ImageSource(b64=base64.b64encode(image).decode())
        elif isinstance(image, str) and image.startswith(("http://", "https://")):
            source = ImageSource(url=image)
        elif Path(image).is_file():
            source = ImageSource(b64=base64.b64encode(Path(image).read_bytes()).decode())
        else:
            source = ImageSource(path=str(image))
        post = Post(post_id=post_id or uuid.uuid4().hex, created_at=utcnow(), user=user, caption=caption,
                    comments=comments or [], hashtags=hashtags or [], user_tags=user_tags or [], image=source)
        return self.publish(post)

    def flush(self) -> None:
        """Block until every published post is acknowledged."""
        if self._producer is not None:
            self._producer.flush()

    # -- reading ---------------------------------------------------------------------------------
    def labels(self, *, timeout: float | None = None, from_beginning: bool = False,
               group: str | None = None, stop: threading.Event | None = None) -> Iterator[Label]:
        """Labels from the ``labels`` topic as they arrive; stops after ``timeout`` s without one, or within
        half a second of ``stop`` being set (a Ctrl-C handler sets it: an interrupt raised inside the
        Kafka client could leave it unable to close)."""
        consumer = KafkaConsumer(
            self.settings.topic("labels"), bootstrap_servers=bootstrap(self.settings), group_id=group,
            auto_offset_reset="earliest" if from_beginning else "latest", enable_auto_commit=group is not None,
            session_timeout_ms=self.settings.session_timeout_ms,
            **self.settings.kafka_options, **kafka_python_security(self.settings),
        )
        try:
            idle_since = time.monotonic()
            while stop is None or not stop.is_set():
                batches = consumer.poll(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        yield decode(record.value, Label, max_bytes=self.settings.max_message_bytes)
                if batches:
                    idle_since = time.monotonic()
                elif timeout is not None and time.monotonic() - idle_since >= timeout:
                    return
        finally:
            consumer.close()

    def label(self, post_id: str) -> Label | None:
        """The stored label of one post from Redis, if any."""
        raw = self._redis_client().get(self.settings.keys.label(post_id))
        return decode(raw, Label, max_bytes=self.settings.max_message_bytes) if raw else None

    def stream_labels(self, *, timeout: float | None = None, last_id: str = "$") -> Iterator[Label]:
        """Labels from the ``<prefix>:labels`` Redis Stream (``last_id="0"`` replays the capped history)."""
        client = self._redis_client()
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            block = 1000 if deadline is None else max(1, int((deadline - time.monotonic()) * 1000))
            for _, entries in client.xread({self.settings.keys.labels_stream: last_id}, block=block, count=500) or []:
                for entry_id, fields in entries:
                    last_id = entry_id
                    if deadline is not None:
                        deadline = time.monotonic() + timeout
                    yield decode(fields[b"label"], Label, max_bytes=self.settings.max_message_bytes)

    def _redis_client(self) -> redis.Redis:
        if self._redis is None:
            if not self.settings.redis_url:
                raise ValueError("STYLESTREAM_REDIS_URL is not set")
            self._redis = redisconn.connect(self.settings)
        return self._redis

    def close(self) -> None:
        """Flush and release connections."""
        if self._producer is not None:
            self._producer.flush()
            self._producer.close()
            self._producer = None
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
