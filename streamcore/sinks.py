"""Where labels go: Redis (idempotent per post and model version, plus a capped stream) and the labels topic.

:class:`LabelSink` is the sink in the sense of the stream libraries: a micro-batch's labels are
:meth:`LabelBatch.add`-ed, then :meth:`LabelBatch.flush`-ed as one unit — Redis first, then the topic with
the values Redis kept. A broker or Redis error fails the whole flush, and the caller retries it whole:
the label script makes a repeated flush return the same stored bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streamcore.preview import Preview
from streamcore.redisconn import connect_async
from streamcore.rediskeys import RedisKeys
from streamcore.settings import Settings


def fingerprint(raw: bytes | None) -> str:
    """Identity of a post's content: the same bytes produced twice are one post (a redo), not two."""
    return hashlib.sha256(raw or b"").hexdigest()


# KEYS[1] the label, KEYS[2] its meta hash, KEYS[3] its fashion vector record: one hash slot (see RedisKeys),
# so this runs on Redis Cluster. ARGV: label JSON, model version, post fingerprint, TTL seconds (0 = none),
# vector record ('' = none; a new label then drops an older model's record).
# Returns {stored label, 1 if it still needs its stream entry}, or nil when the post id was labelled from
# other content (a conflicting duplicate). Keeps the stored label when it came from the same model
# version, so a redo (crash, rebalance, producer retry) returns byte-identical output.
_WRITE_LABEL = """
local fp = redis.call('HGET', KEYS[2], 'fingerprint')
if fp and fp ~= ARGV[3] then return false end
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, obj = pcall(cjson.decode, cur)
  if ok and obj['model_version'] == ARGV[2] then
    if ARGV[5] ~= '' and redis.call('EXISTS', KEYS[3]) == 0 then
      local left = redis.call('TTL', KEYS[1])
      if left > 0 then redis.call('SET', KEYS[3], ARGV[5], 'EX', left) else redis.call('SET', KEYS[3], ARGV[5]) end
    end
    return {cur, redis.call('HGET', KEYS[2], 'streamed') == '1' and 0 or 1}
  end
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl) else redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('HSET', KEYS[2], 'fingerprint', ARGV[3], 'streamed', '0')
if ttl > 0 then redis.call('EXPIRE', KEYS[2], ttl) end
if ARGV[5] == '' then redis.call('DEL', KEYS[3])
elseif ttl > 0 then redis.call('SET', KEYS[3], ARGV[5], 'EX', ttl) else redis.call('SET', KEYS[3], ARGV[5]) end
return {ARGV[1], 1}
"""


class RedisLabels:
    """Writes labels to ``<prefix>:label:{post_id}`` and the ``<prefix>:labels`` stream.

    The stream lives in its own hash slot, so its entry is added by a second command after the label
    script; the ``streamed`` flag makes a redo add an entry that a crash in between left out.
    """

    def __init__(self, settings: Settings) -> None:
        self._redis = connect_async(settings.redis)
        self._script = self._redis.register_script(_WRITE_LABEL)
        self._keys: RedisKeys = settings.redis.keys
        self._maxlen = settings.redis.stream_maxlen
        self._ttl = settings.redis.label_ttl_s or 0
        self._cluster = settings.redis.cluster

    async def write(self, version: str, labels: Sequence[tuple[str, bytes]], fingerprints: Sequence[str],
                    vectors: Sequence[bytes | None] | None = None,
                    previews: Sequence[Preview | None] | None = None) -> list[bytes | None]:
        """Write one micro-batch of labels, then their previews and the stream entries that are due (two round
        trips on one server).

        Args:
            version: the model version every label of the batch came from.
            labels: ``(post_id, label JSON)`` pairs.
            fingerprints: per label, the identity of its post's content: :func:`fingerprint` of its raw message
                (the catalogue stage's leaves out when an item was sent, so sending it again is a redo).
            vectors: per label, its post's fashion vector record (user, time, image embedding) or None;
                stored at ``RedisKeys.label_vector`` with the label's TTL, kept on a redo like the label.
            previews: per label, what the review page shows of its post (stored with the label's expiry).

        Returns:
            Per label, the stored (canonical) JSON, or ``None`` when the post id was already labelled
            from different content (a conflicting duplicate post).
        """
        if not labels:
            return []
        vectors = vectors if vectors is not None else [None] * len(labels)
        calls = [([self._keys.label(post_id), self._keys.post_meta(post_id), self._keys.label_vector(post_id)],
                  [label, version, print_, self._ttl, vector or b""])
                 for (post_id, label), print_, vector in zip(labels, fingerprints, vectors, strict=True)]
        replies = await self._run_scripts(calls)
        due = [(post_id, reply[0]) for (post_id, _), reply in zip(labels, replies) if reply and int(reply[1])]
        previews = previews or [None] * len(labels)
        shown = [(post_id, preview) for (post_id, _), reply, preview in zip(labels, replies, previews)
                 if reply and preview is not None]
        if due or shown:
            async with self._redis.pipeline(transaction=False) as pipe:
                for post_id, preview in shown:  # before the stream entry, which is what a page follows
                    self._preview(pipe, post_id, preview)
                for post_id, stored in due:
                    pipe.xadd(self._keys.labels_stream, {"post_id": post_id, "label": stored},
                              maxlen=self._maxlen, approximate=True)
                    pipe.hset(self._keys.post_meta(post_id), "streamed", "1")
                await pipe.execute()
        return [reply[0] if reply else None for reply in replies]

    def _preview(self, pipe, post_id: str, preview: Preview) -> None:
        key = self._keys.thumb(post_id)
        fields: dict[str, bytes | str] = {"caption": preview.caption}
        if preview.jpeg is not None:
            fields["jpeg"] = preview.jpeg
        pipe.hset(key, mapping=fields)
        if self._ttl:
            pipe.expire(key, self._ttl)

    async def _run_scripts(self, calls: list[tuple[list[str], list]]) -> list:
        if self._cluster:
            # Cluster pipelines refuse scripts: each call goes to the node owning its slot, concurrently.
            # (The slot map must be loaded first: concurrent first commands race inside redis-py 8.)
            await self._redis.initialize()
            return list(await asyncio.gather(*(self._script(keys=keys, args=args) for keys, args in calls)))
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                await self._script(keys=keys, args=args, client=pipe)
            return list(await pipe.execute())

    async def close(self) -> None:
        await self._redis.aclose()


