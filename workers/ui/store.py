"""The page's reads of Redis: labels from the ``<prefix>:labels`` stream, each with its preview and corrections.

One pipeline per batch of labels fetches, beside each label, its caption (``{label}:thumb``), the last
correction sent from the page (``{label}:correction``) and whether the live guard holds a verdict on it
(``{<prefix>:guard:<version>}:posts``: a correction from anywhere reached the trainer).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from streamcore.rediskeys import RedisKeys
from workers.ui.cards import Filters, Highlighter, card


def stream_id(raw: bytes | str) -> tuple[int, int]:
    """A stream entry id as a comparable pair (``"1700000000000-3"`` → ``(1700000000000, 3)``)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class Entry:
    """One entry of the labels stream."""

    id: tuple[int, int]
    post_id: str
    label: bytes


def _entries(raw: list) -> list[Entry]:
    out = []
    for entry_id, fields in raw:
        post_id, label = fields.get(b"post_id"), fields.get(b"label")
        if post_id and label:
            out.append(Entry(stream_id(entry_id), post_id.decode(errors="replace"), label))
    return out


class LabelReader:
    """Reads labels and what goes with them; cards come out (see :mod:`workers.ui.cards`)."""

    def __init__(self, keys: RedisKeys, client: Redis, highlighter: Highlighter) -> None:
        self._redis = client
        self._keys = keys
        self._highlighter = highlighter

    async def cards(self, entries: list[Entry]) -> list[dict[str, Any]]:
        """Cards of ``entries``, in order (entries whose label is unreadable are left out), in one round trip."""
        versions = [_version(e.label) for e in entries]
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry, version in zip(entries, versions):
                pipe.hget(self._keys.thumb(entry.post_id), "caption")
                pipe.hexists(self._keys.thumb(entry.post_id), "jpeg")
                pipe.get(self._keys.correction(entry.post_id))
                pipe.hexists(f"{self._keys.guard(version)}:posts", entry.post_id)
            replies = await pipe.execute()
        out = []
        for n, entry in enumerate(entries):
            caption, thumb, correction, judged = replies[4 * n: 4 * n + 4]
            made = card(entry.label, caption=caption.decode(errors="replace") if caption else None, thumb=bool(thumb),
                        correction=json.loads(correction) if correction else None, corrected=bool(judged),
                        highlighter=self._highlighter)
            if made is not None:
                made["seq"] = f"{entry.id[0]}-{entry.id[1]}"
                out.append(made)
        return out

    async def newest(self, filters: Filters, *, limit: int = 60, scan: int = 5000) -> tuple[list[dict], tuple[int, int]]:
        """Up to ``limit`` cards the filters keep, newest first, looking at most ``scan`` entries back; and the id
        of the newest entry (what a follower continues after)."""
        kept: list[dict] = []
        newest, upper, looked = (0, 0), "+", 0
        while len(kept) < limit and looked < scan:
            raw = await self._redis.xrevrange(self._keys.labels_stream, max=upper, min="-", count=200)
            entries = _entries(raw)
            if not raw:
                break
            if looked == 0:
                newest = stream_id(raw[0][0])
            looked += len(raw)
            kept += [c for c in await self.cards(entries) if filters.keeps(c)]
            upper = "(" + raw[-1][0].decode()
        return kept[:limit], newest

    async def after(self, last: tuple[int, int], *, block_ms: int | None, count: int) -> list[Entry]:
        """Entries written after ``last``, waiting up to ``block_ms`` for the first (``None``: not waiting)."""
        reply = await self._redis.xread({self._keys.labels_stream: f"{last[0]}-{last[1]}"}, count=count,
                                        block=block_ms)
        return _entries(reply[0][1]) if reply else []

    async def last_id(self) -> tuple[int, int]:
        raw = await self._redis.xrevrange(self._keys.labels_stream, count=1)
        return stream_id(raw[0][0]) if raw else (0, 0)

    async def thumb(self, post_id: str) -> bytes | None:
        return await self._redis.hget(self._keys.thumb(post_id), "jpeg")

    async def thumbs(self, post_ids: list[str]) -> list[bytes | None]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for post_id in post_ids:
                pipe.hget(self._keys.thumb(post_id), "jpeg")
            return await pipe.execute()


def _version(label: bytes) -> str:
    try:
        return str(json.loads(label).get("model_version", ""))
    except (ValueError, AttributeError):
        return ""
