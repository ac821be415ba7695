"""Profiles and the repository in Redis: idempotent per post id, one hash slot per script.

Keys under ``<prefix>`` (the ``redis_prefix`` setting), per model version ``V``:

* ``{<prefix>:user:<H>}:posts:V`` (zset post id → creation ms), ``…:members:V`` (hash post id →
  :class:`~training.recommend.profile.Member`), ``…:rev:V`` (adds so far), ``…:profile:V`` (the encoded
  :class:`~training.recommend.profile.Profile`) and ``…:profile_rev:V`` (the ``rev`` it was computed at).
  ``H`` is a digest of the user name, so any name makes a valid hash tag; the profile holds the name.
* ``{<prefix>:repo:V}:ids`` (set of post ids) and ``{<prefix>:repo:V}:stream`` (one entry per post: id,
  user, and an item, a member whose embedding is the whole-photo row only; and an entry with ``removed``
  when a shop removed its item), ``{<prefix>:repo:V}:removed`` (catalogue items removed, kept out), and
  ``<prefix>:repo:versions`` (zset version → when this stage first saw it, wall-clock ms; the first sighting
  stays): what a recommender indexes and rebuilds from, oldest version first.

A post already in a set changes nothing (a replay, a redelivery). A profile lags its members only between
two commands of one round; ``rev != profile_rev`` marks that, and the next delivery of the post (its offset
was not committed) recomputes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterable, Sequence

# KEYS: posts zset, members hash, rev, profile_rev. ARGV: post id, created ms, member bytes, cap.
# Returns {1 if the set changed, rev, profile_rev}. Keeps the ``cap`` newest posts by (time, id).
_ADD_MEMBER = """
local function revs() return {redis.call('GET', KEYS[3]) or '0', redis.call('GET', KEYS[4]) or '0'} end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then local r = revs(); return {0, r[1], r[2]} end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
if over > 0 then
  local gone = redis.call('ZPOPMIN', KEYS[1], over)
  local changed = true
  for i = 1, #gone, 2 do
    redis.call('HDEL', KEYS[2], gone[i])
    if gone[i] == ARGV[1] then changed = false end
  end
  if not changed then local r = revs(); return {0, r[1], r[2]} end
end
redis.call('INCR', KEYS[3])
local r = revs()
return {1, r[1], r[2]}
"""

# KEYS: members hash, rev. Returns {rev, member bytes...}: one consistent snapshot.
_READ_MEMBERS = """
local out = {redis.call('GET', KEYS[2]) or '0'}
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do out[#out + 1] = v end
return out
"""

# KEYS: rev, profile, profile_rev. ARGV: rev read, profile bytes. Writes only if no post was added since.
_SET_PROFILE = """
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[1])
return 1
"""

# KEYS: ids set, stream, removed set. ARGV: post id, user, item bytes. Returns 1 when the post is new to the
# repository; an item its shop removed stays out (a label of it still on its way must not bring it back).
_ADD_ITEM = """
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then return 0 end
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'post_id', ARGV[1], 'user', ARGV[2], 'item', ARGV[3])
return 1
"""

# KEYS: ids set, stream, removed set. ARGV: item id. Marks the item removed; returns 1 when it was in the
# repository (and a removal entry now follows its entry on the stream).
_REMOVE_ITEM = """
redis.call('SADD', KEYS[3], ARGV[1])
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'post_id', ARGV[1], 'removed', '1')
return 1
"""


def user_tag(user: str) -> str:
    """The hash-tag-safe name of a user in keys (names may hold braces or any other character).

    Raises:
        ValueError: a name that is not valid UTF-8 (lone surrogates, as Python decodes undecodable bytes).
    """
    try:
        raw = user.encode()
    except UnicodeEncodeError:
        raise ValueError(f"user name {user!r} is not valid UTF-8") from None
    return hashlib.sha256(raw).hexdigest()[:32]


class Keys:
    """Key names of profiles and repositories under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def user(self, user: str, version: str) -> tuple[str, str, str, str, str]:
        """posts, members, rev, profile, profile_rev of one user's profile in one version."""
        tag = f"{{{self.prefix}:user:{user_tag(user)}}}"
        return tuple(f"{tag}:{name}:{version}" for name in ("posts", "members", "rev", "profile", "profile_rev"))

    def repo(self, version: str) -> tuple[str, str, str]:
        """ids set, stream, removed set (catalogue items their shop removed) of one version's repository."""
        tag = f"{{{self.prefix}:repo:{version}}}"
        return f"{tag}:ids", f"{tag}:stream", f"{tag}:removed"

    @property
    def versions(self) -> str:
        return f"{self.prefix}:repo:versions"

    @property
    def catalogue_items(self) -> str:
        """Every id a shop ever listed through the catalogue stage (what a tombstone may remove)."""
        return f"{self.prefix}:catalogue:items"

    @property
    def catalogue_lettered(self) -> str:
        """Catalogue records already dead-lettered (set of ``partition:offset:time:digest``): every version's group
        reads the topic from its start, and a bad record gets one letter, not one per version."""
        return f"{self.prefix}:catalogue:lettered"

    def label_vector(self, post_id: str) -> str:
        """Where the classifier writes a post's vector record (the label's hash slot)."""
        return f"{{{self.prefix}:label:{post_id}}}:vec"

    def label(self, post_id: str) -> str:
        return f"{self.prefix}:label:{post_id}"

    @property
    def model_current(self) -> str:
        return f"{self.prefix}:model:current"


