"""Co-partitioning group assignor: partition ``i`` of every subscribed topic goes to the same member.

The classifier joins ``posts-i`` with ``hints-i`` in memory, so both must belong to one member for any
replica count (Kafka Streams assigns co-partitioned topics the same way). The default round-robin
assignor does this only when the member count divides the partition count.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)


class CopartitionedAssignor(AbstractPartitionAssignor):
    """Deals partition numbers (not topic-partitions) round-robin over the sorted members.

    A member gets partition ``i`` of every topic it subscribes to. When members subscribe to different
    topics (a rolling change), a topic's partition ``i`` goes to the owner of ``i`` if that member reads
    the topic, else to one of the topic's own subscribers, so every partition still has an owner.
    """

    name = "copartitioned"
    version = 0

    @classmethod
    def assign(cls, cluster: ClusterMetadata,
               members: Mapping[str, ConsumerProtocolMemberMetadata]) -> dict[str, ConsumerProtocolMemberAssignment]:
        """``{member_id: assignment}`` with partition ``i`` of all topics on one member where possible."""
        subscribers: dict[str, list[str]] = defaultdict(list)
        for member in sorted(members):
            for topic in members[member].subscription:
                subscribers[topic].append(member)
        numbers = sorted({p for topic in subscribers for p in (cluster.partitions_for_topic(topic) or ())})
        everyone = sorted(members)
        owner = {p: everyone[i % len(everyone)] for i, p in enumerate(numbers)} if everyone else {}
        assignment: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for topic, readers in subscribers.items():
            for p in sorted(cluster.partitions_for_topic(topic) or ()):
                member = owner[p] if owner[p] in readers else readers[p % len(readers)]
                assignment[member][topic].append(p)
        return {m: ConsumerProtocolMemberAssignment(cls.version, sorted((t, ps) for t, ps in assignment[m].items()), b"")
                for m in members}

    @classmethod
    def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        """This member's subscription, sent with its join request."""
        return ConsumerProtocolMemberMetadata(cls.version, list(topics), b"")

    @classmethod
    def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
        """Stateless: nothing to remember between rebalances."""
