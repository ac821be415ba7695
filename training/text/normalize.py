"""Normalisation of post text, per the paper: tokenise, extract hashtags/handles/emojis/URLs,
segment hashtags, map emojis and slang to words, lower-case, drop stopwords, lemmatise.

The output is a bag of weighted tokens (field weights 2/1/1/3 for caption/comments/user tags/hashtags,
as in the authors' ``conf.json``) that the matcher scores against the ontology.

Work per post is bounded (:class:`Limits`), whatever the post holds: a post at the size limits costs
a few tens of milliseconds, not seconds. The caps are deterministic (the same post always gives the same
hints), and generous for real posts: their first tokens and hashtags carry the fashion words.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import emoji
from lemminflect import getAllLemmas
from wordsegment import Segmenter

from serving.ontology.model import DATA_DIR as ONTOLOGY_DATA
from training.text.tweet import tokenize

DATA_DIR = Path(__file__).parent / "data"
_CONF = ONTOLOGY_DATA / "fashionrec" / "conf.json"

_URL = re.compile(r"^(?:https?://|www\.)\S+$", re.IGNORECASE)
_WORD = re.compile(r"^[^\W\d_][\w'&-]*$")  # starts with a letter, any script
_HANDLE_PART = re.compile(r"[a-z]+")
# Tokens longer than this are noise (base64, keyboard mashing) and would make segmentation quadratic.
_MAX_TOKEN = 40


@dataclass(frozen=True)
class Limits:
    """Caps on the work and output of one post.

    Attributes:
        chars: characters of caption and comments read per post (tokenising is the costly part).
        tokens: tokens read per post, over all fields (the rest is not read).
        hashtags: distinct hashtags per post; later ones are ignored.
        handles: handles (``@user``) per post.
        emojis: emojis listed per post.
        item_chars: longer hashtags and handles are noise, not listed.
        segment_cost: budget of hashtag segmentation per post, in squared characters (segmenting a tag
            costs about its length squared); tags beyond it are looked up whole, not split.
        segment_chars: tags longer than this are looked up whole, not split.
    """

    chars: int = 8192
    tokens: int = 2048
    hashtags: int = 64
    handles: int = 64
    emojis: int = 64
    item_chars: int = 64
    segment_cost: int = 2048
    segment_chars: int = 30


@dataclass(frozen=True)
class FieldWeights:
    """How much a word counts depending on where it appears."""

    caption: float = 2.0
    comments: float = 1.0
    user_tags: float = 1.0
    hashtags: float = 3.0


@dataclass
class Normalized:
    """Weighted bag of normalised tokens plus what was extracted from the raw text."""

    weights: dict[str, float] = field(default_factory=dict)
    hashtags: list[str] = field(default_factory=list)
    handles: list[str] = field(default_factory=list)
    emojis: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    #: What is left of the post's :class:`Limits` budgets.
    chars_left: int = 0
    tokens_left: int = 0
    segment_left: int = 0

    def add(self, words: Iterable[str], weight: float) -> None:
        """Add unigrams and adjacent bigrams ("leather jacket") of one text span."""
        prev = None
        for word in words:
            self.weights[word] = self.weights.get(word, 0.0) + weight
            if prev is not None:
                bigram = f"{prev} {word}"
                self.weights[bigram] = self.weights.get(bigram, 0.0) + weight
            prev = word


def field_weights() -> FieldWeights:
    """The authors' field factors from ``conf.json`` (caption 2, comments 1, user tags 1, hashtags 3)."""
    conf = json.loads(_CONF.read_text(encoding="utf-8"))
    return FieldWeights(
        caption=float(conf["caption_factor"]),
        comments=float(conf["comments_factor"]),
        user_tags=float(conf["usertag_factor"]),
        hashtags=float(conf["hashtag_factor"]),
    )


def _load_json(name: str) -> dict[str, str]:
    data = json.loads((DATA_DIR / name).read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("_")}


@lru_cache(maxsize=1)
def slang() -> dict[str, str]:
    """Fashion slang / abbreviation → plain words (``ootd`` → ``outfit of the day``)."""
    return _load_json("slang.json")


