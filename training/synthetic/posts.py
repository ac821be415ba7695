"""Whole synthetic ``post/v1`` messages: a garment (or an outfit of 2–4) and a caption about it.

Images are Fashion-MNIST *test* garments painted with the item's pattern and material, exactly as the
training benchmark renders them, so a model trained there recognises the demo's posts. Without the
Debian dataset the garments are drawn silhouettes instead.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache

import numpy as np
from PIL import Image

from serving.ontology import Ontology
from streamcore.schemas import ImageSource, Post, utcnow
from training.synthetic.captions import make_caption
from training.synthetic.fashion_mnist import CLASS_MAP, load_split, resize_grey
from training.synthetic.images import colour_names, draw_garment, jpeg_bytes, photo_like
from training.synthetic.textures import paint


@dataclass(frozen=True)
class Truth:
    """What a synthetic post really shows."""

    categories: tuple[str, ...]
    subcategories: tuple[str, ...]
    materials: tuple[str, ...]
    patterns: tuple[str, ...]


@dataclass(frozen=True)
class _Item:
    category: str
    subcategory: str
    material: str
    pattern: str
    garment: int | None  # index into the Fashion-MNIST test set


@lru_cache(maxsize=1)
def _garments() -> tuple[np.ndarray, np.ndarray] | None:
    try:
        return load_split("test")
    except FileNotFoundError:
        return None


def _item(rng: random.Random, ontology: Ontology, taken: set[str]) -> _Item:
    pool = _garments()
    while True:
        if pool is not None:
            garment = rng.randrange(len(pool[1]))
            category_name, subcategory = CLASS_MAP[int(pool[1][garment])]
            category = ontology.categories[ontology.category_index(category_name)]
        else:
            garment, category = None, rng.choice(ontology.categories)
            subcategory = rng.choice(category.subcategories).name
        if category.name not in taken:  # an outfit has distinct categories
            return _Item(category.name, subcategory, rng.choice(category.materials), rng.choice(category.patterns),
                         garment)


def _render(item: _Item, size: int, rng: random.Random) -> Image.Image:
    pool = _garments()
    if item.garment is None or pool is None:
        return draw_garment(item.category, item.pattern, rng.choice(colour_names()), size=size, rng=rng)
    grey = resize_grey(pool[0][item.garment: item.garment + 1], size)[0]
    pixels = paint(grey, item.pattern, item.material, size, np.random.default_rng(rng.randrange(2**32)))
    return Image.fromarray(pixels.transpose(1, 2, 0))


def _image(items: list[_Item], size: int, rng: random.Random) -> Image.Image:
    if len(items) == 1:
        return _render(items[0], size, rng)
    canvas = Image.new("RGB", (size, size), (235, 235, 235))
    for slot, item in enumerate(items):
        canvas.paste(_render(item, size // 2, rng), ((slot % 2) * size // 2, (slot // 2) * size // 2))
    return canvas


def generate_posts(ontology: Ontology, count: int, *, seed: int = 0, multi: bool = False,
                   mention_prob: float = 0.8, size: int = 64, prefix: str = "syn",
                   photo: bool = False) -> Iterator[tuple[Post, Truth]]:
    """Yield ``count`` posts with their ground truth, deterministically for a ``seed``.

    Args:
        multi: outfits of 2–4 items per image instead of one garment.
        mention_prob: probability that the caption names the (first) category.
        size: image side in pixels (the benchmark's models take 64).
        photo: photo-like pictures of the first item (texture, lighting, noise; ~250 KB at 1080 px)
            instead of Fashion-MNIST garments: the realistic workload of the pipeline benchmark.
    """
    rng = random.Random(seed)
    start = utcnow()
    for i in range(count):
        items: list[_Item] = []
        for _ in range(rng.randint(2, 4) if multi else 1):
            items.append(_item(rng, ontology, {it.category for it in items}))
        first = items[0]
        caption = make_caption(rng, ontology, category=first.category, subcategory=first.subcategory,
                               materials=[first.material], patterns=[first.pattern], mention_prob=mention_prob)
        image = (photo_like(first.category, first.pattern, rng.choice(colour_names()), size=size, rng=rng) if photo
                 else _image(items, size, rng))
        post = Post(
            post_id=f"{prefix}-{seed}-{i}", created_at=start + timedelta(milliseconds=i),
            user=f"user{rng.randint(1, 500)}", caption=caption.caption, comments=list(caption.comments),
            hashtags=list(caption.hashtags), user_tags=list(caption.user_tags),
            image=ImageSource(b64=base64.b64encode(jpeg_bytes(image)).decode()),
        )
        yield post, Truth(*(tuple(dict.fromkeys(getattr(it, f) for it in items))
                            for f in ("category", "subcategory", "material", "pattern")))
