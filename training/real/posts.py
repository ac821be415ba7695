"""``post/v1`` messages from the committed fixture's real photos, with captions generated from their labels.

What ``stylestream up --demo`` (and ``produce --real``) sends: real photos a user would post, each with a
caption about one of the garments it shows (sometimes silent, sometimes misleading, as real text is).
"""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

from serving.ontology import Ontology
from streamcore.schemas import ImageSource, Post, utcnow
from training.real.fixture import fixture_records
from training.real.manifest import Record
from training.synthetic.captions import make_caption
from training.synthetic.posts import Truth


@lru_cache(maxsize=1)
def _photos(ontology: Ontology) -> tuple[tuple[Record, bytes], ...]:
    return tuple((r, Path(r.image).read_bytes()) for r in fixture_records(ontology))


def fixture_posts(ontology: Ontology, count: int, *, seed: int = 0, mention_prob: float = 0.7,
                  prefix: str = "photo") -> Iterator[tuple[Post, Truth]]:
    """Yield ``count`` posts of fixture photos (cycling through them in a seeded order) with their truth."""
    rng = random.Random(seed)
    photos = list(_photos(ontology))
    rng.shuffle(photos)
    start = utcnow()
    for i in range(count):
        record, data = photos[i % len(photos)]
        category = rng.choice(record.categories)
        subs = [s for s in record.subcategories if s in {t.name for t in ontology.categories[
            ontology.category_ids[category]].subcategories}]
        caption = make_caption(rng, ontology, category=category, subcategory=subs[0] if subs else None,
                               mention_prob=mention_prob)
        post = Post(
            # The photo's file name in the id: whoever reads a label can look at the photo it describes.
            post_id=f"{prefix}-{seed}-{i}-{Path(record.image).stem[:8]}", created_at=start + timedelta(milliseconds=i),
            user=f"user{rng.randint(1, 500)}", caption=caption.caption, comments=list(caption.comments),
            hashtags=list(caption.hashtags), user_tags=list(caption.user_tags),
            image=ImageSource(b64=base64.b64encode(data).decode()),
        )
        yield post, Truth(tuple(record.categories), tuple(record.subcategories), (), ())
