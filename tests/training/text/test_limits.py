"""Bounded work per post: a post at the size limits costs milliseconds, and its hints stay small."""

from __future__ import annotations

import random
import string
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from streamcore.schemas import ImageSource, Post
from streamcore.serde import encode
from streamcore.settings import Settings
from training.text import TextMiner
from training.text.miner import MAX_LISTED_BYTES
from training.text.normalize import Limits

#: A post at the size limits may cost this many ordinary posts: it holds ~130 times their text (64 KiB), and costs 1-26
#: times as much on a quiet machine. Work that grew faster than the text (a segmentation or a look-up per
#: distinct word without a cap) costs thousands.
ORDINARY_POSTS = 60
TEXT_BYTES = Settings().limits.max_text_bytes  # caption + comments limit (SPEC "Post")


def _letters(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(n))


def _post(caption: str = "", **fields) -> Post:
    post = Post(post_id="limits", created_at=datetime.now(UTC), user="u", caption=caption,
                image=ImageSource(path="none.jpg"), **fields)
    assert post.text_bytes() <= TEXT_BYTES
    return post


def _hashtag_flood(rng: random.Random) -> Post:
    """The report's flood: thousands of distinct 40-letter hashtags, plus full hashtag and tag lists."""
    caption = " ".join(f"#{_letters(rng, 40)}" for _ in range(TEXT_BYTES // 42))
    return _post(caption, hashtags=[f"#{_letters(rng, 40)}" for _ in range(1000)],
                 user_tags=[f"@{_letters(rng, 60)}" for _ in range(1000)])


def _word_flood(rng: random.Random) -> Post:
    """Distinct made-up words: every one misses the lemma and typo caches."""
    return _post(" ".join(_letters(rng, rng.randint(3, 12)) for _ in range(TEXT_BYTES // 9)))


def _comment_flood(rng: random.Random) -> Post:
    comments = [f"@{_letters(rng, 12)} 👗👠 #{_letters(rng, 20)} {_letters(rng, 8)}" for _ in range(TEXT_BYTES // 60)]
    return _post("", comments=comments)


def _long_list_items(rng: random.Random) -> Post:
    """Hashtag and user-tag lists do not count toward the text limit: 1,000 long items each."""
    return _post("", hashtags=["#" + _letters(rng, 2000) for _ in range(1000)],
                 user_tags=["@" + _letters(rng, 2000) for _ in range(1000)])


def _ordinary(rng: random.Random) -> Post:
    """A caption as people write them: a sentence, some words the miner has not seen, a dozen hashtags."""
    words = " ".join(_letters(rng, rng.randint(3, 10)) for _ in range(40))
    hashtags = " ".join(f"#{_letters(rng, 10)}" for _ in range(15))
    return _post(f"Loving my new leather jacket and floral dress {words} {hashtags}")


FLOODS = [_hashtag_flood, _word_flood, _comment_flood, _long_list_items]


def _thread_cpu(miner: TextMiner, post: Post) -> float:
    started = time.thread_time()
    miner.mine(post)
    return time.thread_time() - started


@pytest.mark.parametrize("flood", FLOODS, ids=lambda f: f.__name__.strip("_"))
def test_a_post_at_the_size_limits_costs_a_few_ordinary_posts(miner: TextMiner, flood: Callable) -> None:
    # Thread CPU time, not wall time, and a ratio to ordinary posts mined in between, not a figure in ms: a
    # loaded or slower machine stretches both alike. Best of five fresh posts each (fresh words: no cache hit).
    floods, ordinary = [], []
    for seed in range(5):
        ordinary.append(_thread_cpu(miner, _ordinary(random.Random(1000 + seed))))
        floods.append(_thread_cpu(miner, flood(random.Random(seed))))
    ratio = min(floods) / min(ordinary)
    print(flood.__name__, f"{ratio:.1f} ordinary posts", [round(c * 1000, 1) for c in floods], "ms")
    assert ratio <= ORDINARY_POSTS, f"{flood.__name__}: {ratio:.1f}x an ordinary post ({min(floods) * 1000:.1f} ms)"


@pytest.mark.parametrize("flood", FLOODS, ids=lambda f: f.__name__.strip("_"))
def test_hints_are_capped_and_deterministic(miner: TextMiner, flood: Callable) -> None:
    post = flood(random.Random(7))
    hints = miner.mine(post)
    limits = Limits()
    assert len(hints.hashtags) <= limits.hashtags and len(hints.handles) <= limits.handles
    assert len(hints.emojis) <= limits.emojis
    listed = sum(len(x.encode()) + 3 for x in (*hints.hashtags, *hints.handles, *hints.emojis))
    assert listed <= MAX_LISTED_BYTES
    assert len(encode(hints)) <= MAX_LISTED_BYTES + 4096  # the ranked terms: at most 4 per class
    assert miner.mine(post) == hints  # warm caches give the same hints as cold ones


def test_fashion_words_up_front_still_count_in_a_flood(miner: TextMiner) -> None:
    rng = random.Random(3)
    flood = _hashtag_flood(rng)
    post = _post("my new leather jacket #leatherjacket " + flood.caption[: TEXT_BYTES - 100])
    hints = miner.mine(post)
    assert "leather_jacket" in {t.term for t in hints.subcategories}
    assert "#leatherjacket" in hints.hashtags
