"""Captions for benchmark items (``training.synthetic.captions``) and the hints mined from them."""

from __future__ import annotations

import random

from serving.ontology import Ontology
from streamcore.schemas import Hints
from training.synthetic.captions import Caption, make_caption
from training.text import TextMiner

#: (category index, sub-category index, material, pattern)
Item = tuple[int, int, str, str]


def caption_item(rng: random.Random, ontology: Ontology, item: Item, *, mention_prob: float, heldout: bool,
                 distractor_prob: float = 0.0, slang_prob: float = 0.0) -> Caption:
    """A caption about one item; ``heldout`` uses the template bank kept out of training."""
    k, sub, material, pattern = item
    return make_caption(
        rng, ontology, category=ontology.category_names[k], subcategory=ontology.subcategory_names[sub],
        materials=[material], patterns=[pattern], mention_prob=mention_prob, split="heldout" if heldout else "dev",
        distractor_prob=distractor_prob, slang_prob=slang_prob,
    )


def mine(ontology: Ontology, captions: list[Caption]) -> tuple[str, Hints]:
    """The joined caption text of an image's items and the text miner's hints for it."""
    text = " ".join(c.caption for c in captions)
    hints = TextMiner.load(ontology).mine_text(
        text,
        [x for c in captions for x in c.comments],
        [x for c in captions for x in c.hashtags],
        [x for c in captions for x in c.user_tags],
    )
    return text, hints
