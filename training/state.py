"""The trainer's durable state in Redis: stored posts, absorbed corrections and the run bookkeeping.

Every trainer replica reads and writes the same keys, so whichever replica holds the run lease
(:mod:`streamcore.lease`) trains on every correction, whichever replica absorbed it. A write returns only
once Redis has applied it; the stage commits a record's offset after that (commit after durable).

Keys, under ``{<redis_prefix>:trainer}:`` (one hash tag: a Redis Cluster runs every script here on one slot):

* ``posts`` (hash post_id → :class:`StoredPost` bytes) and ``posts:order`` (zset by arrival): at most
  ``max_posts``, oldest dropped first; ``posts:seq`` numbers the arrivals.
* ``examples`` (hash post_id → :class:`Example` bytes) and ``examples:order``: at most ``max_examples``;
  a later correction of the same post replaces the earlier one.
* ``waiting`` (hash post_id → the correction's JSON) and ``waiting:order``: corrections of posts not stored yet (a
  trainer catching up on ``posts`` reads the small ``feedback`` topic faster), joined when their post is; at most
  ``max_examples``, oldest dropped first. Holding a correction and storing a post are each one script, and a post's
  waiting correction is read after the post is stored, so one of the two always sees the other.
* ``absorbed``: corrections stored so far. A replayed correction (same bytes, e.g. re-read after a
  crash before its offset was committed) is not stored or counted again.
* ``trained``: the ``absorbed`` count the last finished run had seen; ``absorbed - trained`` is what
  ``min_feedback`` triggers on. ``next_run_at`` / ``retry_at``: unix times for the schedule and for the
  back-off after a failed run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis

from streamcore.rediskeys import RedisKeys
from training.feedback import Example, StoredPost

# Store a value under a key of a hash bounded by an arrival-ordered zset; identical bytes are a no-op.
# Returns 1 when the value is new or changed.
_BOUNDED_PUT = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[1])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if over > 0 then
  local gone = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #gone, 2 do redis.call('HDEL', KEYS[1], gone[i]) end
end
return 1
"""

# Hold a correction (ARGV[2]) until its post (ARGV[1]) is stored, unless it is stored already (KEYS[4]).
# Returns {-1, 0}: the post is stored (join it now); else {1 when held anew or changed, 0 for a replay, how many
# waiting corrections the bound dropped}.
_HOLD = """
if redis.call('HEXISTS', KEYS[4], ARGV[1]) == 1 then return {-1, 0} end
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return {0, 0} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[1])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
local dropped = 0
if over > 0 then
  local gone = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #gone, 2 do redis.call('HDEL', KEYS[1], gone[i]) end
  dropped = #gone / 2
end
return {1, dropped}
"""

# Forget a waiting correction once joined, unless a later one replaced it meanwhile.
_RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class Held:
    """What :meth:`TrainerState.hold` did: ``stored`` (the post is stored: join now), else whether the correction
    is ``new`` (not a replay) and how many older waiting corrections the bound ``dropped``."""

    stored: bool
    new: bool = False
    dropped: int = 0


@dataclass(frozen=True)
class RunStatus:
    """What decides whether a run is due, read in one round trip."""

    pending: int  # corrections absorbed since the last finished run started
    next_run_at: float | None
    retry_at: float | None
    serving: bool  # a serving pointer is set
    finished: bool = False  # a run has ended (promoted or rejected) since the state was created


def _float(value: bytes | None) -> float | None:
    return float(value) if value is not None else None


