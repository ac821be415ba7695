"""Profiles and the repository in Redis: idempotent per post id, one hash slot per script.

Keys under ``<prefix>`` (the ``redis_prefix`` setting), per model version ``V``:

* ``{<prefix>:user:<H>}:posts:V`` (zset post id → creation ms), ``…:members:V`` (hash post id →
  :class:`~training.recommend.profile.Member`), ``…:rev:V`` (adds so far), ``…:profile:V`` (the encoded
  :class:`~training.recommend.profile.Profile`) and ``…:profile_rev:V`` (the ``rev`` it was computed at).
  ``H`` is a digest of the user name, so any name makes a valid hash tag; the profile holds the name.
* ``{<prefix>:repo:V}:ids`` (set of post ids) and ``{<prefix>:repo:V}:stream`` (one entry per post: id,
  user, and an item, a member whose embedding is the whole-photo row only; and an entry with ``removed``
  when a shop removed its item), ``{<prefix>:repo:V}:removed`` (catalogue items removed, kept out),
  ``{<prefix>:repo:V}:catalogue`` (the ids in ``ids`` that joined as shops' items: all a tombstone may take
  out; post and item ids share one space) with ``{<prefix>:repo:V}:catalogue_tracked`` (set once that set is
  complete: at the repository's first add, or after a repository written before it was kept was read), and
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
from typing import NamedTuple

from training.recommend.profile import Member

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

# KEYS: ids set, stream, removed set, catalogue set, tracked flag. ARGV: post id, user, item bytes, '1' for a
# catalogue item. Returns 1 when the post is new to the repository; an item its shop removed stays out (a label of
# it still on its way must not bring it back). Only an item that joins here enters the catalogue set: when the id is
# a post's already, a tombstone for the item must not take the post out.
_ADD_ITEM = """
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[5], '1') end
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[4] == '1' then redis.call('SADD', KEYS[4], ARGV[1]) end
redis.call('XADD', KEYS[2], '*', 'post_id', ARGV[1], 'user', ARGV[2], 'item', ARGV[3])
return 1
"""

# KEYS: ids set, stream, removed set, catalogue set. ARGV: item id. Returns 1 when the item was in the repository
# (a removal entry now follows its entry on the stream), 0 when the id is not in it (marked removed, so a label of
# the item on its way stays out), -1 when a post holds the id (nothing changes).
_REMOVE_ITEM = """
if redis.call('SREM', KEYS[4], ARGV[1]) == 1 then
  redis.call('SADD', KEYS[3], ARGV[1])
  redis.call('SREM', KEYS[1], ARGV[1])
  redis.call('XADD', KEYS[2], '*', 'post_id', ARGV[1], 'removed', '1')
  return 1
end
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return -1 end
redis.call('SADD', KEYS[3], ARGV[1])
return 0
"""

# KEYS: ids set, stream, catalogue set, tracked flag. ARGV: the last stream entry read ('' for none), '1' on the last
# call (sets the flag), then ids whose latest entry up to it added them as catalogue items. Ids with a later entry
# are left to the scripts above, which keep the set from then on; one that left ``ids`` is no item there any more.
_TRACK = """
local later = {}
local from = ARGV[1] == '' and '-' or '(' .. ARGV[1]
for _, entry in ipairs(redis.call('XRANGE', KEYS[2], from, '+')) do
  local fields = entry[2]
  for i = 1, #fields, 2 do if fields[i] == 'post_id' then later[fields[i + 1]] = true end end
end
for i = 3, #ARGV do
  if not later[ARGV[i]] and redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 1 then redis.call('SADD', KEYS[3], ARGV[i]) end
