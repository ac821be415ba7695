"""Per-partition offset bookkeeping: commit never skips past a record whose outputs are not written."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka import TopicPartition


class OffsetTracker:
    """Tracks fetched-but-unfinished offsets; the committable offset is the lowest unfinished one."""

    def __init__(self) -> None:
        self._inflight: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._short: dict[TopicPartition, float] = {}  # since when a partition's end lies before _next

    def add(self, tp: TopicPartition, offset: int) -> None:
        """Record that ``offset`` was fetched and is now in flight."""
        self._inflight.setdefault(tp, set()).add(offset)
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def done(self, tp: TopicPartition, offset: int) -> None:
        """Record that every output of ``offset`` is written (unknown offsets are ignored: revoked)."""
        self._inflight.get(tp, set()).discard(offset)

    def is_pending(self, tp: TopicPartition, offset: int) -> bool:
        """True while ``offset`` was fetched from ``tp`` and is not done (nor revoked)."""
        return offset in self._inflight.get(tp, ())

    def next_offset(self, tp: TopicPartition) -> int | None:
        """One past the highest offset fetched from ``tp``, if any was."""
        return self._next.get(tp)

    def restarted(self, tp: TopicPartition, end: int | None, now: float, *, confirm_s: float = 2.0) -> bool:
        """True once ``tp``'s end has stayed below the offsets read from it for ``confirm_s``: the partition
        restarted empty (deleted and created again, a broker that lost its storage).

        Not at the first sight: a new partition leader may briefly report an older end.
        """
        position = self._next.get(tp)
        if end is None or position is None or end >= position:
            self._short.pop(tp, None)
            return False
        return now - self._short.setdefault(tp, now) >= confirm_s

    def pending(self) -> int:
        """Number of offsets in flight across partitions."""
        return sum(len(s) for s in self._inflight.values())

    def committable(self) -> dict[TopicPartition, int]:
        """Offsets to commit now: per partition, the lowest unfinished offset, if it moved."""
        out = {}
        for tp, nxt in self._next.items():
            inflight = self._inflight.get(tp)
            offset = min(inflight) if inflight else nxt
            if offset > self._committed.get(tp, -1):
                out[tp] = offset
        return out

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Remember what the broker accepted so it is not committed again."""
        self._committed.update(offsets)

    def drop(self, partitions: Iterable[TopicPartition]) -> None:
        """Forget revoked partitions: their unfinished records belong to the next owner."""
        for tp in partitions:
            self._inflight.pop(tp, None)
            self._next.pop(tp, None)
            self._committed.pop(tp, None)
            self._short.pop(tp, None)
