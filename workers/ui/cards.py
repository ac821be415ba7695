"""What the page shows of one label (a *card*) and which cards a viewer's filters keep: pure, no Redis.

A card is the label's fields the page renders, the caption with the spans of the words the text miner
used, and whether the post was corrected. Everything in it is data for ``textContent``: the page never
parses any of it as markup.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from serving.ontology import Ontology
from streamcore.schemas import Label

#: "Low confidence" when the top category's probability is below this, unless the viewer says otherwise.
LOW_CONFIDENCE = 0.5


class Highlighter:
    """Finds, in a caption, the words that name the categories the text miner hinted (and their sub-categories).

    Whole words, any case, with a plural ``s``/``es``; inside a hashtag (``#reddress``) any occurrence counts,
    as the miner splits hashtags into words.
    """

    def __init__(self, ontology: Ontology) -> None:
        self._patterns: dict[str, tuple[re.Pattern[str], re.Pattern[str]]] = {}
        for category in ontology.categories:
            words = {k.lower() for k in category.keywords}
            words |= {k.lower() for s in category.subcategories for k in s.keywords}
            alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
            self._patterns[category.name] = (
                re.compile(rf"(?<![\w#])(?:{alternatives})(?:e?s)?(?!\w)", re.IGNORECASE),
                re.compile(rf"(?:{alternatives})", re.IGNORECASE))

    def spans(self, caption: str, categories: list[str]) -> list[tuple[int, int]]:
        """Sorted, non-overlapping ``(start, end)`` character spans of ``caption``."""
        found: list[tuple[int, int]] = []
        hashtags = [(m.start(), m.end()) for m in re.finditer(r"#\w+", caption)]
        for name in categories:
            if name not in self._patterns:
                continue
            words, inner = self._patterns[name]
            found += [m.span() for m in words.finditer(caption)]
            for start, end in hashtags:
                found += [m.span() for m in inner.finditer(caption, start, end) if m.end() - m.start() >= 3]
        merged: list[tuple[int, int]] = []
        for start, end in sorted(found):
            if merged and start < merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        return merged


def card(label_json: bytes | str, *, caption: str | None, thumb: bool, correction: dict | None, corrected: bool,
         highlighter: Highlighter) -> dict[str, Any] | None:
    """The card of a stored label, or ``None`` when the stored bytes are not a ``label/v1``."""
    try:
        label = Label.model_validate_json(label_json)
    except ValidationError:
        return None
    hinted = label.hints_used.categories if label.hints_used.source == "mined" else []
    return {
        "id": label.post_id,
        "version": label.model_version,
        "head": label.head,
        "categories": [[t.term, t.score] for t in label.categories],
        "subcategories": [[t.term, t.score] for t in label.subcategories],
        "attributes": [[t.term, t.score] for t in label.attributes],
        "top": label.categories[0].score if label.categories else None,
        "abstain": label.abstain,
        "hints": {"source": label.hints_used.source, "categories": label.hints_used.categories},
        "latency_ms": round((label.labeled_at - label.received_at).total_seconds() * 1000),
        "labeled_at": label.labeled_at.isoformat(),
        "caption": caption,
        "marks": utf16_spans(caption, highlighter.spans(caption, hinted)) if caption and hinted else [],
        "thumb": thumb,
        "corrected": corrected or correction is not None,
        "correction": correction,
    }


def utf16_spans(text: str, spans: Iterable[tuple[int, int]]) -> list[list[int]]:
    """``spans`` of ``text`` in code points, as the page's JavaScript counts them: in UTF-16 units (an emoji
    before a word is two), so the highlight lands on the word."""
    def at(i: int) -> int:
        return len(text[:i].encode("utf-16-le")) // 2
    return [[at(start), at(end)] for start, end in spans]


@dataclass(frozen=True)
class Filters:
    """A viewer's filters; unset ones keep every card."""

    category: str | None = None
    version: str | None = None
    #: Keep cards whose top probability is below this (abstentions have none: they are not kept).
    low_confidence: float | None = None
    abstained: bool = False
    corrected: bool = False

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> Filters:
        """Filters from the page's query string.

        Raises:
            ValueError: a value the page would never send.
        """
        def text(name: str) -> str | None:
            value = query.get(name) or None
            if value is not None and len(value) > 128:
                raise ValueError(f"{name} is too long")
            return value

        low = query.get("low")
        threshold = None
        if low:
            threshold = float(low)
            if not 0.0 < threshold <= 1.0:
                raise ValueError("low must be in (0, 1]")
        return cls(category=text("category"), version=text("version"), low_confidence=threshold,
                   abstained=query.get("abstained") == "1", corrected=query.get("corrected") == "1")

    def keeps(self, card: Mapping[str, Any]) -> bool:
        top = card["categories"][0][0] if card["categories"] else None
        if self.category is not None and top != self.category:
            return False
        if self.version is not None and card["version"] != self.version:
            return False
        if self.low_confidence is not None and (card["top"] is None or card["top"] >= self.low_confidence):
            return False
        if self.abstained and card["abstain"] is None:
            return False
        return not (self.corrected and not card["corrected"])
