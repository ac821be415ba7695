"""The miner end to end: ranking, hints/v1 validity, silence on unrelated text, robustness."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from serving.ontology import Ontology
from streamcore.schemas import HINT_CLASSES, Hints, ImageSource, Post
from training.text import TextMiner
from training.text.miner import PLACEHOLDER_ID


def _top(hints: Hints, klass: str) -> str | None:
    terms = getattr(hints, klass)
    return terms[0].term if terms else None


def _assert_valid(hints: Hints) -> None:
    Hints.model_validate(hints.model_dump(by_alias=True))  # round-trips through the schema
    for klass in HINT_CLASSES:
        terms = getattr(hints, klass)
        assert len(terms) <= 4
        if terms:
            assert abs(sum(t.score for t in terms) - 1.0) < 1e-6
            assert [t.score for t in terms] == sorted((t.score for t in terms), reverse=True)


def test_load_is_cached_per_process(miner: TextMiner, ontology: Ontology) -> None:
    start = time.perf_counter()
    assert TextMiner.load(ontology) is miner
    assert time.perf_counter() - start < 0.1


def test_mine_copies_post_id_and_uses_all_fields(miner: TextMiner) -> None:
    post = Post(post_id="p-1", created_at=datetime.now(UTC), user="u", caption="new in!",
                comments=["that silk is gorgeous"], hashtags=["#floraldress"], user_tags=["@prada"],
                image=ImageSource(path="a.jpg"))
    hints = miner.mine(post)
    assert hints.post_id == "p-1" and hints.miner_version == miner.version
    assert (_top(hints, "categories"), _top(hints, "materials"), _top(hints, "patterns")) == ("dresses", "silk", "floral")
    assert _top(hints, "brands") == "prada" and hints.handles == ["@prada"]
    _assert_valid(hints)


def test_mine_text_uses_placeholder_id(miner: TextMiner) -> None:
    assert miner.mine_text("a dress").post_id == PLACEHOLDER_ID


def test_named_item_ranks_first(miner: TextMiner) -> None:
    cases = {
        "my new leather jacket": ("jackets", "leather_jacket"),
        "cosy cashmere jumper for winter": ("jumpers_and_cardigans", "jumper"),
        "these sneakers are so comfy": ("shoes", "sneaker"),
        "tote bag life": ("bags", "tote"),
    }
    for text, (cat, sub) in cases.items():
        hints = miner.mine_text(text)
        assert (_top(hints, "categories"), _top(hints, "subcategories")) == (cat, sub), text


def test_typos_and_other_languages_still_match(miner: TextMiner) -> None:
    assert _top(miner.mine_text("my new sweatre"), "categories") == "jumpers_and_cardigans"
    assert _top(miner.mine_text("Mi vestido nuevo"), "categories") == "dresses"
    assert _top(miner.mine_text("Schuhe aus Leder"), "materials") == "leather"


def test_emoji_only_caption(miner: TextMiner) -> None:
    hints = miner.mine_text("👠👠✨")
    assert _top(hints, "categories") == "shoes" and hints.emojis == ["👠", "👠", "✨"]


def test_unrelated_and_empty_text_give_empty_hints(miner: TextMiner) -> None:
    for text in ("", "Sunday brunch with the best people ☕", "just landed in tokyo, jet lag is real",
                 "happy birthday to my best friend 🎂", "Ich liebe diesen Sonnenuntergang", "😀😀😀", "123 !!! ???"):
        hints = miner.mine_text(text)
        assert all(not getattr(hints, c) for c in HINT_CLASSES), (text, hints)
        assert hints.is_empty


def test_ambiguous_everyday_word_alone_is_weak(miner: TextMiner) -> None:
    hints = miner.mine_text("I felt great, check it out")
    assert not hints.materials and not hints.patterns


@settings(max_examples=300, deadline=None)
@given(caption=st.text(max_size=300), comments=st.lists(st.text(max_size=80), max_size=3),
       hashtags=st.lists(st.text(max_size=30), max_size=3), user_tags=st.lists(st.text(max_size=20), max_size=3))
def test_arbitrary_unicode_never_raises_and_is_valid(miner: TextMiner, caption: str, comments: list[str],
                                                      hashtags: list[str], user_tags: list[str]) -> None:
    _assert_valid(miner.mine_text(caption, comments, hashtags, user_tags))
