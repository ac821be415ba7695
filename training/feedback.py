"""User corrections (``feedback`` topic) joined with stored posts into extra training examples.

The classifier does not keep posts, so the trainer keeps its own bounded :class:`PostStore`: per post id
the text fields and either the image already shrunk to the training size (inline ``b64`` images, ~12 kB
each at 64 px, so 10k posts stay near 120 MB) or the ``url``/``path`` reference (loaded only when
feedback arrives, so the trainer does not fetch every post's image). A :class:`Feedback` record joins to
its stored post; the hints come from the text miner on the post's text (as at serving time, never from
the feedback), the targets from the feedback. Feedback for a post that is not (or no longer) stored is
counted by the caller and skipped.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from streamcore.exceptions import BadInput
from streamcore.images import decode_image, load_image, to_chw
from streamcore.schemas import Feedback, ImageSource, Post
from streamcore.settings import Settings
from training.data import Split
from training.models import hints_to_tensors
from training.ontology import Ontology
from training.text import TextMiner


@dataclass(frozen=True)
class StoredPost:
    """What the trainer keeps of a post: its text, and its image as pixels or as a reference."""

    post_id: str
    caption: str
    comments: tuple[str, ...]
    hashtags: tuple[str, ...]
    user_tags: tuple[str, ...]
    pixels: np.ndarray | None  # uint8 [3, S, S] of an inline image
    source: ImageSource | None  # the url/path of an image not fetched yet


@dataclass(frozen=True)
class Example:
    """One training row: image, mined hint scores and the feedback's multi-hot targets."""

    pixels: np.ndarray
    hint_categories: np.ndarray
    hint_attributes: np.ndarray
    categories: np.ndarray
    subcategories: np.ndarray
    attributes: np.ndarray
    caption: str


class PostStore:
    """The most recently stored posts, at most ``capacity`` of them.

    Args:
        capacity: posts kept; the oldest is dropped first.
        image_size: side of the stored square images (the benchmark's image size).
    """

    def __init__(self, capacity: int, *, image_size: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.image_size = image_size
        self._posts: OrderedDict[str, StoredPost] = OrderedDict()

    def __len__(self) -> int:
        return len(self._posts)

    def add(self, post: Post, settings: Settings) -> None:
        """Keep ``post``; an inline image is decoded and shrunk now, so its raw bytes are not held.

        Raises:
            BadInput: the inline image cannot be decoded or is too large.
        """
        pixels, source = None, post.image
        if post.image.b64 is not None:
            pixels = to_chw(decode_image(post.image.raw_bytes(), max_pixels=settings.max_image_pixels), self.image_size)
            source = None
        self._posts[post.post_id] = StoredPost(post.post_id, post.caption, tuple(post.comments), tuple(post.hashtags),
                                               tuple(post.user_tags), pixels, source)
        self._posts.move_to_end(post.post_id)
        while len(self._posts) > self.capacity:
            self._posts.popitem(last=False)

    def get(self, post_id: str) -> StoredPost | None:
        """The stored post, or None when it was never seen or has been evicted."""
        return self._posts.get(post_id)

    def pixels(self, stored: StoredPost, settings: Settings) -> np.ndarray:
        """The post's image at the store's size (a url/path image is loaded now).

        Raises:
            BadInput: the referenced image cannot be loaded.
        """
        if stored.pixels is not None:
            return stored.pixels
        return to_chw(load_image(stored.source, settings), self.image_size)


def _multi_hot(names: Sequence[str], index: dict[str, int], what: str) -> np.ndarray:
    unknown = [n for n in names if n not in index]
    if unknown:
        raise BadInput("bad_schema", f"feedback names unknown {what}: {unknown[:5]}")
    row = np.zeros(len(index), np.float32)
    row[[index[n] for n in names]] = 1
    return row


def join(feedback: Feedback, store: PostStore, *, ontology: Ontology, miner: TextMiner, settings: Settings,
         multi: bool) -> Example | None:
    """The training example of ``feedback``, or None when its post is not in ``store``.

    Raises:
        BadInput: unknown ontology terms, several categories for a one-item (``multi=False``) model,
            or an image reference that cannot be loaded.
    """
    stored = store.get(feedback.post_id)
    if stored is None:
        return None
    if not multi and len(feedback.categories) != 1:
        raise BadInput("bad_schema", f"a one-item model takes exactly one category, got {feedback.categories}")
    targets = [_multi_hot(getattr(feedback, level), index, level)
               for level, index in (("categories", ontology.category_ids),
                                    ("subcategories", ontology.subcategory_ids),
                                    ("attributes", ontology.attribute_ids))]
    hints = miner.mine_text(stored.caption, stored.comments, stored.hashtags, stored.user_tags, post_id=stored.post_id)
    hint_categories, hint_attributes = (t[0].numpy() for t in hints_to_tensors([hints], ontology))
    return Example(store.pixels(stored, settings), hint_categories, hint_attributes, *targets, stored.caption)


def to_split(examples: Sequence[Example]) -> Split:
    """Stack examples into a :class:`Split` (at least one example)."""
    if not examples:
        raise ValueError("to_split needs at least one example")

    def stack(name: str) -> np.ndarray:
        return np.stack([getattr(e, name) for e in examples])

    return Split(stack("pixels"), stack("categories"), stack("subcategories"), stack("attributes"),
                 stack("hint_categories"), stack("hint_attributes"), np.array([e.caption for e in examples], dtype=str),
                 np.zeros_like(stack("subcategories")))  # feedback keeps no sub-category hints


def concat(base: Split, extra: Split) -> Split:
    """``base`` followed by ``extra``: each extra row weighs as much as a benchmark row.

    Raises:
        ValueError: the image shapes differ.
    """
    if extra.images.shape[1:] != base.images.shape[1:]:
        raise ValueError(f"extra images {extra.images.shape[1:]} do not match {base.images.shape[1:]}")
    return Split(*(np.concatenate([getattr(base, f.name), getattr(extra, f.name)]) for f in fields(Split)))
