"""Real labelled photos as :class:`~training.data.benchmark.Split` s: targets, known-masks, captions, hints.

Captions are generated from each photo's *true* labels, as the Table II benchmark does for synthetic
images: a post's text is about one garment the photo shows (an Instagram caption rarely lists an
outfit), with the benchmark's text conditions (mention rate, distractors, slang, wrong hints). Hints are
what the text miner makes of that text, never the labels themselves.

Unknown targets carry no loss: a photo labelled ``jeans`` with no sub-category says nothing about which
jeans, so that category's sub-categories are unknown; attributes are known only where a label implies
one (``jeans`` → denim) and are otherwise taken as absent.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np

from serving.models.build import hint_tensors
from serving.ontology import Ontology
from training.data.benchmark import SPLITS, Split
from training.real.manifest import Record

#: Text conditions of the real-photo Table II (``None``: no text at all).
CONDITIONS: dict[str, dict | None] = {
    "silent": None,
    "main": {"mention_prob": 0.8, "distractor_prob": 0.3, "slang_prob": 0.3, "wrong_hint_rate": 0.0},
    "mention": {"mention_prob": 1.0, "distractor_prob": 0.0, "slang_prob": 0.0, "wrong_hint_rate": 0.0},
    "wrong_0.25": {"mention_prob": 0.8, "distractor_prob": 0.3, "slang_prob": 0.3, "wrong_hint_rate": 0.25},
}
#: Labels that imply a material.
IMPLIED_ATTRIBUTES = {"jeans": "denim", "denim_jacket": "denim", "leather_jacket": "leather", "skinny_jeans": "denim",
                      "straight_jeans": "denim", "wide_jeans": "denim"}


@dataclass(frozen=True)
class RealSplits:
    """Splits of real photos plus, per split, each row's source (``co_parsing``, ``clothing_dataset``, ...)."""

    splits: dict[str, Split]
    sources: dict[str, np.ndarray]
    records: dict[str, list[Record]]


def targets(records: list[Record], ontology: Ontology) -> tuple[np.ndarray, ...]:
    """Multi-hot categories, sub-categories, attributes and the known-masks of the last two."""
    K, M, P = len(ontology.category_names), len(ontology.subcategory_names), len(ontology.attribute_names)
    cats, subs, atts = (np.zeros((len(records), n), np.float32) for n in (K, M, P))
    sub_known, att_known = np.ones((len(records), M), np.float32), np.ones((len(records), P), np.float32)
    ranges = ontology.subcategory_ranges
    for n, record in enumerate(records):
        for name in record.categories or []:
            cats[n, ontology.category_ids[name]] = 1
        for name in record.subcategories:
            subs[n, ontology.subcategory_ids[name]] = 1
        for name in [*record.attributes, *(IMPLIED_ATTRIBUTES[s] for s in record.subcategories
                                           if s in IMPLIED_ATTRIBUTES)]:
            atts[n, ontology.attribute_ids[name]] = 1
        if "jeans" in (record.categories or []):
            atts[n, ontology.attribute_ids["denim"]] = 1
        for k in np.flatnonzero(cats[n]):
            if not subs[n, ranges[k]].any():  # category known, its sub-category not
                sub_known[n, ranges[k]] = 0
    return cats, subs, atts, sub_known, att_known


def captions(records: list[Record], ontology: Ontology, condition: str, *, seed: int, heldout: bool) -> list[str]:
    """One post text per record under a text condition ('' for silent text or a no-garment photo)."""
    from training.synthetic.captions import make_caption

    params = CONDITIONS[condition]
    rng = random.Random(f"real-text-{condition}-{seed}-{heldout}")
    out = []
    for record in records:
        if params is None or not record.categories:
            out.append(record.caption if params is not None else "")
            continue
        category = rng.choice(record.categories)
        subs = [s for s in record.subcategories if s in {t.name for t in ontology.categories[
            ontology.category_ids[category]].subcategories}]
        caption = make_caption(rng, ontology, category=category, subcategory=rng.choice(subs) if subs else None,
                               mention_prob=params["mention_prob"], split="heldout" if heldout else "dev",
                               distractor_prob=params["distractor_prob"], slang_prob=params["slang_prob"])
        out.append(" ".join([caption.caption, *caption.hashtags, *caption.comments]).strip())
    return out


def mined_hints(texts: list[str], ontology: Ontology) -> list[np.ndarray]:
    """The text miner's category, sub-category and attribute score rows for ``texts``."""
    from training.text import TextMiner

    miner = TextMiner.load(ontology)
    hints = [miner.mine_text(text, [], [], []) if text else None for text in texts]
    return [t.numpy() for t in hint_tensors(hints, ontology)]


def wrong_hints(hint_categories: np.ndarray, hint_subcategories: np.ndarray, categories: np.ndarray, rate: float,
                rng: np.random.Generator) -> None:
    """For a ``rate`` fraction of photos with a garment, hint one category it does not show (in place)."""
    for n in np.flatnonzero((rng.random(len(categories)) < rate) & (categories.sum(1) > 0)):
        absent = np.flatnonzero(categories[n] == 0)
        if len(absent):
            hint_categories[n] = 0
            hint_categories[n, rng.choice(absent)] = 1
            hint_subcategories[n] = 0


def build_split(records: list[Record], images: np.ndarray, ontology: Ontology, *, condition: str, seed: int,
                heldout: bool) -> Split:
    """A :class:`Split` of real photos under one text condition."""
    cats, subs, atts, sub_known, att_known = targets(records, ontology)
    empty = np.zeros((len(records), 0), np.float32)
    split = Split(images, cats, subs, atts, empty, empty, np.array([], dtype=object), empty,
                  subcategory_known=sub_known, attribute_known=att_known)
    return with_condition(split, records, ontology, condition, seed=seed, heldout=heldout)


def with_condition(split: Split, records: list[Record], ontology: Ontology, condition: str, *, seed: int,
                   heldout: bool) -> Split:
    """``split`` (same photos and targets) with the text of another condition."""
    texts = captions(records, ontology, condition, seed=seed, heldout=heldout)
    hint_cat, hint_sub, hint_att = mined_hints(texts, ontology)
    params = CONDITIONS[condition]
    if params and params["wrong_hint_rate"] > 0:
        wrong_hints(hint_cat, hint_sub, split.categories, params["wrong_hint_rate"], np.random.default_rng([seed, 7]))
    return replace(split, hint_categories=hint_cat, hint_subcategories=hint_sub, hint_attributes=hint_att,
                   captions=np.array(texts, dtype=object))


def split_records(records: list[Record]) -> dict[str, list[Record]]:
    """Records by split (``Record.split_of``)."""
    out: dict[str, list[Record]] = {name: [] for name in SPLITS}
    for record in records:
        out[record.split_of()].append(record)
    return out
