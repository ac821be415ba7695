"""What to do about a failure of the broker or Redis, and how to say so without flooding the log.

* :func:`rejection` sorts a Kafka/Redis error into *transient* (retry with jittered backoff: the server
  is away, slow or rebalancing) or *permanent for the record* (too large, invalid, not authorised): the
  same write would fail the same way forever, so the record ends as a dead letter instead.
* :func:`bounded_letter` builds that dead letter so it fits what the producer may send: reason,
  position, size and SHA-256 of the original, and as much of the original as fits.
* :class:`Streaks` remembers which operations are failing right now and since when, so a stage can
  say that it is stuck (``/readyz``, a gauge, an alert) while it retries.
* :class:`RepeatFilter` lets the first of a run of like log lines through and then one line per
  window with the count of the ones it held back.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import aiokafka.errors
import kafka.errors
from redis.exceptions import DataError, NoPermissionError, RedisError

from streamcore.exceptions import BadInput
from streamcore.schemas import DeadLetter
from streamcore.serde import encode

log = logging.getLogger(__name__)

#: Failures of the broker or Redis: retried unless :func:`rejection` names them permanent. The producer
#: and consumer are aiokafka's (their own ``KafkaError``); the admin client is kafka-python's. Not every
#: ``OSError``: one a record causes (a bad path) must not be retried forever.
INFRA_ERRORS = (aiokafka.errors.KafkaError, kafka.errors.KafkaError, RedisError, ConnectionError, TimeoutError)


def _classes(names: tuple[str, ...]) -> tuple[type[BaseException], ...]:
    # The two Kafka libraries spell some classes differently; take whichever each one has.
    found = (getattr(module, name, None) for module in (aiokafka.errors, kafka.errors) for name in names)
    return tuple(c for c in found if isinstance(c, type))


#: Dead-letter code → errors that the same write would meet again, however often it is retried.
PERMANENT: dict[str, tuple[type[BaseException], ...]] = {
    "output_too_large": _classes(("MessageSizeTooLargeError", "RecordTooLargeError", "RecordListTooLargeError")),
    "output_invalid": (*_classes(("CorruptRecordException", "CorruptRecordError", "InvalidRecordError",
                                  "InvalidMessageError", "InvalidTimestampError", "InvalidTopicError")), DataError),
    "output_unauthorized": (*_classes(("TopicAuthorizationFailedError", "ClusterAuthorizationFailedError",
                                       "TransactionalIdAuthorizationFailed",
                                       "TransactionalIdAuthorizationFailedError")), NoPermissionError),
}


def rejection(exc: BaseException) -> str | None:
    """The dead-letter code when ``exc`` is permanent for the record being written, else None (retry)."""
    for code, classes in PERMANENT.items():
        if isinstance(exc, classes):
            return code
    return None


class RecordRejected(BadInput):
    """The broker or Redis refused a record's output for good; the record ends as a dead letter."""


async def within(seconds: float, step: Awaitable, what: str) -> None:
    """Await ``step`` for at most ``seconds``; past that it is cancelled and a warning says what was left undone.

    A stage stopping (SIGTERM, or its parent's death through PDEATHSIG) while the broker is gone would otherwise
    wait for it forever: the Kafka client waits for a group coordinator as long as there is none.
    """
    try:
        await asyncio.wait_for(step, seconds)
    except TimeoutError:
        log.warning("%s took over STYLESTREAM_STOP_TIMEOUT_S (%gs): going on without it", what, seconds)


def backoff(first_s: float, ceiling_s: float, *, rng: random.Random | None = None) -> Iterator[float]:
    """Exponential delays from ``first_s`` up to ``ceiling_s``, each drawn from its upper half ("equal
    jitter"), so replicas that failed together do not retry together."""
    rng, delay = rng or random.Random(), first_s
    while True:
        yield delay / 2 + rng.random() * delay / 2
        delay = min(delay * 2, ceiling_s)


# -- dead letters that fit ----------------------------------------------------------------------
#: Room kept for the record batch and record headers around key and value (a few dozen bytes in Kafka's
#: v2 format; generous, since a letter that does not fit costs a second try).
_FRAMING_BYTES = 1024


#: A record key longer than this goes to ``posts.dlq`` as its SHA-256 (hex): a foreign producer may send a key
#: of megabytes, and a letter that cannot fit is one the stage would retry forever.
MAX_LETTER_KEY = 1024


