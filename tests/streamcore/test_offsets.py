"""Commits never skip past an unfinished record."""

from aiokafka import TopicPartition

from streamcore.offsets import OffsetTracker

TP = TopicPartition("posts", 0)
TP1 = TopicPartition("posts", 1)


def test_commit_stops_at_lowest_unfinished_offset():
    tracker = OffsetTracker()
    for offset in range(5):
        tracker.add(TP, offset)
    tracker.done(TP, 0)
    tracker.done(TP, 2)
    tracker.done(TP, 3)
    assert tracker.committable() == {TP: 1}
    tracker.mark_committed({TP: 1})
    assert tracker.committable() == {}
    tracker.done(TP, 1)
    assert tracker.committable() == {TP: 4}
    tracker.done(TP, 4)
    assert tracker.committable() == {TP: 5}


def test_partitions_are_independent_and_revocation_forgets():
    tracker = OffsetTracker()
    tracker.add(TP, 10)
    tracker.add(TP1, 3)
    tracker.done(TP1, 3)
    assert tracker.committable() == {TP: 10, TP1: 4}
    tracker.drop([TP])
    assert tracker.committable() == {TP1: 4}
    assert tracker.pending() == 0
    tracker.done(TP, 10)  # a late completion of a revoked record is ignored
    assert TP not in tracker.committable()
