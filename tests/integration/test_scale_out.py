"""Scale-out on one machine: 2 text and 2 classify processes share 4 partitions through their groups."""

from __future__ import annotations

import pytest

from workers.benchmarks.scale_out import run_layout

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POSTS = 80


def test_two_text_and_two_classify_processes_split_four_partitions(make_settings):
    row = run_layout(make_settings(partitions=4), text=2, classify=2, posts=POSTS, timeout=120)

    assert row["labels"] == POSTS and row["posts_per_s"] > 0
    assert row["groups"] == {"text": {"state": "Stable", "members": 2}, "classify": {"state": "Stable", "members": 2}}
    for stage, topics in (("text", ["posts"]), ("classify", ["hints", "posts"])):
        members = [m for m in row["members"] if m["stage"] == stage]
        assert len(members) == 2
        owned = [p for m in members for p in m["partitions"]["posts"]]
        assert sorted(owned) == [0, 1, 2, 3], f"{stage}: partitions not split between members: {members}"
        for member in members:
            assert member["partitions"]["posts"], f"{member['process']} got no partition"
            assert sorted(member["partitions"]) == topics
            # A classifier must own partition p of both topics to join a post with its hints.
            assert member["partitions"].get("hints", member["partitions"]["posts"]) == member["partitions"]["posts"]
    text = [m for m in row["members"] if m["stage"] == "text"]
    assert sum(m["records_processed"] for m in text) == POSTS
    assert all(m["records_processed"] > 0 for m in row["members"]), row["members"]
    assert sum(m["labels"] for m in row["members"]) == POSTS
