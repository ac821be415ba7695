"""``TextMiner``: post text → ``hints/v1`` (the paper's text-mining stage, §III.A)."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from serving.ontology import Ontology, load_ontology
from streamcore.schemas import HINT_CLASSES, Hints, Post
from training.text.matcher import Matcher, MatchWeights
from training.text.normalize import Normalizer
from training.text.vectors import DEFAULT_MAX_WORDS, load_vectors

MINER_VERSION = "1.0"
#: post_id used by :meth:`TextMiner.mine_text`, which has no post.
PLACEHOLDER_ID = "x"
#: UTF-8 bytes of the hashtags, handles and emojis one hint lists (the ranked terms are capped by the
#: schema), so a hint stays a few KiB whatever its post holds.
MAX_LISTED_BYTES = 8192


class TextMiner:
    """Ranks ontology terms for the text of a post.

    Build with :meth:`load` (vectors and indices are loaded once per process and shared).
    """

    def __init__(self, ontology: Ontology, matcher: Matcher, normalizer: Normalizer) -> None:
        self.ontology = ontology
        self.matcher = matcher
        self.normalizer = normalizer
        self.version = f"text-miner/{MINER_VERSION}+ontology-{ontology.version}"

    @classmethod
    def load(
        cls,
        ontology: Ontology | None = None,
        *,
        weights: MatchWeights | None = None,
        max_words: int = DEFAULT_MAX_WORDS,
    ) -> TextMiner:
        """A miner for ``ontology`` (the default ontology when None); cached per process."""
        return _cached_miner(ontology or load_ontology(), weights or MatchWeights(), max_words)

    def mine_text(
        self,
        caption: str,
        comments: Iterable[str] = (),
        hashtags: Iterable[str] = (),
        user_tags: Iterable[str] = (),
        *,
        post_id: str = PLACEHOLDER_ID,
    ) -> Hints:
        """Hints for raw text fields; ``post_id`` defaults to a placeholder for in-process use."""
        norm = self.normalizer(caption, comments, hashtags, user_tags)
        ranked = self.matcher.rank(self.matcher.score(norm.weights))
        listed = _within(MAX_LISTED_BYTES, norm.hashtags, norm.handles, norm.emojis)
        # One validation of plain data: cheaper than a model per scored term.
        return Hints.model_validate({
            "post_id": post_id,
            "miner_version": self.version,
            "hashtags": listed[0],
            "handles": listed[1],
            "emojis": listed[2],
            **{name: [{"term": t, "score": min(s, 1.0)} for t, s in ranked[name]] for name in HINT_CLASSES},
        })

    def mine(self, post: Post) -> Hints:
        """``hints/v1`` for a ``post/v1``: caption, comments, hashtags and user tags, field-weighted."""
        return self.mine_text(post.caption, post.comments, post.hashtags, post.user_tags, post_id=post.post_id)


def _within(budget: int, *lists: list[str]) -> list[list[str]]:
    """Leading items of each list, in order, while their JSON size fits ``budget`` bytes in all."""
    out = []
    for items in lists:
        kept = []
        for item in items:
            budget -= len(item.encode()) + 3  # quotes and a comma
            if budget < 0:
                break
            kept.append(item)
        out.append(kept)
    return out


@lru_cache(maxsize=4)
def _cached_miner(ontology: Ontology, weights: MatchWeights, max_words: int) -> TextMiner:
    vectors = load_vectors(max_words)
    matcher = Matcher(ontology, vectors, weights)
    # Words the ontology uses verbatim must not be lemmatised away (``shorts`` ≠ ``short``).
    keep = frozenset(form for form in matcher.lexicon.exact if " " not in form)
    miner = TextMiner(ontology, matcher, Normalizer(keep))
    # The segmenter's and lemminflect's tables load lazily (~2 s); load them here, not on the first post.
    miner.mine_text("#warmup dresses")
    return miner
