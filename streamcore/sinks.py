"""Redis sink for labels: idempotent per (post, model version), plus a capped Redis Stream."""

from __future__ import annotations

import redis.asyncio as aioredis

from streamcore.schemas import Label
from streamcore.serde import encode
from streamcore.settings import RedisKeys


# A post id first seen at another Kafka position is a duplicate post: nil reply.
# Keeps the stored label when it came from the same model version, so that reprocessing a post
# (after a crash or rebalance) returns byte-identical output; the stream entry is added only once.
_WRITE_LABEL = """
local src = redis.call('GET', KEYS[3])
if src and src ~= ARGV[5] then return false end
if not src then redis.call('SET', KEYS[3], ARGV[5]) end
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, obj = pcall(cjson.decode, cur)
  if ok and obj['model_version'] == ARGV[2] then return cur end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'post_id', ARGV[4], 'label', ARGV[1])
return ARGV[1]
"""


class RedisLabelSink:
    """Writes labels to ``<prefix>:label:{post_id}`` and the ``<prefix>:labels`` stream."""

    def __init__(self, url: str, *, keys: RedisKeys, stream_maxlen: int) -> None:
        self._redis = aioredis.Redis.from_url(url)
        self._script = self._redis.register_script(_WRITE_LABEL)
        self._keys = keys
        self._maxlen = stream_maxlen

    async def write(self, labels: list[Label], sources: list[str]) -> list[bytes | None]:
        """Write labels in one round trip.

        Args:
            sources: per label, the position of its post (``topic/partition/offset``).

        Returns:
            Per label, the stored (canonical) JSON, or ``None`` when the post id was already labelled
            from another position (a duplicate post).
        """
        async with self._redis.pipeline(transaction=False) as pipe:
            for label, source in zip(labels, sources, strict=True):
                await self._script(
                    keys=[self._keys.label(label.post_id), self._keys.labels_stream, self._keys.source(label.post_id)],
                    args=[encode(label), label.model_version, self._maxlen, label.post_id, source],
                    client=pipe,
                )
            return list(await pipe.execute())

    async def labelled(self, post_ids: list[str]) -> list[bool]:
        """Per post id, whether a label was already written for it (from any message), in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for post_id in post_ids:
                pipe.exists(self._keys.source(post_id))
            return [bool(n) for n in await pipe.execute()]

    async def current_model(self) -> str | None:
        """The serving model version pointer, if any."""
        value = await self._redis.get(self._keys.model_current)
        return value.decode() if value else None

    async def close(self) -> None:
        await self._redis.aclose()
