"""The co-partitioning assignor: partition i of posts and hints on one member, for any member count."""

from __future__ import annotations

from collections import Counter

import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from streamcore.assignor import CopartitionedAssignor


class Cluster:
    """The one call the assignor makes on cluster metadata."""

    def __init__(self, partitions: dict[str, int]) -> None:
        self._partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(self._partitions[topic])) if topic in self._partitions else None


def _assign(members: dict[str, list[str]], partitions: dict[str, int]) -> dict[str, dict[str, list[int]]]:
    metadata = {m: CopartitionedAssignor.metadata(topics) for m, topics in members.items()}
    assert all(isinstance(v, ConsumerProtocolMemberMetadata) for v in metadata.values())
    result = CopartitionedAssignor.assign(Cluster(partitions), metadata)
    assert set(result) == set(members)
    return {m: {t: list(ps) for t, ps in a.assignment} for m, a in result.items()}


@pytest.mark.parametrize("replicas", [1, 2, 3, 4, 5, 12])
def test_posts_i_and_hints_i_go_to_one_member_for_any_replica_count(replicas):
    members = {f"member-{k:02d}": ["posts", "hints"] for k in range(replicas)}
    owned = _assign(members, {"posts": 4, "hints": 4})

    for topic in ("posts", "hints"):  # every partition owned exactly once
        assert sorted(p for a in owned.values() for p in a.get(topic, [])) == [0, 1, 2, 3]
    for member, topics in owned.items():
        assert topics.get("posts", []) == topics.get("hints", []), member
    counts = [len(a.get("posts", [])) for a in owned.values()]
    assert max(counts) - min(counts) <= 1  # balanced: spares only when members outnumber partitions


def test_round_robin_would_split_the_join_with_three_members():
    """Why the assignor exists: the client's default puts posts-i and hints-i on different members."""
    from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

    metadata = {f"m{k}": RoundRobinPartitionAssignor.metadata(["posts", "hints"]) for k in range(3)}
    result = RoundRobinPartitionAssignor.assign(Cluster({"posts": 4, "hints": 4}), metadata)
    split = [m for m, a in result.items() if dict(a.assignment).get("posts") != dict(a.assignment).get("hints")]
    assert split


def test_members_with_different_subscriptions_still_cover_every_partition():
    owned = _assign({"a": ["posts", "hints"], "b": ["posts"], "c": ["feedback"]},
                    {"posts": 4, "hints": 4, "feedback": 2})
    assert Counter(p for a in owned.values() for p in a.get("posts", [])) == Counter(range(4))
    assert sorted(owned["a"]["hints"]) == [0, 1, 2, 3]  # only a reads hints
    assert sorted(owned["c"]["feedback"]) == [0, 1]
    assert set(owned["a"]["posts"]) <= set(owned["a"]["hints"])  # where a owns posts-i, it owns hints-i


def test_a_topic_without_metadata_is_skipped():
    owned = _assign({"a": ["posts", "missing"]}, {"posts": 2})
    assert owned == {"a": {"posts": [0, 1]}}
