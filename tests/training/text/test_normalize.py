"""Each normalisation step on its own: hashtags, emojis, handles, URLs, stopwords, lemmas, unicode."""

from __future__ import annotations

import pytest

from training.text.normalize import (
    Normalizer,
    field_weights,
    handle_words,
    is_emoji,
    lemma,
    segment_hashtag,
    stopwords,
)


@pytest.fixture(scope="module")
def normalizer() -> Normalizer:
    return Normalizer(keep=frozenset({"shorts", "jeans"}))


@pytest.mark.parametrize(
    ("tag", "words"),
    [
        ("#leopardprint", ("leopard", "print")),
        ("#OOTD", ("outfit", "of", "the", "day")),
        ("#lbd", ("little", "black", "dress")),
        ("#ootdfashion", ("outfit", "of", "the", "day", "fashion")),
        ("#redDress", ("red", "dress")),
        ("#", ()),
    ],
)
def test_hashtag_segmentation(tag: str, words: tuple[str, ...]) -> None:
    assert segment_hashtag(tag) == words


def test_overlong_hashtag_is_dropped_not_segmented() -> None:
    assert segment_hashtag("#" + "a" * 500) == ()


@pytest.mark.parametrize(("token", "expected"), [("👗", True), ("🧕🏽", True), ("👩‍👩‍👧", True), ("dress", False), ("é", False), ("—", False)])
def test_is_emoji(token: str, expected: bool) -> None:
    assert is_emoji(token) is expected


def test_emoji_maps_to_item_words(normalizer: Normalizer) -> None:
    out = normalizer("👗 and 👟")
    assert out.emojis == ["👗", "👟"]
    assert "dress" in out.weights and "sneaker" in out.weights


def test_emoji_with_variation_selector_and_skin_tone_still_maps(normalizer: Normalizer) -> None:
    out = normalizer("🕶️ ⌚")
    assert "sunglasses" in out.weights and "watch" in out.weights


def test_handles_are_extracted_and_split(normalizer: Normalizer) -> None:
    out = normalizer("dress from @Zara_Official!", user_tags=["@h.m"])
    assert out.handles == ["@zara_official", "@h.m"]
    assert handle_words("@zara_official") == ("zara", "official")
    assert "zara" in out.weights


def test_urls_are_extracted_and_not_words(normalizer: Normalizer) -> None:
    out = normalizer("shop it https://shop.example.com/dress-123 now")
    assert out.urls == ["https://shop.example.com/dress-123"]
    assert not any("example" in w for w in out.weights)


def test_hashtags_from_text_and_field_are_deduplicated(normalizer: Normalizer) -> None:
    out = normalizer("love it #floral", hashtags=["#floral", "silk"])
    assert out.hashtags == ["#floral", "#silk"]
    assert out.weights["floral"] == field_weights().hashtags


def test_field_weights_follow_the_authors_conf() -> None:
    w = field_weights()
    assert (w.caption, w.comments, w.user_tags, w.hashtags) == (2.0, 1.0, 1.0, 3.0)


def test_caption_words_weigh_twice_comment_words(normalizer: Normalizer) -> None:
    out = normalizer("silk", comments=["linen"])
    assert out.weights["silk"] == 2 * out.weights["linen"]


def test_stopwords_removed_but_fashion_words_kept(normalizer: Normalizer) -> None:
    out = normalizer("this is the top of my wardrobe")
    assert "top" in out.weights and "wardrobe" in out.weights
    assert not {"this", "is", "the", "my"} & set(out.weights)
    assert "top" not in stopwords()


def test_lemmas_prefer_nouns_and_respect_kept_words() -> None:
    assert lemma("dresses") == "dress"
    assert lemma("boots") == "boot"
    assert lemma("shorts", frozenset({"shorts"})) == "shorts"


def test_bigrams_are_added(normalizer: Normalizer) -> None:
    assert "leather jacket" in normalizer("my leather jacket").weights


def test_slang_and_foreign_words_expand(normalizer: Normalizer) -> None:
    assert "dress" in normalizer("nuevo vestido").weights
    assert "sunglasses" in normalizer("sunnies on").weights


def test_elongation_and_case_are_normalised(normalizer: Normalizer) -> None:
    assert "silk" in normalizer("SILK!!!").weights
    assert "waaay" in normalizer("waaaaaaay").weights  # TweetTokenizer caps repeats at three


@pytest.mark.parametrize("text", ["", "   ", "\u200b\u200d", "ｄｒｅｓｓ", "dress\u0301", "😀" * 500, "a" * 10_000, "\ud800x"])
def test_unicode_edge_cases_do_not_raise(normalizer: Normalizer, text: str) -> None:
    normalizer(text)


def test_fullwidth_letters_are_nfkc_folded(normalizer: Normalizer) -> None:
    assert "dress" in normalizer("ｄｒｅｓｓ").weights
