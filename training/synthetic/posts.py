"""Whole synthetic ``post/v1`` messages: a drawn garment (or outfit) and a caption about it."""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

from PIL import Image

from streamcore.schemas import ImageSource, Post, utcnow
from training.ontology import Ontology
from training.synthetic.captions import make_caption
from training.synthetic.images import colour_names, draw_garment, jpeg_bytes


@dataclass(frozen=True)
class Truth:
    """What a synthetic post really shows."""

    categories: tuple[str, ...]
    subcategories: tuple[str, ...]
    materials: tuple[str, ...]
    patterns: tuple[str, ...]


def _item(rng: random.Random, ontology: Ontology) -> tuple[str, str, str, str]:
    category = rng.choice(ontology.categories)
    return (category.name, rng.choice(category.subcategories).name, rng.choice(category.materials),
            rng.choice(category.patterns))


def _outfit_image(items: list[tuple[str, str, str, str]], rng: random.Random, size: int) -> Image.Image:
    tiles = [draw_garment(c, p, rng.choice(colour_names()), size=size // 2, rng=rng) for c, _, _, p in items]
    canvas = Image.new("RGB", (size, size), (240, 240, 240))
    for i, tile in enumerate(tiles):
        canvas.paste(tile, ((i % 2) * size // 2, (i // 2) * size // 2))
    return canvas


def generate_posts(ontology: Ontology, count: int, *, seed: int = 0, multi: bool = False,
                   mention_prob: float = 0.8, size: int = 96, prefix: str = "syn") -> Iterator[tuple[Post, Truth]]:
    """Yield ``count`` posts with their ground truth, deterministically for a ``seed``.

    Args:
        multi: outfits of 2–4 items per image instead of one garment.
        mention_prob: probability that the caption names the (first) category.
    """
    rng = random.Random(seed)
    start = utcnow()
    for i in range(count):
        items = [_item(rng, ontology) for _ in range(rng.randint(2, 4) if multi else 1)]
        if multi:
            image = _outfit_image(items, rng, size)
        else:
            image = draw_garment(items[0][0], items[0][3], rng.choice(colour_names()), size=size, rng=rng)
        first = items[0]
        caption = make_caption(rng, ontology, category=first[0], subcategory=first[1], materials=[first[2]],
                               patterns=[first[3]], mention_prob=mention_prob)
        post = Post(
            post_id=f"{prefix}-{seed}-{i}", created_at=start + timedelta(milliseconds=i),
            user=f"user{rng.randint(1, 500)}", caption=caption.caption, comments=list(caption.comments),
            hashtags=list(caption.hashtags), user_tags=list(caption.user_tags),
            image=ImageSource(b64=base64.b64encode(jpeg_bytes(image)).decode()),
        )
        truth = Truth(*(tuple(dict.fromkeys(item[j] for item in items)) for j in range(4)))
        yield post, truth
