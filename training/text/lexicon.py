"""Surface forms of ontology terms: inflections, joined/hyphen variants, and typo neighbourhoods.

``Lexicon`` answers "which terms does this exact token name?" and "which terms is this unknown token a
typo of?" with dictionary lookups, so neither costs a loop over the ontology.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from lemminflect import getAllInflections

from training.text.normalize import DATA_DIR

# Words shorter than this are not typo-corrected: "cap" → "cat" would be a guess, not a correction.
MIN_FUZZY_LEN = 5


@lru_cache(maxsize=1)
def ambiguous_forms() -> frozenset[str]:
    """Surface forms that are also everyday words (``watch``, ``felt``); they count at reduced weight."""
    lines = (DATA_DIR / "ambiguous.txt").read_text(encoding="utf-8").splitlines()
    return frozenset(w.strip() for w in lines if w.strip() and not w.startswith("#"))


def variants(keyword: str) -> set[str]:
    """A keyword's surface forms: as given, singular/plural of its last word, joined and hyphen-free."""
    kw = keyword.lower().strip()
    head, _, last = kw.rpartition(" ")
    forms = {kw}
    for tag in ("NN", "NNS"):
        for infl in getAllInflections(last, upos="NOUN").get(tag, ()):
            forms.add(f"{head} {infl}".strip())
    for form in list(forms):  # noqa: PERF101 - a copy: the loop adds to the set
        forms.add(form.replace(" ", ""))
        forms.add(form.replace("-", ""))
        forms.add(form.replace("-", " "))
    return {f for f in forms if f}


def deletes(word: str) -> set[str]:
    """The word and every string one deletion away (the symmetric-delete typo index)."""
    return {word} | {word[:i] + word[i + 1 :] for i in range(len(word))}


@dataclass(frozen=True)
class Lexicon:
    """Exact and typo-tolerant lookup from a token to global term indices."""

    exact: dict[str, tuple[int, ...]]
    fuzzy: dict[str, tuple[int, ...]]
    ambiguous: frozenset[str]

    @classmethod
    def build(cls, keywords: Sequence[tuple[int, Iterable[str]]], no_typos: frozenset[int] = frozenset()) -> Lexicon:
        """``keywords``: (global term index, its keywords) pairs; ``no_typos``: terms matched exactly only."""
        exact: defaultdict[str, set[int]] = defaultdict(set)
        for term, words in keywords:
            for word in words:
                for form in variants(word):
                    exact[form].add(term)
        fuzzy: defaultdict[str, set[int]] = defaultdict(set)
        for form, terms in exact.items():
            typo_terms = terms - no_typos
            if typo_terms and len(form) >= MIN_FUZZY_LEN and " " not in form:
                for d in deletes(form):
                    fuzzy[d] |= typo_terms
        return cls(
            exact={k: tuple(sorted(v)) for k, v in exact.items()},
            fuzzy={k: tuple(sorted(v)) for k, v in fuzzy.items()},
            ambiguous=ambiguous_forms(),
        )

    def typo_of(self, token: str) -> tuple[int, ...]:
        """Terms whose surface form is within about one edit of ``token`` (deletion, insertion, swap)."""
        if len(token) < MIN_FUZZY_LEN or " " in token:
            return ()
        found: set[int] = set()
        for d in deletes(token):
            found.update(self.fuzzy.get(d, ()))
        return tuple(sorted(found))
