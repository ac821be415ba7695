"""Profile maths: a pure, order-free function of the member set; decay by age from the newest post."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.recommend.profile import Member, Profile, aggregate, decay_weights, keep_newest
from training.recommend.vectors import VectorRecord

DAY_MS = 86_400_000


def _member(post_id: str, created_ms: int, seed: int, *, version: str = "v1", dim: int = 8) -> Member:
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((2, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return Member(rng.random(5).astype(np.float16).astype(np.float32),
                  VectorRecord(post_id, "ana", created_ms, version, emb.astype(np.float16)))


def test_weights_halve_every_half_life_from_the_newest_post() -> None:
    weights = decay_weights([10 * DAY_MS, 9 * DAY_MS, 8 * DAY_MS], half_life_s=86_400)
    assert weights == pytest.approx([1.0, 0.5, 0.25])


def test_a_recent_post_outweighs_an_old_one() -> None:
    old, new = _member("old", 0, 1), _member("new", 60 * DAY_MS, 2)
    profile = aggregate([old, new], user="ana", half_life_s=30 * 86_400)
    # Two half-lives apart: weights 1 and 0.25, so the profile lies 4/5 of the way to the new post.
    assert profile.label == pytest.approx((0.25 * old.label + new.label) / 1.25, abs=1e-6)
    assert profile.posts == 2 and profile.newest_ms == 60 * DAY_MS
    assert np.linalg.norm(profile.embedding, axis=1) == pytest.approx([1.0, 1.0], abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.permutations(list(range(6))), st.integers(0, 5))
def test_order_and_repeats_change_no_byte(order: list[int], repeat: int) -> None:
    members = [_member(f"p{i}", (i % 3) * DAY_MS, i) for i in range(6)]
    reference = aggregate(members, user="ana", half_life_s=86_400).encode()
    shuffled = [members[i] for i in order] + [members[repeat]]
    assert aggregate(list({m.record.post_id: m for m in shuffled}.values()), user="ana",
                     half_life_s=86_400).encode() == reference


def test_encodings_round_trip() -> None:
    member = _member("p1", 5, 3)
    back = Member.decode(member.encode())
    assert (back.record.post_id, back.record.user, back.record.created_ms) == ("p1", "ana", 5)
    assert np.array_equal(back.record.embedding, member.record.embedding)
    assert np.array_equal(back.label, member.label)
    profile = aggregate([member, _member("p2", 9, 4)], user="ana ♥ {x}", half_life_s=100)
    again = Profile.decode(profile.encode())
    assert again.user == "ana ♥ {x}" and np.array_equal(again.embedding, profile.embedding)
    with pytest.raises(ValueError):
        Member.decode(b"nonsense")


def test_one_profile_never_mixes_model_versions() -> None:
    with pytest.raises(ValueError, match="mixes"):
        aggregate([_member("a", 0, 1, version="v1"), _member("b", 0, 2, version="v2")], user="ana", half_life_s=1)


def test_the_cap_keeps_the_newest_posts_ties_by_id() -> None:
    assert keep_newest({"a": 1, "b": 3, "c": 3, "d": 2}, 2) == {"b", "c"}
    assert keep_newest({"a": 1, "b": 3, "c": 3, "d": 2}, 1) == {"c"}
