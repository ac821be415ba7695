"""``mine()`` gives exactly the stored hints on the 1,000 held-out synthetic + hand-written posts.

The golden file holds each post's text and the hints the miner gave before its speed-up (scores compared
as exact floats), so optimisations must not change a single output. After a deliberate change to the
miner or the ontology, rewrite it with ``.venv/bin/python -m tests.training.text.test_golden``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from streamcore.schemas import ImageSource, Post
from training.text import TextMiner

GOLDEN = Path(__file__).parent / "data" / "hints_golden.jsonl.gz"
TextFields = tuple[str, list[str], list[str], list[str]]


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


def test_hints_identical_to_golden(miner: TextMiner) -> None:
    rows = list(_rows())
    assert len(rows) >= 1000
    for row in rows:
        assert _dump(miner, _post(*row["in"])) == row["out"], row["in"]


def _write() -> None:
    from training.ontology import load_ontology
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
