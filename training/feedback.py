"""User corrections (``feedback`` topic) joined with stored posts into extra training examples.

The classifier does not keep posts, so the trainer keeps its own copy of each (:class:`StoredPost`): the
text fields and either the image already shrunk to the training size (inline ``b64`` images, ~12 kB at
64 px) or the ``url``/``path`` reference (loaded only when feedback arrives, so the trainer does not fetch
every post's image). A :class:`Feedback` record joins to its stored post; the hints come from the text
miner on the post's text (as at serving time, never from the feedback), the targets from the feedback.
Both records have a byte codec (safetensors: no pickle, and equal values give equal bytes, which makes
replayed writes recognisable) for the durable store in :mod:`training.state`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from serving.images import decode_image, load_image, to_chw
from serving.models.build import hint_tensors
from serving.ontology import Ontology
from streamcore.exceptions import BadInput
from streamcore.schemas import Feedback, ImageSource, Post
from streamcore.settings import Settings
from training.data.benchmark import Split
from training.text import TextMiner

_TEXT_FIELDS = ("post_id", "caption", "comments", "hashtags", "user_tags")


def _text_tensor(value: object) -> np.ndarray:
    return np.frombuffer(json.dumps(value, sort_keys=True).encode(), np.uint8)


def _tensor_text(array: np.ndarray) -> object:
    return json.loads(array.tobytes().decode())


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

    @classmethod
    def from_post(cls, post: Post, settings: Settings, *, image_size: int) -> StoredPost:
        """Keep ``post``; an inline image is decoded and shrunk now, so its raw bytes are not held.

        Raises:
            BadInput: the inline image cannot be decoded or is too large.
        """
        pixels, source = None, post.image
        if post.image.b64 is not None:
            pixels = to_chw(decode_image(post.image.raw_bytes(), max_pixels=settings.limits.max_image_pixels), image_size)
            source = None
        return cls(post.post_id, post.caption, tuple(post.comments), tuple(post.hashtags), tuple(post.user_tags),
                   pixels, source)

    def to_bytes(self) -> bytes:
        text = {name: getattr(self, name) for name in _TEXT_FIELDS}
        text["source"] = self.source.model_dump(exclude_none=True) if self.source is not None else None
        tensors = {"text": _text_tensor(text)}
        if self.pixels is not None:
            tensors["pixels"] = np.ascontiguousarray(self.pixels)
        return save_tensors(tensors)

    @classmethod
    def from_bytes(cls, data: bytes) -> StoredPost:
        tensors = load_tensors(data)
        text = _tensor_text(tensors["text"])
        source = ImageSource(**text["source"]) if text["source"] is not None else None
        return cls(text["post_id"], text["caption"], *(tuple(text[n]) for n in _TEXT_FIELDS[2:]),
                   tensors.get("pixels"), source)

    def image(self, settings: Settings, *, image_size: int) -> np.ndarray:
        """The post's image at ``image_size`` (a url/path image is loaded now).

        Raises:
            BadInput: the referenced image cannot be loaded.
        """
        if self.pixels is not None:
            return self.pixels
        return to_chw(load_image(self.source, settings), image_size)


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
    #: Mined sub-category hint scores, as serving feeds them (None in records stored before they were kept).
    hint_subcategories: np.ndarray | None = None

    def to_bytes(self) -> bytes:
        tensors = {f.name: np.ascontiguousarray(getattr(self, f.name)) for f in fields(self)
                   if f.name != "caption" and getattr(self, f.name) is not None}
        return save_tensors({**tensors, "caption": _text_tensor(self.caption)})

    @classmethod
    def from_bytes(cls, data: bytes) -> Example:
        tensors = load_tensors(data)
        return cls(**{f.name: tensors[f.name] for f in fields(cls) if f.name != "caption" and f.name in tensors},
                   caption=_tensor_text(tensors["caption"]))

    def subcategory_hints(self) -> np.ndarray:
        """Sub-category hint scores; zeros for a record stored without them."""
        return self.hint_subcategories if self.hint_subcategories is not None else np.zeros_like(self.subcategories)


def _multi_hot(names: Sequence[str], index: dict[str, int], what: str) -> np.ndarray:
    unknown = [n for n in names if n not in index]
    if unknown:
        raise BadInput("bad_schema", f"feedback names unknown {what}: {unknown[:5]}")
    row = np.zeros(len(index), np.float32)
    row[[index[n] for n in names]] = 1
    return row


def join(feedback: Feedback, stored: StoredPost, *, ontology: Ontology, miner: TextMiner, settings: Settings,
         multi: bool, image_size: int) -> Example:
    """The training example of ``feedback`` on its ``stored`` post.

    Raises:
        BadInput: unknown ontology terms, several categories for a one-item (``multi=False``) model,
            or an image reference that cannot be loaded.
    """
    if not multi and len(feedback.categories) != 1:
        raise BadInput("bad_schema", f"a one-item model takes exactly one category, got {feedback.categories}")
    targets = [_multi_hot(getattr(feedback, level), index, level)
               for level, index in (("categories", ontology.category_ids),
                                    ("subcategories", ontology.subcategory_ids),
                                    ("attributes", ontology.attribute_ids))]
    hints = miner.mine_text(stored.caption, stored.comments, stored.hashtags, stored.user_tags, post_id=stored.post_id)
    tensors = hint_tensors([hints], ontology)
    return Example(stored.image(settings, image_size=image_size), tensors.categories[0].numpy(),
                   tensors.attributes[0].numpy(), *targets, stored.caption,
                   hint_subcategories=tensors.subcategories[0].numpy())


def to_split(examples: Sequence[Example]) -> Split:
    """Stack examples into a :class:`Split` (at least one example)."""
    if not examples:
        raise ValueError("to_split needs at least one example")

    def stack(name: str) -> np.ndarray:
        return np.stack([getattr(e, name) for e in examples])

    return Split(stack("pixels"), stack("categories"), stack("subcategories"), stack("attributes"),
                 stack("hint_categories"), stack("hint_attributes"), np.array([e.caption for e in examples], dtype=str),
                 np.stack([e.subcategory_hints() for e in examples]))


def concat(base: Split, extra: Split) -> Split:
    """``base`` followed by ``extra``: each extra row weighs as much as a benchmark row.

    Raises:
        ValueError: the image shapes differ.
    """
    if extra.images.shape[1:] != base.images.shape[1:]:
        raise ValueError(f"extra images {extra.images.shape[1:]} do not match {base.images.shape[1:]}")
    def joined(name: str) -> np.ndarray | None:
        parts = [getattr(base, name), getattr(extra, name)]
        if all(p is None for p in parts):
            return None
        if name.endswith("_known"):  # a split without a known-mask knows every target
            like = {"subcategory_known": "subcategories", "attribute_known": "attributes"}[name]
            parts = [np.ones_like(getattr(s, like)) if p is None else p for s, p in zip((base, extra), parts)]
        return np.concatenate(parts)

    return Split(**{f.name: joined(f.name) for f in fields(Split)})
