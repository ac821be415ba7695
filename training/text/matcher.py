"""Scores a post's weighted tokens against every ontology term at once.

Per term ``t`` (paper §III.A, a linear combination):

    score(t) = a · Σ_tok tfidf(tok) · sim⁺(tok, t)  +  b · Σ_tok tf(tok) · exact(tok, t)  +  c · Σ_tok tf(tok) · typo(tok, t)

``tf`` is the field-weighted count, ``idf`` comes from the word's GloVe frequency rank (Zipf: rank is
proportional to inverse frequency, so no corpus is needed), ``sim⁺`` is the cosine similarity to the
term's closest keyword rescaled to 0 below a threshold, so unrelated words contribute nothing. The
cosine part is one matrix product of the post's tokens (a few dozen rows) with all keyword vectors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from gensim.models import KeyedVectors

from serving.ontology import Ontology
from streamcore.schemas import HINT_CLASSES
from training.text.lexicon import Lexicon

#: Ontology classes the miner ranks, in ``hints/v1`` order.
#: Classes matched by exact name only: brand names have no meaningful GloVe neighbours.
EXACT_ONLY = frozenset({"brands"})


@dataclass(frozen=True)
class MatchWeights:
    """Coefficients of the linear combination and the cut-offs that keep unrelated words out."""

    cosine: float = 1.0
    exact: float = 2.0
    typo: float = 1.0
    threshold: float = 0.75  # cosine similarity below which a word is unrelated to a term
    ambiguous: float = 0.35  # weight of an exact hit on an everyday word (watch, felt, top)
    min_score: float = 0.3  # a term needs at least this much evidence to be hinted
    min_share: float = 0.05  # ... and at least this fraction of its class leader's score
    common_rank: int = 30_000  # words this frequent are real words, never typo-corrected


@dataclass(frozen=True)
class TermSpace:
    """All terms of all classes in one index space: class ``c`` owns ``slice(offsets[c], offsets[c+1])``."""

    names: tuple[str, ...]
    offsets: tuple[int, ...]

    @classmethod
    def build(cls, ontology: Ontology) -> tuple[TermSpace, list[tuple[int, tuple[str, ...]]]]:
        """The term space and each global term's keywords (categories inherit their sub-categories')."""
        per_class: list[list[tuple[str, tuple[str, ...]]]] = [
            [(c.name, (*c.keywords, *(k for s in c.subcategories for k in s.keywords))) for c in ontology.categories],
            [(s.name, s.keywords) for c in ontology.categories for s in c.subcategories],
            [(t.name, (t.name.replace("_", " "), *t.keywords)) for t in ontology.materials],
            [(t.name, (t.name.replace("_", " "), *t.keywords)) for t in ontology.patterns],
            [(t.name, t.keywords) for t in ontology.styles],
            [(t.name, t.keywords) for t in ontology.brands],
        ]
        names: list[str] = []
        offsets = [0]
        keywords: list[tuple[int, tuple[str, ...]]] = []
        for terms in per_class:
            for name, kws in terms:
                keywords.append((len(names), kws))
                names.append(name)
            offsets.append(len(names))
        return cls(tuple(names), tuple(offsets)), keywords


class Matcher:
    """Vectorised ontology matcher; build once per process, call per post."""

    def __init__(self, ontology: Ontology, vectors: KeyedVectors, weights: MatchWeights | None = None) -> None:
        self.weights = weights or MatchWeights()
        self.space, keywords = TermSpace.build(ontology)
        # Brand names are short and arbitrary: "diesen" (German) is not a typo of "diesel".
        exact_only = frozenset(i for c, name in enumerate(HINT_CLASSES) if name in EXACT_ONLY for i in range(*self._span(c)))
        self.lexicon = Lexicon.build(keywords, no_typos=exact_only)
        self._rank = vectors.key_to_index
        self._unit = vectors.get_normed_vectors()
        self._log_n = math.log(len(vectors) + 1.0)
        self._evidence = [i for c, name in enumerate(HINT_CLASSES) if name not in EXACT_ONLY for i in range(*self._span(c))]
        rows, terms = self._keyword_rows([(t, kws) for t, kws in keywords if t not in exact_only])
        self._kw = rows  # (n_keywords, dim), unit length, grouped by term
        self._kw_terms, self._kw_starts = np.unique(terms, return_index=True)

    def _span(self, klass: int) -> tuple[int, int]:
        return self.space.offsets[klass], self.space.offsets[klass + 1]

    def _keyword_rows(self, keywords: Sequence[tuple[int, tuple[str, ...]]]) -> tuple[np.ndarray, np.ndarray]:
        """Unit vectors of single-word keywords, sorted by term for ``reduceat``.

        Multi-word keywords (``jersey dress``) are left to exact bigram lookup: their mean vector sits
        close to every word in them and would let ``dress`` alone vote for ``jersey_dress``.
        """
        rows, terms = [], []
        for term, kws in keywords:
            for kw in dict.fromkeys(k.lower() for k in kws):
                if kw in self._rank:  # fashion jargon GloVe lacks (jeggings) is left to the lexicon
                    rows.append(self._unit[self._rank[kw]])
                    terms.append(term)
        order = np.argsort(terms, kind="stable")
        return np.asarray(rows, dtype=np.float32)[order], np.asarray(terms)[order]

    def idf(self, rank: int) -> float:
        """Zipf IDF from a word's frequency rank: frequent words ≈ 0.5, rare words 1."""
        return 0.5 + 0.5 * math.log(rank + 1.0) / self._log_n

    def score(self, bag: Mapping[str, float]) -> np.ndarray:
        """Raw evidence per global term for a bag ``{token: field-weighted count}``.

        Everyday words that are also terms (``watch``, ``felt``, ``check``) only count, at reduced
        weight, when unambiguous words already point at fashion: "check out my watch" stays silent.
        """
        ambiguous = {t: tf for t, tf in bag.items() if t in self.lexicon.ambiguous}
        scores = self._score({t: tf for t, tf in bag.items() if t not in ambiguous})
        if ambiguous and scores[self._evidence].max(initial=0.0) >= self.weights.min_score:
            scores += self.weights.ambiguous * self._score(ambiguous)
        return scores

    def _score(self, bag: Mapping[str, float]) -> np.ndarray:
        w, exact, common = self.weights, self.lexicon.exact, self.weights.common_rank
        # Exact and typo hits touch a few terms per token: summed in a dict, in token order, and written
        # once, instead of a numpy fancy-index update per token.
        hits: dict[int, float] = {}
        cos_tokens, cos_weights = [], []
        for token, tf in bag.items():
            rank = self._rank.get(token)
            terms = exact.get(token)
            if terms:
                add = w.exact * tf
            elif rank is None or rank >= common:
                terms, add = self.lexicon.typo_of(token), w.typo * tf
            else:  # a common word that names no term is never a typo
                terms, add = (), 0.0
            for t in terms:
                hits[t] = hits.get(t, 0.0) + add
            if rank is not None:
                cos_tokens.append(rank)
                cos_weights.append(tf * self.idf(rank))
        scores = np.zeros(len(self.space.names), dtype=np.float64)
        if hits:
            scores[list(hits)] = list(hits.values())
        if cos_tokens:
            scores[self._kw_terms] += w.cosine * self._cosine(np.asarray(cos_tokens), np.asarray(cos_weights))
        return scores

    def _cosine(self, rows: np.ndarray, tfidf: np.ndarray) -> np.ndarray:
        """Σ_tok tfidf · rescaled max-keyword similarity, for every term that has keyword vectors."""
        t = self.weights.threshold
        sim = self._unit[rows] @ self._kw.T  # (tokens, keywords): the one matrix product
        best = np.maximum.reduceat(sim, self._kw_starts, axis=1)  # (tokens, terms): closest keyword
        # Rescaling and clipping are monotone, so doing them after the max gives the same numbers on a
        # matrix ~3x smaller.
        best = np.clip((best - t) / (1.0 - t), 0.0, None)
        return tfidf.astype(np.float32) @ best

    def rank(self, scores: np.ndarray, top: int = 4) -> dict[str, list[tuple[str, float]]]:
        """Top ``top`` terms per class with shares summing to 1; empty where evidence is too weak."""
        w = self.weights
        # One threshold pass over all classes: usually a handful of candidates, often none.
        candidates = np.flatnonzero(scores >= w.min_score).tolist()
        values = scores[candidates].tolist()
        out: dict[str, list[tuple[str, float]]] = {}
        for c, name in enumerate(HINT_CLASSES):
            lo, hi = self._span(c)
            # Stable sort by descending score: ties keep index order, as ``argsort(kind="stable")``.
            in_class = [(i, v) for i, v in zip(candidates, values) if lo <= i < hi]
            best = sorted(in_class, key=lambda iv: -iv[1])[:top]
            lead = best[0][1] if best else 0.0
            keep = [(i, v) for i, v in best if v >= w.min_share * lead]
            total = 0.0
            for _, v in keep:  # left to right, as the shares have always been normalised
                total += v
            out[name] = [(self.space.names[i], v / total) for i, v in keep]
        return out
