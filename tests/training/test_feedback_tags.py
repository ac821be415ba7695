"""The trainer's copy of a post keeps only the tags the text miner reads: bounded in size whatever the post carries,
and mined into the same hints as the whole post."""

from __future__ import annotations

import pytest

from serving.ontology import load_ontology
from streamcore.schemas import Post
from streamcore.settings import Settings
from training.feedback import StoredPost, read_handles, read_hashtags
from training.synthetic.posts import generate_posts
from training.text import TextMiner
from training.text.normalize import Limits

#: What tags may add to a stored post at most, from the miner's caps (ASCII tags: one byte a character, plus a few
#: bytes of JSON around each).
_LIMITS = Limits()
_TAG_BYTES = _LIMITS.hashtags * (4 * _LIMITS.item_chars + 4) + _LIMITS.handles * (_LIMITS.item_chars + 4)


@pytest.fixture(scope="module")
def post() -> Post:
    return next(iter(generate_posts(load_ontology(), 1, seed=5, prefix="tags")))[0]


def _stored_bytes(post: Post, **tags: list[str]) -> int:
    settings = Settings()
    return len(StoredPost.from_post(post.model_copy(update=tags), settings, image_size=64).to_bytes())


def test_megabytes_of_tags_are_not_stored(post) -> None:
    bare = _stored_bytes(post, hashtags=[], user_tags=[])
    huge = [f"#{i:04d}" + "x" * 995 for i in range(1000)]  # 1000 × 1000 characters, about 1 MB per field
    assert _stored_bytes(post, hashtags=huge, user_tags=[t[1:] for t in huge]) - bare < 100
    readable = [f"#{i:04d}" + "x" * (_LIMITS.item_chars - 5) for i in range(1000)]  # the longest the miner reads
    grown = _stored_bytes(post, hashtags=readable, user_tags=[t[1:] for t in readable]) - bare
    assert 0 < grown <= _TAG_BYTES < 25_000


def test_the_kept_tags_are_what_the_miner_reads_and_give_the_same_hints(post) -> None:
    caption = "new #Dress day #denim " + " ".join(f"#c{i}" for i in range(20))
    hashtags = ["#DRESS", "dress", "＃ｄｅｎｉｍ", "#" + "y" * 300, "#" + "z" * 100, "#jeans", "#Jeans",
                *(f"#t{i}" for i in range(100)), "#leather"]
    user_tags = ["@" + "h" * 70, "gucci", *(f"shop{i}" for i in range(100)), "prada"]
    whole = post.model_copy(update={"caption": caption, "hashtags": hashtags, "user_tags": user_tags})
    stored = StoredPost.from_post(whole, Settings(), image_size=64)
    assert stored.hashtags[:3] == ("#DRESS", "＃ｄｅｎｉｍ", "#jeans")  # one of each spelling; noise dropped
    assert len(stored.hashtags) == _LIMITS.hashtags and "#leather" not in stored.hashtags
    assert stored.user_tags[0] == "gucci" and len(stored.user_tags) == _LIMITS.handles
    assert read_hashtags(stored.hashtags) == stored.hashtags and read_handles(stored.user_tags) == stored.user_tags
    miner = TextMiner.load(load_ontology())
    back = StoredPost.from_bytes(stored.to_bytes())
    kept = miner.mine_text(back.caption, back.comments, back.hashtags, back.user_tags, post_id=whole.post_id)
    assert kept == miner.mine(whole)
