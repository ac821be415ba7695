"""The hint join's decisions, without broker or Redis: hold, expiry, late, duplicate, redo and conflict."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from streamcore.exceptions import BadInput
from streamcore.schemas import Hints, ImageSource, Post
from workers.classify.join import HintJoin, Release, Start


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    value: bytes = b"x" * 10


def _post(post_id: str) -> Post:
    return Post(post_id=post_id, created_at=datetime.now(UTC), user="u", image=ImageSource(path="a.jpg"))


def _hints(post_id: str) -> Hints:
    return Hints(post_id=post_id, miner_version="t")


def test_hints_are_held_until_their_post_comes_and_then_start_it_together():
    join = HintJoin(hold_s=60)
    hints_record = Rec("hints", 0, 0)
    assert join.on_hints(hints_record, _hints("a"), now=0.0) == []
    assert join.holds("a") and join.held_bytes == 10
    (start,) = join.on_post(Rec("posts", 0, 5), _post("a"), "fp", deadline=2.0)
    assert isinstance(start, Start)
    assert start.waiting.hints_record is hints_record and start.waiting.hints.post_id == "a"
    assert not join.holds("a") and join.held_bytes == 0


def test_a_post_waits_until_its_deadline_then_starts_without_hints():
    join = HintJoin(hold_s=60)
    assert join.on_post(Rec("posts", 0, 1), _post("a"), "fp", deadline=2.0) == []
    assert [r.offset for r in join.waiting_records()] == [1]
    assert join.due(now=1.9) == []
    (start,) = join.due(now=2.0)
    assert start.waiting.hints is None and join.waiting_records() == []


def test_hints_arriving_for_a_waiting_post_start_it_at_once():
    join = HintJoin(hold_s=60)
    join.on_post(Rec("posts", 0, 1), _post("a"), "fp", deadline=2.0)
    (start,) = join.on_hints(Rec("hints", 0, 3), _hints("a"), now=0.5)
    assert isinstance(start, Start) and start.waiting.hints_record.offset == 3


def test_hints_after_their_post_started_are_late():
    join = HintJoin(hold_s=60)
    join.on_post(Rec("posts", 0, 1), _post("a"), "fp", deadline=0.0)
    join.due(now=1.0)
    late = Rec("hints", 0, 7)
    assert join.on_hints(late, _hints("a"), now=1.0) == [Release(late, "late")]


def test_a_second_hints_record_for_a_held_post_is_a_duplicate_and_a_reread_is_not():
    join = HintJoin(hold_s=60)
    join.on_hints(Rec("hints", 0, 0), _hints("a"), now=0.0)
    again = Rec("hints", 0, 4)
    assert join.on_hints(again, _hints("a"), now=0.1) == [Release(again, "duplicate")]
    assert join.on_hints(Rec("hints", 0, 0), _hints("a"), now=0.2) == []  # the same record read again
    assert join.held_bytes == 10
    # The same offset on another partition is another record: released, so its partition's commit moves on.
    elsewhere = Rec("hints", 1, 0)
    assert join.on_hints(elsewhere, _hints("a"), now=0.3) == [Release(elsewhere, "duplicate")]


def test_held_hints_expire_after_hold_s_in_arrival_order():
    join = HintJoin(hold_s=10)
    first, second = Rec("hints", 0, 0), Rec("hints", 0, 1)
    join.on_hints(first, _hints("a"), now=0.0)
    join.on_hints(second, _hints("b"), now=5.0)
    assert join.due(now=9.9) == []
    assert join.due(now=10.0) == [Release(first, "expired")]
    assert join.due(now=15.0) == [Release(second, "expired")]
    assert join.held_bytes == 0


def test_held_hints_beyond_capacity_are_released():
    join = HintJoin(hold_s=60, capacity=2)
    records = [Rec("hints", 0, i) for i in range(3)]
    assert join.on_hints(records[0], _hints("a"), now=0) == []
    assert join.on_hints(records[1], _hints("b"), now=0) == []
    assert join.on_hints(records[2], _hints("c"), now=0) == [Release(records[0], "capacity")]


def test_a_redo_of_a_waiting_post_finishes_with_it_and_a_conflict_is_refused():
    join = HintJoin(hold_s=60)
    join.on_post(Rec("posts", 0, 1), _post("a"), "fp-1", deadline=5.0)
    assert join.on_post(Rec("posts", 1, 8), _post("a"), "fp-1", deadline=5.0) == []  # same bytes: a redo
    assert join.on_post(Rec("posts", 0, 1), _post("a"), "fp-1", deadline=5.0) == []  # same record again
    with pytest.raises(BadInput) as refused:
        join.on_post(Rec("posts", 0, 9), _post("a"), "fp-2", deadline=5.0)
    assert refused.value.code == "duplicate_post_id"
    (start,) = join.due(now=5.0)
    assert [r.offset for r in start.waiting.redos] == [8]


def test_a_conflict_with_a_started_post_is_refused_and_a_redo_starts_again():
    join = HintJoin(hold_s=60)
    join.on_post(Rec("posts", 0, 1), _post("a"), "fp-1", deadline=0.0)
    join.due(now=1.0)
    with pytest.raises(BadInput):
        join.on_post(Rec("posts", 0, 2), _post("a"), "fp-2", deadline=3.0)
    join.on_post(Rec("posts", 0, 1), _post("a"), "fp-1", deadline=3.0)  # re-read after a restart: labelled again
    assert len(join.due(now=3.0)) == 1


def test_a_post_with_other_bytes_is_classified_once_the_first_ended_as_a_dead_letter():
    join = HintJoin(hold_s=60)
    join.on_post(Rec("posts", 0, 1), _post("a"), "fp-1", deadline=0.0)
    join.due(now=1.0)
    join.unlabelled("a", "fp-2")  # another copy's letter frees nothing
    with pytest.raises(BadInput):
        join.on_post(Rec("posts", 0, 2), _post("a"), "fp-2", deadline=3.0)
    join.unlabelled("a", "fp-1")  # its image could not be fetched, say: no label holds the id
    assert join.on_post(Rec("posts", 0, 3), _post("a"), "fp-2", deadline=3.0) == []
    (start,) = join.due(now=3.0)
    assert start.waiting.fingerprint == "fp-2"


def test_hints_of_posts_labelled_before_a_restart_are_released_late():
    join = HintJoin(hold_s=60)
    old, new = Rec("hints", 0, 0), Rec("hints", 0, 1)
    join.on_hints(old, _hints("old"), now=0)
    join.on_hints(new, _hints("new"), now=0)
    assert join.already_labelled(["old", "gone"]) == [Release(old, "late")]
    assert join.held_post_ids() == ["new"]


def test_revoked_partitions_are_forgotten():
    join = HintJoin(hold_s=60)
    join.on_hints(Rec("hints", 1, 0), _hints("a"), now=0)
    join.on_post(Rec("posts", 1, 0), _post("b"), "fp", deadline=9)
    join.on_post(Rec("posts", 0, 0), _post("c"), "fp", deadline=9)
    join.forget({("hints", 1), ("posts", 1)})
    assert join.held_post_ids() == [] and join.held_bytes == 0
    assert [r.partition for r in join.waiting_records()] == [0]


def test_the_classifier_reads_hints_with_fields_a_newer_miner_added():
    from streamcore.settings import Settings
    from workers.classify.parse import Parser

    settings = Settings.named()
    newer = (b'{"schema": "hints/v1", "post_id": "look-1", "miner_version": "text-miner/1.1", "language": "en",'
             b' "categories": [{"term": "dresses", "score": 1.0, "rank": 1}]}')
    parser = Parser(settings)
    try:
        ((hints, _),) = parser._parse_chunk([Rec(settings.kafka.topic("hints"), 0, 0, newer)])
    finally:
        parser.close()
    assert isinstance(hints, Hints) and [t.term for t in hints.categories] == ["dresses"]