class ProfileWriter:
    """The profile stage's writes (asyncio client); every call is idempotent, so a failed round is redone whole."""

    def __init__(self, redis, prefix: str, *, cluster: bool = False) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self._cluster = cluster
        self._add_member = redis.register_script(_ADD_MEMBER)
        self._read = redis.register_script(_READ_MEMBERS)
        self._set = redis.register_script(_SET_PROFILE)
        self._add_item = redis.register_script(_ADD_ITEM)
        self._remove_item = redis.register_script(_REMOVE_ITEM)

    async def vectors(self, post_ids: list[str]) -> list[bytes | None]:
        """The classifier's vector records of these posts (``None`` where absent), one round trip."""
        if not post_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for post_id in post_ids:
                pipe.get(self.keys.label_vector(post_id))
            return list(await pipe.execute())

    async def add(self, posts: list[tuple[str, str, str, int, bytes | None, bytes]],
                  cap: int) -> tuple[list[bool], list[tuple[str, str]]]:
        """Add ``(post id, user, version, created ms, member, item)`` to profiles and repositories; a post
        without a member (a catalogue item) joins its repository only.

        Returns per post whether it was new (to its profile; to its repository for a catalogue item), and the
        ``(user, version)`` profiles to recompute: changed, or left behind by an earlier crash.
        """
        calls, profiled = [], []
        for post_id, user, version, created, member, item in posts:
            if member is not None:
                posts_key, members, rev, _, profile_rev = self.keys.user(user, version)
                profiled.append(len(calls))
                calls.append((self._add_member, [posts_key, members, rev, profile_rev], [post_id, created, member, cap]))
            calls.append((self._add_item, list(self.keys.repo(version)), [post_id, user, item]))
        replies = await self._run(calls)
        if posts:
            # When the stage first saw the version, not its posts' creation times: a new version's first label
            # may be of an old post (a replay, a catalogue item), and the order decides which version serves.
            # A version seen later always scores higher, even within the same millisecond or behind a clock that
            # stepped back; versions new in one batch keep the order they arrived in, not their names'.
            newest = await self.redis.zrange(self.keys.versions, -1, -1, withscores=True)
            start = max(int(time.time() * 1000), int(newest[0][1]) + 1 if newest else 0)
            firsts = dict.fromkeys(p[2] for p in posts)
            await self.redis.zadd(self.keys.versions, {v: start + n for n, v in enumerate(firsts)}, nx=True)
        fresh, due, at = [], [], 0
        for _, user, version, _, member, _ in posts:
            reply = replies[at]
            if member is None:  # the repository's reply: 1 when new
                fresh.append(bool(int(reply)))
                at += 1
                continue
            fresh.append(bool(int(reply[0])))
            if int(reply[0]) or reply[1] != reply[2]:
                due.append((user, version))
            at += 2
        return fresh, list(dict.fromkeys(due))

    async def remove_items(self, item_ids: list[str], label_keys: list[str], *, also: Sequence[str] = ()) -> int:
        """Take shops' removed items out of every version's repository (a removal entry on each stream that held
        them, so indexes drop them too) and delete ``label_keys`` (their labels and what lies beside them);
        returns how many repository entries were removed. Idempotent.

        ``also``: versions to mark the items removed in even before their repository is listed (the version
        being labelled: its first items may still be on their way to the profiles stage).
        """
        versions = await self._versions(also)
        calls = [(self._remove_item, list(self.keys.repo(v)), [i]) for i in item_ids for v in versions]
        removed = sum(int(r) for r in await self._run(calls)) if calls else 0
        if item_ids:  # no longer the shop's: a post given the id later is not removed by this tombstone seen again
            await self.redis.srem(self.keys.catalogue_items, *item_ids)
        if self._cluster:  # keys of several slots: one command each
            await asyncio.gather(*(self.redis.delete(k) for k in label_keys))
        elif label_keys:
            await self.redis.delete(*label_keys)
        return removed

    async def mark_listed(self, item_ids: list[str]) -> None:
        """These ids are shops' items (labelled by the catalogue stage): a tombstone may remove them."""
        if item_ids:
            await self.redis.sadd(self.keys.catalogue_items, *item_ids)

    async def listed(self, item_id: str) -> bool:
        return bool(await self.redis.sismember(self.keys.catalogue_items, item_id))

    async def was_removed(self, item_id: str, *, also: Sequence[str] = ()) -> bool:
        """Whether a shop removed this id from any version's repository, or one of ``also`` (a tombstone seen
        again)."""
        keys = [self.keys.repo(v)[2] for v in await self._versions(also)]
        if self._cluster:  # one slot per version
            return any(await asyncio.gather(*(self.redis.sismember(k, item_id) for k in keys)))
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.sismember(key, item_id)
            return any(await pipe.execute())

    async def _versions(self, also: Sequence[str] = ()) -> list[str]:
        """Every version with a repository, then those of ``also`` not listed yet."""
        listed = [v.decode() for v in await self.redis.zrange(self.keys.versions, 0, -1)]
        return list(dict.fromkeys([*listed, *also]))

    async def restore_items(self, item_ids: list[str], version: str) -> None:
        """Items their shop sends again after removing them may join ``version``'s repository again."""
        if item_ids:
            await self.redis.srem(self.keys.repo(version)[2], *item_ids)

    async def members(self, user: str, version: str) -> tuple[bytes, list[bytes]]:
        """``(rev, member bytes)`` of one profile, as one snapshot."""
        _, members, rev, _, _ = self.keys.user(user, version)
        reply = await self._read(keys=[members, rev])
        return reply[0], reply[1:]

    async def set_profile(self, user: str, version: str, rev: bytes, profile: bytes) -> bool:
        """Store a profile computed from the members at ``rev``; False when a post was added since (its
        writer stores the newer one)."""
        _, _, rev_key, profile_key, profile_rev = self.keys.user(user, version)
        return bool(await self._set(keys=[rev_key, profile_key, profile_rev], args=[rev, profile]))

    async def _run(self, calls: Iterable) -> list:
        calls = list(calls)
        if self._cluster:  # cluster pipelines refuse scripts: each goes to its slot's node, concurrently
            await self.redis.initialize()
            return list(await asyncio.gather(*(script(keys=k, args=a) for script, k, a in calls)))
        async with self.redis.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                await script(keys=keys, args=args, client=pipe)
            return list(await pipe.execute())