class RedisLookups:
    """The reads a classifier makes of Redis: the serving pointer, and which posts already have a label."""

    def __init__(self, settings: Settings) -> None:
        self._redis = connect_async(settings.redis)
        self._keys: RedisKeys = settings.redis.keys

    async def labelled(self, post_ids: list[str]) -> list[bool]:
        """Per post id, whether a label was already written for it (from any message), in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for post_id in post_ids:
                pipe.exists(self._keys.post_meta(post_id))
            return [bool(n) for n in await pipe.execute()]

    async def current_model(self) -> str | None:
        """The serving model version pointer, if any."""
        value = await self._redis.get(self._keys.model_current)
        return value.decode() if value else None

    async def close(self) -> None:
        await self._redis.aclose()


class PartitionMissing(KafkaError):
    """An output topic has fewer partitions than an input: the broker's fault to fix, never the record's. A
    Kafka error, so a stage retries it (and reports itself stuck) instead of dead-lettering good records."""


async def produce_by_partition(producer: AIOKafkaProducer, topic: str,
                               messages: Iterable[tuple[int, bytes | None, bytes]]) -> None:
    """Produce ``(partition, key, value)`` messages as per-partition batches; wait for every ack.

    Skips the client's per-key hashing and per-message overhead where the partition is known.

    Raises:
        PartitionMissing: ``topic`` has no such partition (posts, hints and labels need equal counts).
    """
    futures, batches = [], {}
    for partition, key, value in messages:
        if partition not in batches:
            batches[partition] = producer.create_batch()
        if batches[partition].append(key=key, value=value, timestamp=None) is None:  # full: ship it, start another
            futures.append(await _send_batch(producer, batches[partition], topic, partition))
            batches[partition] = producer.create_batch()
            batches[partition].append(key=key, value=value, timestamp=None)
    for partition, batch in batches.items():
        futures.append(await _send_batch(producer, batch, topic, partition))
    await asyncio.gather(*futures)


async def _send_batch(producer: AIOKafkaProducer, batch, topic: str, partition: int) -> asyncio.Future:
    try:
        return await producer.send_batch(batch, topic, partition=partition)
    except AssertionError as exc:  # aiokafka's way of saying the topic has no such partition
        raise PartitionMissing(f"{topic} has no partition {partition}: posts, hints and labels need equal "
                               f"partition counts (add partitions to {topic})") from exc


class LabelSink:
    """Labels to Redis and the ``labels`` topic, a micro-batch at a time (see the module docstring)."""

    def __init__(self, settings: Settings, producer: AIOKafkaProducer) -> None:
        self.redis = RedisLabels(settings)
        self._producer = producer
        self._topic = settings.kafka.topic("labels")

    def batch(self, version: str) -> LabelBatch:
        """An empty batch of labels made by model ``version``."""
        return LabelBatch(self, version)

    async def close(self) -> None:
        await self.redis.close()


@dataclass
class LabelBatch:
    """Labels of one micro-batch; :meth:`flush` writes them all or raises, and may be called again."""

    sink: LabelSink
    version: str
    _items: list[tuple[str, bytes, str, int]] = field(default_factory=list)
    _vectors: list[bytes | None] = field(default_factory=list)
    _previews: list[Preview | None] = field(default_factory=list)

    def add(self, post_id: str, label: bytes, fingerprint: str, partition: int, vector: bytes | None = None,
            preview: Preview | None = None) -> None:
        """One label; ``partition`` is its post's, so the label lands on the same partition of ``labels``;
        ``vector`` its fashion vector record and ``preview`` what the review page shows, stored beside it."""
        self._items.append((post_id, label, fingerprint, partition))
        self._vectors.append(vector)
        self._previews.append(preview)

    def __len__(self) -> int:
        return len(self._items)

    async def flush(self) -> list[bytes | None]:
        """Write to Redis, then the topic. Per label, in order: the stored JSON, or ``None`` for a post id
        already labelled from other content (a conflicting duplicate: nothing is sent for it)."""
        sink = self.sink
        stored = await sink.redis.write(self.version, [(p, label) for p, label, _, _ in self._items],
                                        [f for _, _, f, _ in self._items], self._vectors,
                                        self._previews)
        await produce_by_partition(sink._producer, sink._topic,
                                   [(part, p.encode(), value) for (p, _, _, part), value in zip(self._items, stored)
                                    if value is not None])
        return stored
