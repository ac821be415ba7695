"""``training.text.tweet.tokenize`` is NLTK's ``TweetTokenizer``, token for token."""

from __future__ import annotations

from functools import lru_cache

from hypothesis import given, settings
from hypothesis import strategies as st
from nltk.tokenize import TweetTokenizer

from tests.training.text.test_golden import golden_inputs
from training.text.tweet import SETTINGS, tokenize


@lru_cache(maxsize=1)
def _nltk() -> TweetTokenizer:
    return TweetTokenizer(**SETTINGS)


# Pieces that exercise every special path: entities, emoticons (case kept), lengthening, runs of
# punctuation, phone numbers, URLs, handles, hashtags, ZWJ/skin-tone emoji, flags, ellipses.
_PIECES = ["&amp;", "&#39;", "&#x41;", "&nbsp;", "&bogus;", ":D", ":-P", "XD", "D:", "<3", ":)", ";-)", "O_o",
           "sooooo", "COOOOL", "!!!!!", "....", ". . .", "555-123-4567", "+1 (555) 123 4567", "www.Zara.COM",
           "https://x.co/A?b=1", "@Zara_Official", "#OOTD", "#red-dress", "a@b.com", "👩‍👩‍👧", "👍🏽", "🇫🇷",
           "-->", "<b>", "İ", "ß", "Ǆ", "ﬁ", "x", " ", "\n", "\t"]


def test_equal_on_every_text_field_of_the_evaluation_posts() -> None:
    for caption, comments, hashtags, user_tags in golden_inputs():
        for text in (caption, *comments, *hashtags, *user_tags):
            assert tokenize(text) == _nltk().tokenize(text), text


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=8)), max_size=30).map("".join))
def test_equal_on_arbitrary_text(text: str) -> None:
    assert tokenize(text) == _nltk().tokenize(text)
