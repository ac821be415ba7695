"""Profiles stage: ``labels`` → each user's style profile and the repository, in Redis (at-least-once, idempotent).

Per label the stage reads what the classifier stored for the post, in one round trip: the label
(``<prefix>:label:ID``) and the vector record beside it (``{<prefix>:label:ID}:vec``: the post's user, creation time
and image embedding; the label itself names no user). It joins the stored label's probabilities with the record into
a fashion vector, and adds the post to its user's profile and to its model version's repository (a catalogue item,
marked so in its record, and a post whose user is empty join the repository only). The record on the topic only says
which post to add: anyone may write to ``labels``, and the adds keep the first write per post for good, so its
content never reaches a profile. Both adds are scripts that do nothing for a post already there, and a profile is
recomputed from its member set (a pure function of the set), so a redelivered or replayed label changes no byte. A
record is marked done only after Redis holds all of it; the loop then commits.

Labels that add nothing are counted and passed over: an abstaining label (no garment), a vector record or label
expired with the label's TTL, a record on the topic from another model version than the stored ones (the newer
label, on its way, carries the post), or a stored label whose scores are not probabilities (not finite, or
outside 0..1: counted as bad state too).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter, Histogram

from serving.ontology import load_ontology
from streamcore.exceptions import BadInput
from streamcore.redisconn import connect_async
from streamcore.settings import Settings
from streamcore.stage import Stage
from training.recommend.profile import Member, aggregate
from training.recommend.store import ProfileWriter, RepoPost
from training.recommend.vectors import Layout, VectorRecord

log = logging.getLogger(__name__)

class ProfilesStage(Stage):
    """Labels + vector records → profiles and repositories."""

    name = "profiles"
    inputs = ("labels",)

    def __init__(self, settings: Settings, **kwargs) -> None:
        super().__init__(settings, **kwargs)
        self.max_posts = settings.profiles.max_posts
        self.half_life_s = settings.profiles.half_life_days * 86400.0
        self.layout = Layout(load_ontology())
        registry = self.metrics.registry
        self.outcomes = Counter("stylestream_profile_posts_total", "Labels the profile stage took, by outcome",
                                ("outcome",), registry=registry)
        self.recomputed = Histogram("stylestream_profile_update_seconds", "Time to recompute and store one profile",
                                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0), registry=registry)
        for outcome in ("added", "catalogue_item", "already_added", "no_garment", "no_vector", "no_label",
                        "older_vector", "bad_label"):
            self.outcomes.labels(outcome)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="profiles")

    async def setup(self) -> None:
        self.writer = ProfileWriter(connect_async(self.settings.redis), self.settings.redis.prefix,
                                    cluster=self.settings.redis.cluster)

    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        parsed = []
        for record in records:
            try:
                parsed.append((record, _parse(record.value)))
            except BadInput as exc:
                await self.dead_letter(record, exc)
        if not parsed:
            return
        ids = [label["post_id"] for _, label in parsed]
        stored = await self.retrying("vector_read", lambda: self.writer.labels(ids))
        posts, outcomes = [], []
        for (record, label), (raw_label, raw) in zip(parsed, stored):
            outcome, post = self._fashion_vector(label, raw_label, raw)
            outcomes.append(outcome)
            if post is not None:
                posts.append(post)
        if posts:
            fresh = iter(await self.retrying("profile_write", lambda: self._write(posts)))
            outcomes = [(o if next(fresh) else "already_added") if o in ("added", "catalogue_item") else o
                        for o in outcomes]
        for (record, _), outcome in zip(parsed, outcomes):
            self.outcomes.labels(outcome).inc()
            self.done(record)

    def _fashion_vector(self, label: dict, raw_label: bytes | None, raw: bytes | None) -> tuple[str, tuple | None]:
        """``(outcome, post to add)`` for one label on the topic and the label and record stored for its post (see
        the module docstring)."""
        if label.get("abstain"):
            return "no_garment", None
        if raw is None:
            return "no_vector", None
        try:
            record = VectorRecord.decode(raw)
        except ValueError:
            self.metrics.bad_state.labels(self.name, "label_vector").inc()
            return "no_vector", None
        if record.model_version != label["model_version"]:
            return "older_vector", None
        outcome, vec = self._stored_vector(raw_label, record)
        if vec is None:
            return outcome, None
        item = VectorRecord(record.post_id, record.user, record.created_ms, record.model_version, record.embedding[:1],
                            record.catalogue)
        # A shop's item has no profile, nor has a post that names no user (no profile could be asked for by name).
        member = None if record.catalogue or not record.user else Member(vec, record).encode()
        return ("catalogue_item" if record.catalogue else "added"), RepoPost(
            record.post_id, record.user, record.model_version, record.created_ms, member, Member(vec, item).encode(),
            record.catalogue)

    def _stored_vector(self, raw: bytes | None, record: VectorRecord) -> tuple[str, np.ndarray | None]:
        """``(outcome, label vector)`` of the label the classifier stored beside ``record`` (``None``: add nothing)."""
        if raw is None:
            return "no_label", None
        try:
            stored = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            stored = None
        if not isinstance(stored, dict) or stored.get("post_id") != record.post_id:
            self.metrics.bad_state.labels(self.name, "label").inc()
            return "bad_label", None
        if stored.get("model_version") != record.model_version:  # relabelled since the record was read
            return "older_vector", None
        if stored.get("abstain"):
            return "no_garment", None
        vec = _label_vector(self.layout, stored)
        if vec is None:
            self.metrics.bad_state.labels(self.name, "label").inc()
            return "bad_label", None
        return "", vec

    async def _write(self, posts: list[RepoPost]) -> list[bool]:
        """Add the posts, recompute the profiles that changed; per post, whether it was new."""
        fresh, due = await self.writer.add(posts, self.max_posts)
        for user, version in due:
            started = time.perf_counter()
            rev, raw = await self.writer.members(user, version)
            if not raw:  # nothing left to aggregate (cannot happen with a cap of at least one post)
                continue
            profile = await asyncio.get_running_loop().run_in_executor(
                self._pool, _profile_bytes, raw, user, self.half_life_s)
            await self.writer.set_profile(user, version, rev, profile)
            self.recomputed.observe(time.perf_counter() - started)
        return fresh

    async def shutdown(self) -> None:
        await self.writer.redis.aclose()
        self._pool.shutdown()


def _profile_bytes(members: list[bytes], user: str, half_life_s: float) -> bytes:
    return aggregate([Member.decode(m) for m in members], user=user, half_life_s=half_life_s).encode()


def _label_vector(layout: Layout, label: dict) -> np.ndarray | None:
    """The label's vector, or ``None`` when a score is not a probability (not a number, not finite, outside 0..1) or
    a term is malformed: a profile and the repository keep a post's first vector for good."""
    try:
        for field in ("categories", "subcategories", "attributes"):
            for term in label.get(field) or ():
                score = term["score"]
                if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
                    return None
        vec = layout.label_vector(label)
    except (TypeError, KeyError, ValueError, AttributeError, OverflowError):
        return None
    return vec if bool(np.isfinite(vec).all()) else None  # a finite score can still overflow float32


def _parse(value: bytes | None) -> dict:
    """The label fields the stage reads. Raises ``BadInput`` (``label_invalid``) when it is not a label.

    The bytes are decoded as UTF-8 first, strictly: ``json.loads`` of bytes would guess UTF-16 or UTF-32 from the
    first bytes (``\\xff\\xfe``, a UTF-16 byte-order mark) and report a JSON error for what is an encoding one.
    """
    if not value:
        raise BadInput("label_invalid", "labels record has no value (a tombstone or an empty record)")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput("label_invalid", f"labels record is not UTF-8: {exc}") from None
    if text.startswith("\ufeff"):
        raise BadInput("label_invalid", "labels record is not UTF-8 JSON: it starts with a byte-order mark")
    try:
        label = json.loads(text)
        if not isinstance(label, dict) or not isinstance(label.get("post_id"), str) or "model_version" not in label:
            raise ValueError("not a label/v1 object")
        return label
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep for the parser
        raise BadInput("label_invalid", f"labels record is not a label: {exc}") from None


def run(settings: Settings) -> None:
    """Run one profiles consumer until SIGTERM/SIGINT."""
    stage = ProfilesStage(settings)
    stage.serve_health(settings.metrics.stage_port("profiles"))
    asyncio.run(stage.run())