end
if ARGV[2] == '1' then redis.call('SET', KEYS[4], '1') end
return 1
"""

#: Stream entries per read, ids per script call, when an old repository's catalogue items are found.
_TRACK_CHUNK = 1000


def _is_catalogue(item: bytes | None) -> bool:
    """Whether a repository stream entry's item is a shop's (an entry that does not decode is taken as a post's)."""
    try:
        return item is not None and Member.decode(item).record.catalogue
    except ValueError:
        return False


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

    def repo_catalogue(self, version: str) -> tuple[str, str]:
        """The set of catalogue items in one version's repository, and the flag set once that set is complete."""
        tag = f"{{{self.prefix}:repo:{version}}}"
        return f"{tag}:catalogue", f"{tag}:catalogue_tracked"

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


class RepoPost(NamedTuple):
    """One labelled post or shop's item for :meth:`ProfileWriter.add`."""

    post_id: str
    user: str
    version: str
    created_ms: int
    #: Its member of its user's profile; ``None``: it joins its repository only (a shop's item, or a post that
    #: names no user: nobody can ask for an empty name's recommendations).
    member: bytes | None
    #: Its repository entry: a member whose embedding is the whole-photo row only.
    item: bytes
    #: A shop's item: a tombstone on the catalogue topic may take it out again.
    catalogue: bool = False


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
        self._track = redis.register_script(_TRACK)
        self._tracked: set[str] = set()  # versions whose catalogue set is known complete

    async def vectors(self, post_ids: list[str]) -> list[bytes | None]:
        """The classifier's vector records of these posts (``None`` where absent), one round trip."""
        if not post_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for post_id in post_ids:
                pipe.get(self.keys.label_vector(post_id))
            return list(await pipe.execute())

    async def labels(self, post_ids: list[str]) -> list[tuple[bytes | None, bytes | None]]:
        """Per post, its stored label and vector record, as the classifier wrote them (``None`` where absent), in one
        round trip."""
        if not post_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for post_id in post_ids:
                pipe.get(self.keys.label(post_id))
                pipe.get(self.keys.label_vector(post_id))
            replies = list(await pipe.execute())
        return list(zip(replies[::2], replies[1::2]))

    async def add(self, posts: Sequence[RepoPost], cap: int) -> tuple[list[bool], list[tuple[str, str]]]:
        """Add posts to profiles and repositories; a post without a member joins its repository only.

        Returns per post whether it was new (to its profile; to its repository for one without a member), and the
        ``(user, version)`` profiles to recompute: changed, or left behind by an earlier crash.
        """
        calls, profiled = [], []
        for post_id, user, version, created, member, item, catalogue in posts:
            if member is not None:
                posts_key, members, rev, _, profile_rev = self.keys.user(user, version)
                profiled.append(len(calls))
                calls.append((self._add_member, [posts_key, members, rev, profile_rev], [post_id, created, member, cap]))
            keys = [*self.keys.repo(version), *self.keys.repo_catalogue(version)]
            calls.append((self._add_item, keys, [post_id, user, item, "1" if catalogue else "0"]))
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
        for _, user, version, _, member, _, _ in posts:
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

    async def remove_item(self, item_id: str, label_keys: list[str], *,
                          also: Sequence[str] = ()) -> tuple[int, int]:
        """Take a shop's removed item out of every version's repository where it joined as the shop's item (a removal
        entry on each stream that held it, so indexes drop it too), then delete ``label_keys`` (its label and what
        lies beside it). Idempotent.

        ``also``: versions to mark the item removed in even before their repository is listed (the version being
        labelled: its first items may still be on their way to the profiles stage).

        Returns:
            ``(repository entries removed, repositories where a post holds the id)``. When a post holds the id and
            no repository held the item, nothing is deleted: the id names a post there, not the shop's item.
        """
        versions = await self._versions(also)
        for version in versions:
            await self.track_catalogue(version)
        replies = [int(r) for r in await self._run(
            (self._remove_item, [*self.keys.repo(v), self.keys.repo_catalogue(v)[0]], [item_id]) for v in versions)]
        removed, held = replies.count(1), replies.count(-1)
        if held and not removed:
            return removed, held
        # No longer the shop's: a post given the id later is not removed by this tombstone seen again.
        await self.redis.srem(self.keys.catalogue_items, item_id)
        if self._cluster:  # keys of several slots: one command each
            await asyncio.gather(*(self.redis.delete(k) for k in label_keys))
        elif label_keys:
            await self.redis.delete(*label_keys)
        return removed, held

    async def track_catalogue(self, version: str) -> None:
        """Make one version's catalogue set complete: a repository written before the set was kept (no tracked
        flag) has its items found on its stream, once; until then a tombstone takes none of them out."""
        ids, stream, _ = self.keys.repo(version)
        members, tracked = self.keys.repo_catalogue(version)
        if version in self._tracked or await self.redis.exists(tracked):
            self._tracked.add(version)
            return
        latest, last = {}, b""
        while entries := await self.redis.xrange(stream, min=b"(" + last if last else "-", count=_TRACK_CHUNK):
            for entry_id, fields in entries:
                latest[fields[b"post_id"]] = b"removed" not in fields and _is_catalogue(fields.get(b"item"))
            last = entries[-1][0]
        items = [post_id for post_id, catalogue in latest.items() if catalogue]
        starts = range(0, len(items), _TRACK_CHUNK) or [0]
        for start in starts:  # the flag with the last part: another process never trusts a set half written
            final = "1" if start == starts[-1] else "0"
            await self._track(keys=[ids, stream, members, tracked],
                              args=[last, final, *items[start: start + _TRACK_CHUNK]])
        self._tracked.add(version)

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
