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


def test_a_partition_whose_end_stays_below_what_was_read_has_restarted():
    tracker, tp = OffsetTracker(), TopicPartition("posts", 0)
    assert not tracker.restarted(tp, 3, now=0.0)  # nothing read yet: nothing to compare
    for offset in range(10):
        tracker.add(tp, offset)
    assert not tracker.restarted(tp, 10, now=0.0) and not tracker.restarted(tp, None, now=0.0)
    assert not tracker.restarted(tp, 3, now=1.0)  # a new leader may briefly report an older end
    assert not tracker.restarted(tp, 12, now=2.0)  # ...and it caught up: forgotten
    assert not tracker.restarted(tp, 3, now=5.0)
    assert tracker.restarted(tp, 3, now=7.5)  # still short after 2 s: the log restarted
    tracker.drop([tp])
    assert not tracker.restarted(tp, 3, now=8.0) and tracker.next_offset(tp) is None
