"""``mine()`` gives the stored hints on the 1,000 held-out synthetic + hand-written posts.

The golden file holds each post's text and the hints the miner gave before its speed-up, so optimisations
must not change an output. What is meaningful is compared exactly: every term, its rank, the extracted
hashtags/handles/emojis, the miner version. Scores are float32 vector arithmetic, which is not
bit-identical across CPUs and BLAS builds, so they are compared within ``SCORE_TOL``, and terms whose
stored scores lie within that tolerance of each other count as tied (their order may differ).
After a deliberate change to the miner or the ontology, rewrite the file with
``.venv/bin/python -m tests.training.text.test_golden``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from streamcore.schemas import ImageSource, Post
from training.text import TextMiner

GOLDEN = Path(__file__).parent / "data" / "hints_golden.jsonl.gz"
TextFields = tuple[str, list[str], list[str], list[str]]
#: Largest score difference accepted between machines (seen: 3e-8); far below any meaningful change.
SCORE_TOL = 1e-5


def _rows() -> Iterator[dict]:
    with gzip.open(GOLDEN, "rt", encoding="utf-8") as f:
        yield from (json.loads(line) for line in f)


def golden_inputs() -> Iterator[TextFields]:
    """Caption, comments, hashtags and user tags of every golden post."""
    for row in _rows():
        caption, comments, hashtags, user_tags, _ = row["in"]
        yield caption, comments, hashtags, user_tags


def _post(caption: str, comments: list[str], hashtags: list[str], user_tags: list[str], post_id: str) -> Post:
    return Post(post_id=post_id, created_at=datetime.now(UTC), user="golden", caption=caption,
                comments=comments, hashtags=hashtags, user_tags=user_tags, image=ImageSource(path="none.jpg"))


def _dump(miner: TextMiner, post: Post) -> dict:
    return miner.mine(post).model_dump(mode="json", by_alias=True)


def _tie_groups(ranked: list[dict]) -> list[list[dict]]:
    """Consecutive ranked entries whose scores lie within SCORE_TOL of their neighbour."""
    groups: list[list[dict]] = []
    for entry in ranked:
        if groups and abs(groups[-1][-1]["score"] - entry["score"]) <= SCORE_TOL:
            groups[-1].append(entry)
        else:
            groups.append([entry])
    return groups


def assert_same_hints(got: dict, want: dict) -> None:
    """Terms and ranks exactly (ties within SCORE_TOL in any order), scores within SCORE_TOL, the rest exactly."""
    assert got.keys() == want.keys()
    for field, expected in want.items():
        actual = got[field]
        is_ranked = isinstance(expected, list) and expected and isinstance(expected[0], dict)
        if not is_ranked:
            assert actual == expected, field
            continue
        assert len(actual) == len(expected), (field, actual, expected)
        position = 0
        for group in _tie_groups(expected):
            chunk = actual[position:position + len(group)]
            assert {e["term"] for e in chunk} == {e["term"] for e in group}, (field, actual, expected)
            by_term = {e["term"]: e["score"] for e in chunk}
            for entry in group:
                assert abs(by_term[entry["term"]] - entry["score"]) <= SCORE_TOL, (field, entry, by_term)
            position += len(group)


def test_hints_match_golden(miner: TextMiner) -> None:
    rows = list(_rows())
    assert len(rows) >= 1000
    for row in rows:
        got = _dump(miner, _post(*row["in"]))
        try:
            assert_same_hints(got, row["out"])
        except AssertionError as exc:
            raise AssertionError(f"{row['in']}: {exc}") from None


def test_the_comparison_catches_a_changed_term_or_rank() -> None:
    want = {"post_id": "x", "categories": [{"term": "dress", "score": 0.7}, {"term": "shoes", "score": 0.3}]}
    assert_same_hints({"post_id": "x", "categories": [{"term": "dress", "score": 0.7 + 3e-8},
                                                      {"term": "shoes", "score": 0.3 - 3e-8}]}, want)
    for changed in ([{"term": "shoes", "score": 0.7}, {"term": "dress", "score": 0.3}],   # ranks swapped
                    [{"term": "dress", "score": 0.7}, {"term": "bag", "score": 0.3}],     # another term
                    [{"term": "dress", "score": 0.69}, {"term": "shoes", "score": 0.31}],  # a real score change
                    [{"term": "dress", "score": 0.7}]):                                    # a term dropped
        with pytest.raises(AssertionError):
            assert_same_hints({"post_id": "x", "categories": changed}, want)


def _write() -> None:
    from serving.ontology import load_ontology
    from training.text.evaluate import EVAL_SEED, handwritten_set, synthetic_set

    ontology = load_ontology()
    miner = TextMiner.load(ontology)
    examples = synthetic_set(ontology, 1000, seed=EVAL_SEED, split="heldout") + handwritten_set()
    with gzip.open(GOLDEN, "wt", encoding="utf-8") as f:
        for ex in examples:
            p = ex.post
            row = {"in": [p.caption, p.comments, p.hashtags, p.user_tags, p.post_id], "out": _dump(miner, p)}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    _write()
