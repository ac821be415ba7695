"""NLTK's ``TweetTokenizer`` (lower-cased, lengthening reduced) without its per-call overhead.

The paper mandates NLTK's tokenizer, so :func:`tokenize` runs NLTK's own patterns, in NLTK's order, with
NLTK's ReDoS timeouts. It only skips work that cannot change the result: ``reduce_lengthening`` re-checks
and re-compiles its pattern on every call (a third of the tokenizer's time); HTML entities need an ``&``;
both repeat rewrites need a character three times in a row; and a token that is already lower-case needs
no emoticon test before lower-casing.
``tests/training/text/test_tweet.py`` holds it token-for-token equal to ``TweetTokenizer.tokenize``.
"""

from __future__ import annotations

import re

from nltk import redos
from nltk.tokenize import TweetTokenizer, casual

#: The settings the miner tokenises with.
SETTINGS = {"preserve_case": False, "reduce_len": True, "strip_handles": False, "match_phone_numbers": True}

# The pattern ``casual.reduce_lengthening`` compiles per call, compiled once.
_LENGTHENING = redos.compile(r"(.)\1{2,}")
_WORDS = TweetTokenizer(**SETTINGS).PHONE_WORD_RE
# Linear-time pre-check (a fixed-length match); DOTALL because HANG_RE's class includes newlines.
_TRIPLE = re.compile(r"(.)\1\1", re.DOTALL)


def tokenize(text: str) -> list[str]:
    """Exactly ``TweetTokenizer(**SETTINGS).tokenize(text)``."""
    if "&" in text:  # every HTML entity starts with one; most captions have none
        text = casual._replace_html_entities(text)
    if _TRIPLE.search(text):  # both rewrites need a character three times in a row; most texts have none
        text = _LENGTHENING.sub(r"\1\1\1", text)
        text = casual.HANG_RE.sub(r"\1\1\1", text)
    return [
        word if (low := word.lower()) == word or casual.EMOTICON_RE.search(word) else low
        for word in _WORDS.findall(text)
    ]