class TrainerState:
    """Posts and corrections in Redis, bounded; see the module docstring for the keys.

    Args:
        client: a synchronous Redis client (the stage calls this from worker threads).
        prefix: the deployment's ``redis_prefix``.
        model_current: the serving pointer's key (a run is always due while it is unset).
    """

    def __init__(self, client: redis.Redis, *, prefix: str, model_current: str, max_posts: int,
                 max_examples: int) -> None:
        if max_posts < 1 or max_examples < 1:
            raise ValueError(f"max_posts and max_examples must be >= 1, got {max_posts}, {max_examples}")
        self._redis = client
        self._prefix = RedisKeys(prefix).trainer
        self._model_current = model_current
        self.max_posts, self.max_examples = max_posts, max_examples
        self._put = client.register_script(_BOUNDED_PUT)
        self._hold = client.register_script(_HOLD)
        self._release = client.register_script(_RELEASE)

    def _key(self, name: str) -> str:
        return self._prefix + name

    def put_posts(self, posts: Sequence[StoredPost]) -> None:
        """Store posts in one round trip."""
        keys = [self._key("posts"), self._key("posts:order"), self._key("posts:seq")]
        with self._redis.pipeline(transaction=False) as pipe:
            for post in posts:
                self._put(keys=keys, args=[post.post_id, post.to_bytes(), self.max_posts], client=pipe)
            pipe.execute()

    def post(self, post_id: str) -> StoredPost | None:
        """The stored post, or None when it was never seen or has been evicted."""
        data = self._redis.hget(self._key("posts"), post_id)
        return StoredPost.from_bytes(data) if data is not None else None

    def posts(self) -> int:
        """How many posts are stored."""
        return self._redis.hlen(self._key("posts"))

    def put_example(self, post_id: str, example: Example) -> bool:
        """Store the correction of ``post_id``; False when exactly this correction was stored already."""
        keys = [self._key("examples"), self._key("examples:order"), self._key("absorbed")]
        return bool(self._put(keys=keys, args=[post_id, example.to_bytes(), self.max_examples]))

    def hold(self, post_id: str, feedback: bytes) -> Held:
        """Keep ``feedback`` (a correction's JSON) until ``post_id`` is stored, unless it is stored already."""
        keys = [self._key("waiting"), self._key("waiting:order"), self._key("waiting:seq"), self._key("posts")]
        state, dropped = self._hold(keys=keys, args=[post_id, feedback, self.max_examples])
        return Held(stored=state < 0, new=state > 0, dropped=int(dropped))

    def waiting(self, post_ids: Sequence[str]) -> dict[str, bytes]:
        """The corrections held for any of ``post_ids``."""
        if not post_ids:
            return {}
        blobs = self._redis.hmget(self._key("waiting"), list(post_ids))
        return {post_id: blob for post_id, blob in zip(post_ids, blobs) if blob is not None}

    def release(self, post_id: str, feedback: bytes) -> None:
        """Forget the correction held for ``post_id`` if it is still ``feedback`` (it was joined)."""
        self._release(keys=[self._key("waiting"), self._key("waiting:order")], args=[post_id, feedback])

    def counts(self) -> tuple[int, int]:
        """How many posts are stored, and how many corrections wait for their post."""
        with self._redis.pipeline(transaction=False) as pipe:
            posts, waiting = pipe.hlen(self._key("posts")).hlen(self._key("waiting")).execute()
        return posts, waiting

    def snapshot(self) -> tuple[list[Example], int]:
        """Every stored correction, oldest first, and the ``absorbed`` count they include at least."""
        absorbed = int(self._redis.get(self._key("absorbed")) or 0)  # read first: the examples are a superset
        ids = self._redis.zrange(self._key("examples:order"), 0, -1)
        blobs = self._redis.hmget(self._key("examples"), ids) if ids else []
        return [Example.from_bytes(b) for b in blobs if b is not None], absorbed

    def status(self) -> RunStatus:
        """Pending corrections, schedule and whether a model serves."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(self._key("absorbed")).get(self._key("trained")).get(self._key("next_run_at"))
            pipe.get(self._key("retry_at")).exists(self._model_current)
            absorbed, trained, next_run_at, retry_at, serving = pipe.execute()
        return RunStatus(int(absorbed or 0) - int(trained or 0), _float(next_run_at), _float(retry_at), bool(serving),
                         trained is not None)

    def schedule(self, at: float) -> None:
        """Set the next scheduled run unless one is set (the first replica to start sets it)."""
        self._redis.set(self._key("next_run_at"), at, nx=True)

    def finish_run(self, absorbed: int, *, next_run_at: float | None) -> None:
        """A run that had seen ``absorbed`` corrections ended (promoted or rejected)."""
        with self._redis.pipeline() as pipe:
            pipe.set(self._key("trained"), absorbed).delete(self._key("retry_at"))
            if next_run_at is not None:
                pipe.set(self._key("next_run_at"), next_run_at)
            pipe.execute()

    def retry_after(self, at: float) -> None:
        """A run failed: no replica starts another before ``at``."""
        self._redis.set(self._key("retry_at"), at)