@lru_cache(maxsize=1)
def emoji_words() -> dict[str, str]:
    """Emoji → the fashion words it stands for (👗 → dress)."""
    return {_strip_variation(k): v for k, v in _load_json("emoji.json").items()}


@lru_cache(maxsize=1)
def foreign_words() -> dict[str, str]:
    """Non-English fashion words → English (``vestido`` → dress)."""
    return _load_json("multilingual.json")


@lru_cache(maxsize=1)
def stopwords() -> frozenset[str]:
    """Curated English stopwords (scikit-learn's list minus fashion words, plus Instagram filler)."""
    lines = (DATA_DIR / "stopwords.txt").read_text(encoding="utf-8").splitlines()
    return frozenset(w.strip() for w in lines if w.strip() and not w.startswith("#"))


@lru_cache(maxsize=1)
def segmenter() -> Segmenter:
    """A private ``wordsegment`` instance that also knows fashion slang and joined ontology words."""
    seg = Segmenter()
    seg.load()
    # Slang gets a count like a common word so ``ootdfashion`` splits into ootd + fashion.
    common = seg.unigrams["fashion"]
    for key in slang():
        if " " not in key:
            seg.unigrams[key] = max(seg.unigrams.get(key, 0.0), common)
    return seg


def _strip_variation(text: str) -> str:
    # U+FE0F (emoji presentation) and skin-tone modifiers do not change which item an emoji shows.
    return "".join(c for c in text if c != "\ufe0f" and not "\U0001f3fb" <= c <= "\U0001f3ff")


@lru_cache(maxsize=65536)
def lemma(word: str, keep: frozenset[str] = frozenset()) -> str:
    """Noun lemma if there is one (``dresses`` → dress), else adjective, else verb, else the word."""
    if word in keep:
        return word
    lemmas = getAllLemmas(word)
    for upos in ("NOUN", "ADJ", "VERB"):
        if upos in lemmas:
            return lemmas[upos][0]
    return word


@lru_cache(maxsize=65536)
def readable_hashtag(tag: str, limits: Limits) -> str | None:
    """A hashtag as the miner reads it (``#`` added, NFKC, lower-cased), or None when it passes it over as noise
    (longer than ``limits.item_chars``)."""
    # NFKC can expand a character up to 18-fold: a tag that long before it is noise after it too.
    if len(tag) > 4 * limits.item_chars:
        return None
    tag = unicodedata.normalize("NFKC", tag).lower()
    if not tag.startswith("#"):
        tag = "#" + tag
    return tag if len(tag) <= limits.item_chars else None


def segment_hashtag(tag: str) -> tuple[str, ...]:
    """Split a hashtag body into words (``leopardprint`` → leopard, print), slang expanded."""
    body = tag.lstrip("#").lower()
    if not body or len(body) > _MAX_TOKEN:
        return ()
    if body in slang():
        return tuple(slang()[body].split())
    words: list[str] = []
    for part in segmenter().segment(body):
        words.extend(slang().get(part, part).split())
    return tuple(words)


def handle_words(handle: str) -> tuple[str, ...]:
    """Alphabetic parts of a handle (``@zara_official`` → zara, official) — brands hide in handles."""
    return tuple(_HANDLE_PART.findall(handle.lstrip("@").lower()))


def is_emoji(token: str) -> bool:
    """True for a single emoji, including ZWJ sequences and skin-tone variants."""
    return not token.isascii() and emoji.is_emoji(token)


