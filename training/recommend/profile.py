"""A user's style profile: the time-decayed mean of the fashion vectors of their latest posts.

The profile is a pure function of the *set* of posts it holds: members are sorted by (creation time,
post id) before anything is summed, and a post's weight depends only on its age relative to the user's
newest post (``0.5 ** (age / half_life)``), never on when it was processed. So adding a post twice, in
another order, or replaying a whole topic gives the same bytes, and the set itself is idempotent (a
post is a member or not).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from training.recommend.vectors import VectorRecord

_MEMBER = b"SSM1"
_PROFILE = b"SSP1"


@dataclass(frozen=True)
class Member:
    """One post of a profile: its label vector and its vector record."""

    label: np.ndarray
    record: VectorRecord

    def encode(self) -> bytes:
        label = np.ascontiguousarray(self.label, dtype="<f2").tobytes()
        return _MEMBER + struct.pack("<I", len(label)) + label + self.record.encode()

    @classmethod
    def decode(cls, raw: bytes) -> Member:
        """Raises ``ValueError`` on anything that is not an encoded member."""
        if raw[:4] != _MEMBER or len(raw) < 8:
            raise ValueError("not a profile member")
        (size,) = struct.unpack("<I", raw[4:8])
        label = np.frombuffer(raw[8: 8 + size], dtype="<f2").astype(np.float32)
        return cls(label, VectorRecord.decode(raw[8 + size:]))


@dataclass(frozen=True)
class Profile:
    """The aggregate: decayed means of the label vectors and of each embedding row (rows re-normalised)."""

    user: str
    model_version: str
    posts: int
    newest_ms: int
    label: np.ndarray  # float32 [L]
    embedding: np.ndarray  # float32 [R, C]

    def encode(self) -> bytes:
        header = json.dumps({"user": self.user, "model_version": self.model_version, "posts": self.posts,
                             "newest_ms": self.newest_ms, "label": len(self.label),
                             "shape": list(self.embedding.shape)}, separators=(",", ":"), ensure_ascii=False).encode()
        return (_PROFILE + struct.pack("<I", len(header)) + header
                + np.ascontiguousarray(self.label, dtype="<f4").tobytes()
                + np.ascontiguousarray(self.embedding, dtype="<f4").tobytes())

    @classmethod
    def decode(cls, raw: bytes) -> Profile:
        """Raises ``ValueError`` on anything that is not an encoded profile."""
        if raw[:4] != _PROFILE or len(raw) < 8:
            raise ValueError("not a profile")
        (size,) = struct.unpack("<I", raw[4:8])
        head = json.loads(raw[8: 8 + size])
        body = np.frombuffer(raw[8 + size:], dtype="<f4")
        n = int(head["label"])
        return cls(head["user"], head["model_version"], int(head["posts"]), int(head["newest_ms"]),
                   body[:n].copy(), body[n:].reshape(tuple(head["shape"])).copy())


def decay_weights(created_ms: Sequence[int], half_life_s: float) -> np.ndarray:
    """``0.5 ** (age / half_life)`` with ages measured from the newest time given (float64)."""
    times = np.asarray(created_ms, dtype=np.float64)
    return np.power(0.5, (times.max() - times) / (half_life_s * 1000.0))


def aggregate(members: Sequence[Member], *, user: str, half_life_s: float) -> Profile:
    """The profile of a non-empty set of members of one model version (order does not matter).

    Raises:
        ValueError: no members, or members of several model versions or embedding shapes.
    """
    if not members:
        raise ValueError("a profile needs at least one post")
    ordered = sorted(members, key=lambda m: (m.record.created_ms, m.record.post_id))
    versions = {m.record.model_version for m in ordered}
    shapes = {m.record.embedding.shape for m in ordered}
    if len(versions) != 1 or len(shapes) != 1:
        raise ValueError(f"one profile mixes versions {sorted(versions)} / shapes {sorted(shapes)}")
    weights = decay_weights([m.record.created_ms for m in ordered], half_life_s)
    total = weights.sum()
    labels = np.stack([m.label.astype(np.float64) for m in ordered])
    embeddings = np.stack([m.record.embedding.astype(np.float64) for m in ordered])
    label = (weights @ labels) / total
    embedding = np.tensordot(weights, embeddings, axes=1) / total
    norms = np.linalg.norm(embedding, axis=1, keepdims=True)
    embedding = np.divide(embedding, norms, out=np.zeros_like(embedding), where=norms > 0)
    return Profile(user, versions.pop(), len(ordered), ordered[-1].record.created_ms,
                   label.astype(np.float32), embedding.astype(np.float32))


def keep_newest(scores: dict[str, int], cap: int) -> set[str]:
    """The post ids a capped profile keeps: the ``cap`` newest by (time, id), as the Redis script keeps them."""
    return {p for _, p in sorted(((t, p) for p, t in scores.items()), reverse=True)[:cap]}
