"""Redis sink for labels: idempotent per (post, model version), plus a capped Redis Stream."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from streamcore.settings import RedisKeys

# One call per micro-batch: KEYS = stream, then (label key, source key) per label; ARGV = version, maxlen,
# then (label JSON, post id, source) per label. Per label: nil when the post id was first seen at another
# Kafka position (a duplicate post); else the stored JSON. A label already stored by the same model version
# is kept, so that reprocessing a post (after a crash or rebalance) returns byte-identical output and adds
# no second stream entry.
_WRITE_LABELS = """
local out = {}
for i = 1, (#KEYS - 1) / 2 do
  local key, src_key = KEYS[2 * i], KEYS[2 * i + 1]
  local label, post_id, source = ARGV[3 * i], ARGV[3 * i + 1], ARGV[3 * i + 2]
  local src = redis.call('GET', src_key)
  if src and src ~= source then
    out[i] = false
  else
    if not src then redis.call('SET', src_key, source) end
    local cur = redis.call('GET', key)
    local ok, obj = false, nil
    if cur then ok, obj = pcall(cjson.decode, cur) end
    if ok and obj['model_version'] == ARGV[1] then
      out[i] = cur
    else
      redis.call('SET', key, label)
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'post_id', post_id, 'label', label)
      out[i] = label
    end
  end
end
return out
"""


class RedisLabelSink:
    """Writes labels to ``<prefix>:label:{post_id}`` and the ``<prefix>:labels`` stream."""

    def __init__(self, url: str, *, keys: RedisKeys, stream_maxlen: int) -> None:
        self._redis = aioredis.Redis.from_url(url)
        self._script = self._redis.register_script(_WRITE_LABELS)
        self._keys = keys
        self._maxlen = stream_maxlen

    async def write(self, version: str, labels: Sequence[tuple[str, bytes]], sources: Sequence[str]) -> list[bytes | None]:
        """Write one micro-batch of labels in one round trip (one script call).

        Args:
            version: the model version every label of the batch came from.
            labels: ``(post_id, label JSON)`` pairs.
            sources: per label, the position of its post (``topic/partition/offset``).

        Returns:
            Per label, the stored (canonical) JSON, or ``None`` when the post id was already labelled
            from another position (a duplicate post).
        """
        if not labels:
            return []
        keys, args = [self._keys.labels_stream], [version, self._maxlen]
        for (post_id, label), source in zip(labels, sources, strict=True):
            keys += [self._keys.label(post_id), self._keys.source(post_id)]
            args += [label, post_id, source]
        return [value or None for value in await self._script(keys=keys, args=args)]

    async def current_model(self) -> str | None:
        """The serving model version pointer, if any."""
        value = await self._redis.get(self._keys.model_current)
        return value.decode() if value else None

    async def close(self) -> None:
        await self._redis.aclose()