@dataclass(frozen=True)
class Original:
    """Where the record came from and what it held."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes

    def letter_key(self) -> bytes | None:
        """The key its dead letter is sent with: the original's, or its SHA-256 when longer than
        :data:`MAX_LETTER_KEY`."""
        if self.key is None or len(self.key) <= MAX_LETTER_KEY:
            return self.key
        return hashlib.sha256(self.key).hexdigest().encode()


def bounded_letter(original: Original, error: BadInput, *, stage: str, limit: int, keep_original: bool = True,
                   ) -> DeadLetter:
    """The dead letter of ``original``, at most ``limit`` bytes with its key (:meth:`Original.letter_key`) once encoded.

    The letter carries the original's size and SHA-256, so a truncated (or, with ``keep_original``
    False, omitted) original can still be matched against the one at topic/partition/offset for as
    long as the topic retains it.
    """
    value, key = original.value, original.letter_key()
    detail = error.detail[:2000]
    if key != original.key:
        detail += f" (sent with the SHA-256 of its {len(original.key or b'')}-byte key as key)"
    letter = DeadLetter(error=error.code, detail=detail, stage=stage, original="",
                        topic=original.topic, partition=original.partition, offset=original.offset,
                        original_bytes=len(value), original_sha256=hashlib.sha256(value).hexdigest())
    spare = limit - len(encode(letter)) - len(key or b"") - _FRAMING_BYTES - 128  # 128: the note below
    room = max(0, spare) // 4 * 3 if keep_original else 0  # base64 grows 4/3
    if room >= len(value):
        return letter.model_copy(update={"original": base64.b64encode(value).decode()})
    note = f" (original truncated to {room} of {len(value)} bytes)"
    return letter.model_copy(update={"original": base64.b64encode(value[:room]).decode(),
                                     "detail": letter.detail + note})


# -- stuck operations -----------------------------------------------------------------------------
class Streaks:
    """Operations failing right now: each retry loop holds a streak from its first failure to its end.

    Thread-safe: the health endpoint reads it from its own thread.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[int, tuple[str, float, str]] = {}
        self._next = 0

    def begin(self, operation: str, error: BaseException) -> int:
        """Open a streak for ``operation`` (failing with ``error``); returns its handle."""
        with self._lock:
            self._next += 1
            self._open[self._next] = (operation, self._clock(), _describe(error))
            return self._next

    def failed_again(self, handle: int, error: BaseException) -> None:
        """Keep the streak's start, update its last error."""
        with self._lock:
            if handle in self._open:
                operation, since, _ = self._open[handle]
                self._open[handle] = (operation, since, _describe(error))

    def end(self, handle: int | None) -> None:
        """Close a streak (its operation succeeded, or the record gave up)."""
        if handle is not None:
            with self._lock:
                self._open.pop(handle, None)

    def oldest(self) -> tuple[str, float, str] | None:
        """``(operation, seconds failing, last error)`` of the longest open streak, or None."""
        with self._lock:
            if not self._open:
                return None
            operation, since, error = min(self._open.values(), key=lambda s: s[1])
        return operation, self._clock() - since, error


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:300]


# -- repeated log lines ---------------------------------------------------------------------------
class RepeatFilter(logging.Filter):
    """Passes the first record of each kind, then at most one per ``window_s``, which then says how many
    like it were held back since the last one that passed.

    A kind is the logger, the level and the message template (or a record's ``repeat_key`` extra,
    where one template covers several kinds). Records below WARNING always pass. Remembers at most
    ``max_kinds`` kinds (least recently seen forgotten first).
    """

    def __init__(self, window_s: float = 30.0, *, max_kinds: int = 1024, clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        super().__init__()
        self.window_s = window_s
        self.max_kinds = max_kinds
        self.suppressed = 0
        self._clock = clock
        self._lock = threading.Lock()
        self._kinds: OrderedDict[tuple, list] = OrderedDict()  # kind -> [time last passed, held back since]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        # Another handler's filter may have added its count to the message already: key on the template.
        template = record.__dict__.setdefault("repeat_template", str(record.msg))
        kind = (record.name, record.levelno, getattr(record, "repeat_key", None) or template)
        now = self._clock()
        with self._lock:
            seen = self._kinds.get(kind)
            if seen is not None and now - seen[0] < self.window_s:
                seen[1] += 1
                self.suppressed += 1
                self._kinds.move_to_end(kind)
                return False
            held = seen[1] if seen is not None else 0
            self._kinds[kind] = [now, 0]
            self._kinds.move_to_end(kind)
            while len(self._kinds) > self.max_kinds:
                self._kinds.popitem(last=False)
        if held and not getattr(record, "repeat_noted", False):
            record.repeat_noted = True
            record.msg = f"{record.getMessage()} [{held} more like this in the last {self.window_s:.0f} s]"
            record.args = None
        return True


_INSTALLED: list[RepeatFilter] = []


def install_repeat_filter(window_s: float = 30.0) -> None:
    """Give every handler of the root logger a :class:`RepeatFilter` of its own (once per handler).

    On the handlers, not the loggers: a logger's filters do not see what its children propagate, and
    the noisy lines come from the Kafka and Redis libraries' own loggers.
    """
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RepeatFilter) for f in handler.filters):
            repeat = RepeatFilter(window_s)
            handler.addFilter(repeat)
            _INSTALLED.append(repeat)


def suppressed_lines() -> int:
    """Log records this process has held back so far (the most any one handler held back)."""
    return max((f.suppressed for f in _INSTALLED), default=0)