class Normalizer:
    """Turns the fields of a post into a :class:`Normalized` bag of weighted tokens.

    Args:
        keep: words never lemmatised because the ontology uses them as they are (``shorts``, ``jeans``).
        weights: field weights; the authors' ``conf.json`` by default.
        limits: caps on the work per post.
    """

    def __init__(self, keep: frozenset[str], weights: FieldWeights | None = None,
                 limits: Limits | None = None) -> None:
        self.keep = keep
        self.weights = weights or field_weights()
        self.limits = limits or Limits()
        self._stop = stopwords()
        self._slang = slang()
        self._emoji = emoji_words()
        self._foreign = foreign_words()
        # A post's words are mostly common ones: expanding each distinct token once pays for itself.
        self._words = lru_cache(maxsize=65536)(self._expand)

    def __call__(
        self,
        caption: str,
        comments: Iterable[str] = (),
        hashtags: Iterable[str] = (),
        user_tags: Iterable[str] = (),
    ) -> Normalized:
        limits = self.limits
        out = Normalized(chars_left=limits.chars, tokens_left=limits.tokens, segment_left=limits.segment_cost)
        w = self.weights
        self._text(caption, w.caption, out)
        for comment in comments:
            if out.tokens_left <= 0 or out.chars_left <= 0:
                break
            self._text(comment, w.comments, out)
        for tag in hashtags:
            self._hashtag(str(tag), out)
        for handle in user_tags:
            self._handle(str(handle), w.user_tags, out)
        return out

    def _text(self, text: str, weight: float, out: Normalized) -> None:
        """Tokenise one text span; words go in with ``weight``, hashtags with the hashtag weight."""
        if not text or text.isspace() or out.tokens_left <= 0 or out.chars_left <= 0:
            return
        text = text[: out.chars_left]
        out.chars_left -= len(text)
        if not text.isascii():  # ASCII is already NFKC
            text = unicodedata.normalize("NFKC", text)
        words: list[str] = []
        # NLTK's TweetTokenizer (lower-cased, ``sooooo`` → ``sooo``), minus its per-call overhead.
        tokens = tokenize(text)[: out.tokens_left]
        out.tokens_left -= len(tokens)
        for token in tokens:
            if token.startswith("#") and len(token) > 1:
                self._hashtag(token, out)
            elif token.startswith("@") and len(token) > 1:
                self._handle(token, weight, out)
            elif _URL.match(token):
                out.urls.append(token)
            elif is_emoji(token):
                words.extend(self._emoji_word(token, out))
            else:
                words.extend(self._words(token))
        out.add(words, weight)

    def _hashtag(self, tag: str, out: Normalized) -> None:
        limits = self.limits
        if len(out.hashtags) >= limits.hashtags:
            return
        tag = readable_hashtag(tag, limits)
        if tag is None or tag in out.hashtags:  # ``Post.hashtags`` repeats the caption's
            return
        out.hashtags.append(tag)
        cost = (len(tag) - 1) ** 2
        if len(tag) - 1 <= limits.segment_chars and cost <= out.segment_left:
            out.segment_left -= cost
            words = [w for part in segment_hashtag(tag) for w in self._words(part)]
        else:  # over the budget: the tag counts as one word (``#dress``, ``#louisvuitton``)
            words = list(self._words(tag[1:]))
        out.add(words, self.weights.hashtags)
        body = tag[1:]
        # The unsegmented tag is kept too (brands like #louisvuitton, slang like #lbd); the matcher only
        # uses it for exact lookups, so it does not double-count through word vectors.
        if body and body not in out.weights and len(words) > 1:
            out.weights[body] = out.weights.get(body, 0.0) + self.weights.hashtags

    def _handle(self, handle: str, weight: float, out: Normalized) -> None:
        if len(out.handles) >= self.limits.handles or len(handle) > self.limits.item_chars:
            return
        handle = "@" + handle.lstrip("@")
        out.handles.append(handle.lower())
        out.add(handle_words(handle), weight)

    def _emoji_word(self, token: str, out: Normalized) -> list[str]:
        if len(out.emojis) < self.limits.emojis:
            out.emojis.append(token)
        return self._emoji.get(_strip_variation(token), "").split()

    def _expand(self, token: str) -> tuple[str, ...]:
        """Lower-case word token → zero or more normalised words (slang/foreign expanded, stopwords out)."""
        token = token.lower().strip("'-&")
        if not token or len(token) > _MAX_TOKEN or not _WORD.match(token):
            return ()
        expanded = self._slang.get(token) or self._foreign.get(token) or token
        return tuple(lemma(w, self.keep) for w in expanded.split() if w not in self._stop)
