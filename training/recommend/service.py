"""Recommendations: ``recommend(user, k)`` from a style profile and ``more_like_this(post_id, k)`` from a post.

A :class:`Recommender` keeps one :class:`~training.recommend.index.VersionIndex` per model version,
caught up from that version's repository stream in Redis (from its snapshot's cursor, or from the start:
a rebuild). Every answer comes from ONE version: the query (profile or post) and the items it is compared
with are that version's, and the answer names it. Which version serves:

* the serving model's (``<prefix>:model:current``), once its repository is *ready*: as large as
  ``ready_fraction`` of the largest older version's (a hot-swap's new embedding space fills as posts are
  labelled or re-embedded; until then the previous version keeps answering, never a mix);
* for a user, the newest ready version in which they have a profile.

Ranking: ``cover`` (explicit coverage of the garments and body parts the profile or post shows; chosen by
measurement, docs/recommendations.md), ``parts`` (one query per body part, merged by xQuAD), ``mmr``, or ``plain``.
Each item says why: the part it was picked for, or else the part or attribute family where its label overlaps
the query's most, with the shared terms. The repository holds labelled posts and shops' catalogue items.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from serving.ontology import load_ontology
from streamcore.redisconn import connect
from streamcore.settings import Settings
from training.recommend.index import VersionIndex
from training.recommend.profile import Member, Profile
from training.recommend.ranking import cover, covering, explain, joint, mmr, part_queries, plain
from training.recommend.store import Keys, user_tag
from training.recommend.vectors import Layout

log = logging.getLogger(__name__)

RANKINGS = ("cover", "parts", "mmr", "plain")
_CHUNK = 1000
#: What loading a snapshot that is cut short, corrupted or from an older layout raises (hnswlib: RuntimeError).
_BROKEN = (OSError, ValueError, KeyError, TypeError, IndexError, EOFError, RuntimeError)


@dataclass(frozen=True)
class Item:
    post_id: str
    user: str
    score: float
    #: Why it matched: a body part or attribute family (``look`` when only the image matched) and shared terms.
    facet: str
    terms: list[str]
    #: A shop's catalogue item (``user`` is the shop), not a post.
    catalogue: bool = False


@dataclass(frozen=True)
class Answer:
    query: str
    model_version: str | None
    ranking: str
    items: list[Item] = field(default_factory=list)
    #: Why there are no items: ``no_ready_version`` (no repository indexed yet), ``no_profile`` (the user has no
    #: labelled post in a ready version), ``unknown_post`` (the post is in no ready version's index).
    reason: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Recommender:
    """Recommendations over the repositories in Redis, one in-process index per model version."""

    def __init__(self, settings: Settings, *, index_dir: Path | None = None, redis=None,
                 ready_fraction: float = 0.9) -> None:
        self.settings = settings
        self.redis = redis if redis is not None else connect(settings.redis)
        self.keys = Keys(settings.redis.prefix)
        self.layout = Layout(load_ontology())
        self.index_dir = Path(index_dir) if index_dir is not None else None
        self.ready_fraction = ready_fraction
        self.indexes: dict[str, VersionIndex] = {}

    # -- keeping up with the repositories --------------------------------------------------------
    def versions(self) -> list[str]:
        """Versions with a repository, oldest first."""
        return [v.decode() for v in self.redis.zrange(self.keys.versions, 0, -1)]

    def sync(self) -> dict[str, int]:
        """Catch every version's index up with its repository stream; items added per version. An index of another
        repository (Redis emptied or replaced since it was built) is dropped and built again."""
        added, versions = {}, self.versions()
        for version in set(self.indexes) - set(versions):
            del self.indexes[version]
        for version in versions:
            index = self.indexes.get(version)
            if index is not None and not self._of_this_repository(index):
                log.warning("index of %s is of another repository (%s, here %s); building this one's from its stream",
                            version, index.origin, self._origin(version) or "empty")
                index = None
            if index is None:
                index = self._load(version)
            if index is None:
                index = self._new_index(version)
            if index is None:
                continue
            self.indexes[version] = index
            added[version] = self._read_stream(index)
        return added

    def _load(self, version: str) -> VersionIndex | None:
        """The version's snapshot, or None: none saved, or a broken one (moved aside to ``<version>.broken``, so
        the index is rebuilt from the stream and the next save writes a whole one)."""
        folder = self.index_dir / version if self.index_dir is not None else None
        if folder is None or not folder.exists():
            return None
        try:
            index = VersionIndex.load(folder)
        except _BROKEN as exc:
            log.warning("index snapshot %s cannot be loaded (%s: %s); rebuilding it from the repository stream",
                        folder, type(exc).__name__, exc)
        else:
            # Another Redis, another prefix, or this one restarted empty: its items are not this repository's.
            if self._of_this_repository(index):
                return index
            log.warning("index snapshot %s is of another repository (%s, here %s); building this one's from its "
                        "stream", folder, index.origin or "unrecorded", self._origin(version) or "empty")
            return None
        aside = folder.with_name(folder.name + ".broken")
        shutil.rmtree(aside, ignore_errors=True)
        try:
            os.rename(folder, aside)
        except OSError:  # leaving it is harmless: the next save replaces it
            shutil.rmtree(folder, ignore_errors=True)
        return None

    def save(self) -> None:
        """Snapshot every index (under ``index_dir``); one process at a time (two ``stylestream recommend`` runs
        may save at once, and a save's two renames are not one step)."""
        if self.index_dir is None:
            raise ValueError("no index_dir to save snapshots in")
        self.index_dir.mkdir(parents=True, exist_ok=True)
        with open(self.index_dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for version, index in self.indexes.items():
                index.save(self.index_dir / version)

    def rebuild(self, version: str) -> int:
        """Drop a version's index and build it again from its repository stream; items indexed."""
        self.indexes.pop(version, None)
        index = self._new_index(version)
        if index is None:
            return 0
        self._read_stream(index)
        self.indexes[version] = index
        return len(index)

    # -- answering -------------------------------------------------------------------------------
    def ready(self) -> list[str]:
        """Versions an answer may come from, preferred first (see the module docstring)."""
        order = [v for v in self.versions() if v in self.indexes]
        sizes = {v: len(self.indexes[v]) for v in order}
        ready = [v for n, v in enumerate(order)
                 if sizes[v] > 0 and sizes[v] >= self.ready_fraction * max([0, *(sizes[o] for o in order[:n])])]
        current = self.redis.get(self.keys.model_current)
        current = current.decode() if current else None
        preferred = [current] if current in ready else []
        older = [v for v in reversed(ready) if v not in preferred]
        if current in order and current not in ready:  # the new space is filling: only versions before it
            older = [v for v in older if order.index(v) < order.index(current)]
        return preferred + older

    def profile(self, user: str, version: str) -> Profile | None:
        raw = self.redis.get(self.keys.user(user, version)[3])
        return Profile.decode(raw) if raw else None

    def recommend(self, user: str, k: int = 10, *, ranking: str = "cover") -> Answer:
        """The k repository items closest to the user's style profile, diversified; none without a profile.

        Raises:
            ValueError: ``k`` below 1, an unknown ranking, or a user name that is not valid UTF-8.
        """
        _check_k(k)
        user_tag(user)  # names that cannot be stored are refused before any lookup
        ready = self.ready()
        for version in ready:
            profile = self.profile(user, version)
            if profile is not None:
                index = self.indexes[version]
                own = index.of_user(user)
                return answer(self.layout, f"user:{user}", index, profile.embedding, profile.label, k, ranking, own)
        return Answer(f"user:{user}", None, ranking, reason="no_profile" if ready else "no_ready_version")

    def more_like_this(self, post_id: str, k: int = 10, *, ranking: str = "cover") -> Answer:
        """The k items most like one indexed post, diversified the same way.

        Raises:
            ValueError: ``k`` below 1, or an unknown ranking.
        """
        _check_k(k)
        ready = self.ready()
        for version in ready:
            index = self.indexes[version]
            position = index.position(post_id)
            if position is not None:
                vector, label = index.vector(position), index.label(position)
                embedding = vector[: index.dim - len(label)]
                return answer(self.layout, f"post:{post_id}", index, embedding[None], label, k, ranking, {position})
        return Answer(f"post:{post_id}", None, ranking, reason="unknown_post" if ready else "no_ready_version")

    # -- reading the repository stream -----------------------------------------------------------
    def _origin(self, version: str) -> str:
        """The repository's identity: its key prefix and its stream's first entry (a stream is never trimmed, and
        an emptied Redis starts a new one with another id)."""
        first = self.redis.xrange(self.keys.repo(version)[1], count=1)
        return f"{self.keys.prefix}@{first[0][0].decode()}" if first else ""

    def _of_this_repository(self, index: VersionIndex) -> bool:
        """Whether ``index`` was built from this repository's stream: the same first entry, and read no further
        than its last (a cursor past it would skip the items still to come)."""
        if index.origin != self._origin(index.version):
            return False
        last = self.redis.xrevrange(self.keys.repo(index.version)[1], count=1)
        return bool(last) and _stream_id(index.cursor) <= _stream_id(last[0][0].decode())

    def _new_index(self, version: str) -> VersionIndex | None:
        first = self.redis.xrange(self.keys.repo(version)[1], count=1)
        if not first:
            return None
        member = Member.decode(first[0][1][b"item"])
        dim = member.record.embedding.shape[1] + len(member.label)
        index = VersionIndex(version, dim, len(member.label))
        index.origin = f"{self.keys.prefix}@{first[0][0].decode()}"
        return index

    def _read_stream(self, index: VersionIndex) -> int:
        stream, added = self.keys.repo(index.version)[1], 0
        while True:
            entries = self.redis.xrange(stream, min=f"({index.cursor}", count=_CHUNK)
            if not entries:
                return added
            run = []  # consecutive items, added in one call; a removal applies after the items before it
            for _, fields in entries:
                if b"item" in fields:
                    run.append(fields)
                    continue
                added += _add(index, run)
                run = []
                index.remove(fields[b"post_id"].decode())
            added += _add(index, run)
            index.cursor = entries[-1][0].decode()


def _stream_id(entry: str) -> tuple[int, int]:
    """A stream entry id (``<ms>-<seq>``) as numbers, to order ids; unreadable: after every real one."""
    try:
        ms, seq = entry.split("-")
        return int(ms), int(seq)
    except ValueError:
        return (2**64, 0)


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a whole number of items, at least 1; got {k!r}")


def _add(index: VersionIndex, entries: list[dict]) -> int:
    """Add repository stream entries (items) to ``index``; how many were new."""
    if not entries:
        return 0
    members = [Member.decode(fields[b"item"]) for fields in entries]
    return index.add([f[b"post_id"].decode() for f in entries], [f[b"user"].decode() for f in entries],
                     np.stack([joint(m.record.embedding[0], m.label) for m in members]),
                     np.stack([m.label for m in members]).astype(np.float16), [m.record.catalogue for m in members])


def answer(layout: Layout, query: str, index: VersionIndex, embedding: np.ndarray, label: np.ndarray, k: int,
           ranking: str, exclude: set[int]) -> Answer:
    """The k items of one version's index for a query's embedding rows and label vector, ranked and explained."""
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    _check_k(k)
    whole = joint(embedding[0], label)
    search = index.search
    if ranking == "plain":
        picked = [(p, None) for p in plain(whole, search, k, exclude=exclude)]
    elif ranking == "mmr":
        ids, _ = search(whole, max(100, k) + len(exclude))  # a pool of k at least, past the query's own
        ids = np.array([i for i in ids if int(i) not in exclude], dtype=np.int64)
        picked = [(int(ids[n]), None) for n in mmr(whole, ids, index.vectors(ids), k)]
    elif ranking == "parts":
        picked = covering(whole, part_queries(embedding, label, layout), search, k, exclude=exclude,
                          vectors_of=index.vectors,
                          shows=lambda part, ids: layout.shows_part(part, index.labels(ids)))
    else:
        picked = cover(whole, label, part_queries(embedding, label, layout), search, k, exclude=exclude,
                       vectors_of=index.vectors, labels_of=index.labels, layout=layout)
    positions = np.array([p for p, _ in picked], dtype=np.int64)
    scores, labels = index.vectors(positions) @ whole, index.labels(positions)
    items = []
    for n, (position, part) in enumerate(picked):
        query_label = label * layout.part_query_mask(part, label) if part else label
        facet, terms = explain(query_label, labels[n], layout, facet=part)
        items.append(Item(index.post_ids[position], index.users[position], round(float(scores[n]), 4), facet, terms,
                          position in index.catalogue))
    return Answer(query, index.version, ranking, items)
