"""The classifier's join of posts with their hints: pure decisions, no Kafka, no Redis, no clock of its own.

A post waits for its hints until its deadline, then starts without them; hints wait for their post (their
record unfinished, so a restart re-reads them) until ``hold_s``, then are released as ``expired``. Hints
for a post already started are ``late``; a second hints record for a held post is a ``duplicate`` (the
text stage redid the post). A post id seen again with the same bytes while the first copy waits is a redo
and ends with it (see the stage: its stored label sent again, or, after a dead letter, the copy classified
again); seen again after it started, it is classified again and the label store answers with the stored
label. With other bytes it is a conflict (``duplicate_post_id``), unless the post it conflicts with ended as a
dead letter: then no label holds the id, and the copy is classified.

Every method returns what the stage must do — :class:`Start` a post, :class:`Release` a hints record — and
the stage does it. Records are anything with ``topic``, ``partition``, ``offset`` and ``value``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from streamcore.exceptions import BadInput
from streamcore.schemas import Hints, Post

#: Bound on join state: hints waiting for their post, and recently started ids (to recognise late hints).
MAX_REMEMBERED = 100_000


class Record(Protocol):
    topic: str
    partition: int
    offset: int
    value: bytes | None


@dataclass
class Waiting:
    """A post waiting for its hints (or started): its record stays unfinished until it is labelled."""

    record: Any
    post: Post
    deadline: float
    fingerprint: str = ""
    hints: Hints | None = None
    hints_record: Any = None
    #: Byte-identical copies read while this one waited: not classified twice, they end with it.
    redos: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class Start:
    """Classify this post now (with its hints, if it has them)."""

    waiting: Waiting


@dataclass(frozen=True)
class Release:
    """Finish this hints record: no post will use it (``late``, ``duplicate``, ``expired``, ``capacity``)."""

    record: Any
    reason: str


@dataclass
class _Held:
    record: Any
    hints: Hints
    since: float


class HintJoin:
    """Posts and hints of the partitions one classifier owns, joined by post id."""

    def __init__(self, *, hold_s: float, capacity: int = MAX_REMEMBERED) -> None:
        self.hold_s = hold_s
        self.capacity = capacity
        self._held: OrderedDict[str, _Held] = OrderedDict()  # arrival order = expiry order
        self._waiting: OrderedDict[str, Waiting] = OrderedDict()  # arrival order = deadline order
        self._started: OrderedDict[str, str] = OrderedDict()  # post id -> fingerprint of the copy started
        self.held_bytes = 0

    # -- state a stage reads -------------------------------------------------------------------
    def holds(self, post_id: str) -> bool:
        """Whether hints for ``post_id`` are held, waiting for their post."""
        return post_id in self._held

    def waiting_records(self) -> list[Any]:
        """Records of posts waiting for their hints, and of their copies (they count against the in-flight bounds)."""
        return [r for w in self._waiting.values() for r in (w.record, *w.redos)]

    def held_post_ids(self) -> list[str]:
        return list(self._held)

    # -- events --------------------------------------------------------------------------------
    def on_hints(self, record: Record, hints: Hints, now: float) -> list[Start | Release]:
        """Hints arrived: start their waiting post, hold them for it, or release them. ``[]`` = held."""
        post_id = hints.post_id
        waiting = self._waiting.pop(post_id, None)
        if waiting is not None:
            waiting.hints, waiting.hints_record = hints, record
            return [self._start(waiting)]
        if post_id in self._started:
            return [Release(record, "late")]  # its post was classified without them
        if post_id in self._held:
            if _position(self._held[post_id].record) != _position(record):
                return [Release(record, "duplicate")]  # the text stage redid the post
            return []  # the same record read again: still held
        self._held[post_id] = _Held(record, hints, now)
        self.held_bytes += len(record.value or b"")
        over = []
        while len(self._held) > self.capacity:
            over.append(Release(self._take(next(iter(self._held))).record, "capacity"))
        return over

    def on_post(self, record: Record, post: Post, fingerprint: str, deadline: float) -> list[Start]:
        """A post arrived: start it if its hints are here, else let it wait until ``deadline``.

        Raises:
            BadInput: ``duplicate_post_id`` — the id was already received with other bytes.
        """
        earlier = self._waiting.get(post.post_id)
        seen = self._started.get(post.post_id) or (earlier.fingerprint if earlier else None)
        if seen is not None and seen != fingerprint:
            raise BadInput("duplicate_post_id", f"post {post.post_id!r} was already received with other content")
        if earlier is not None:  # a copy at another position finishes with the one held
            if _position(earlier.record) != _position(record):
                earlier.redos.append(record)
            return []
        held = self._take(post.post_id)
        waiting = Waiting(record, post, deadline, fingerprint, hints=held.hints if held else None,
                          hints_record=held.record if held else None)
        if held is not None:
            return [self._start(waiting)]
        self._waiting[post.post_id] = waiting
        return []

    def due(self, now: float) -> list[Start | Release]:
        """Posts whose wait is over start without hints; hints held past ``hold_s`` are released."""
        out: list[Start | Release] = []
        while self._waiting and next(iter(self._waiting.values())).deadline <= now:
            out.append(self._start(self._waiting.popitem(last=False)[1]))
        while self._held and now - next(iter(self._held.values())).since >= self.hold_s:
            out.append(Release(self._take(next(iter(self._held))).record, "expired"))
        return out

    def unlabelled(self, post_id: str, fingerprint: str) -> None:
        """A started post ended as a dead letter: no label holds its bytes, so its id is free again. A copy with
        other bytes (the image fixed, or one that can now be fetched) is then classified, as it would be after a
        restart, and the label store decides a conflict with a label written meanwhile."""
        if self._started.get(post_id) == fingerprint:
            del self._started[post_id]

    def already_labelled(self, post_ids: Iterable[str]) -> list[Release]:
        """Release held hints of posts labelled before (found in the label store after a restart)."""
        return [Release(self._take(p).record, "late") for p in post_ids if p in self._held]

    def forget(self, gone: set[tuple[str, int]]) -> None:
        """Drop posts and hints of partitions this member no longer owns (their next owner re-reads them)."""
        for post_id in [p for p, w in self._waiting.items() if (w.record.topic, w.record.partition) in gone]:
            del self._waiting[post_id]
        for post_id in [p for p, h in self._held.items() if (h.record.topic, h.record.partition) in gone]:
            self._take(post_id)

    # -- internals -----------------------------------------------------------------------------
    def _start(self, waiting: Waiting) -> Start:
        self._started[waiting.post.post_id] = waiting.fingerprint
        self._started.move_to_end(waiting.post.post_id)
        while len(self._started) > self.capacity:
            self._started.popitem(last=False)
        return Start(waiting)

    def _take(self, post_id: str) -> _Held | None:
        held = self._held.pop(post_id, None)
        if held is not None:
            self.held_bytes -= len(held.record.value or b"")
        return held


def _position(record: Record) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset
