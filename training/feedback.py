"""User corrections (``feedback`` topic) joined with stored posts into extra training examples.

The classifier does not keep posts, so the trainer keeps its own copy of each (:class:`StoredPost`): the
text fields and either the image already shrunk to the trainer's square (inline ``b64`` images; kept as a
JPEG, ~25 kB at 288 px) or the ``url``/``path`` reference (loaded only when feedback arrives, so the trainer
does not fetch every post's image). A :class:`Feedback` record joins to its stored post; the hints come from the text
miner on the post's text (as at serving time, never from the feedback), the targets from the feedback.
Both records have a byte codec (safetensors: no pickle, and equal values give equal bytes, which makes
replayed writes recognisable) for the durable store in :mod:`training.state`.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from serving.images import decode_scaled, load_image, resize, to_chw
from serving.models.build import hint_tensors
from serving.ontology import Ontology
from streamcore.exceptions import BadInput
from streamcore.schemas import Feedback, ImageSource, Post
from streamcore.settings import Settings
from training.data.benchmark import Split
from training.text import TextMiner
from training.text.normalize import Limits, readable_hashtag

_TEXT_FIELDS = ("post_id", "caption", "comments", "hashtags", "user_tags")


def _text_tensor(value: object) -> np.ndarray:
    return np.frombuffer(json.dumps(value, sort_keys=True).encode(), np.uint8)


def _tensor_text(array: np.ndarray) -> object:
    return json.loads(array.tobytes().decode())


#: JPEG quality of a kept image: a 288 px photo in ~25 kB instead of 243 kB of pixels. The encoder is
#: deterministic, so equal pixels still give equal bytes.
_JPEG_QUALITY = 90


def _jpeg(pixels: np.ndarray) -> np.ndarray:
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0))).save(out, "JPEG", quality=_JPEG_QUALITY)
    return np.frombuffer(out.getvalue(), np.uint8)


def _decoded(jpeg: np.ndarray) -> np.ndarray:
    with Image.open(io.BytesIO(jpeg.tobytes())) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1).copy()


def _pixels(tensors: dict[str, np.ndarray]) -> np.ndarray | None:
    """The ``[3, S, S]`` image of a record: a JPEG, or raw pixels in records written before images were encoded."""
    return _decoded(tensors["jpeg"]) if "jpeg" in tensors else tensors.get("pixels")


#: The text miner's caps on a post's tags: what it reads of them is all the trainer keeps.
_TAG_LIMITS = Limits()


def read_hashtags(tags: Iterable[str], limits: Limits = _TAG_LIMITS) -> tuple[str, ...]:
    """The hashtags of ``tags`` the text miner can read, as given: the first ``limits.hashtags`` distinct ones
    that it does not pass over as noise (:func:`training.text.normalize.readable_hashtag`). With the same caption
    and comments they give the hints all ``tags`` give, and at most ``limits.hashtags`` × 4 × ``limits.item_chars``
    characters are kept."""
    kept, seen = [], set()
    for tag in tags:
        if len(kept) >= limits.hashtags:
            break
        read = readable_hashtag(tag, limits)
        if read is not None and read not in seen:
            seen.add(read)
            kept.append(tag)
    return tuple(kept)


def read_handles(tags: Iterable[str], limits: Limits = _TAG_LIMITS) -> tuple[str, ...]:
    """The user tags of ``tags`` the text miner can read (:meth:`training.text.normalize.Normalizer._handle`): the
    first ``limits.handles`` of at most ``limits.item_chars`` characters."""
    return tuple(itertools.islice((t for t in tags if len(t) <= limits.item_chars), limits.handles))


@dataclass(frozen=True)
class StoredPost:
    """What the trainer keeps of a post: its text, and its image as pixels or as a reference.

    Of the hashtags and user tags only what the text miner reads is kept (:func:`read_hashtags`,
    :func:`read_handles`): a post may carry megabytes of tags, the miner reads a few kilobytes of them.
    """

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
            # Decoded as the classifier decodes a post: the same pixels it labelled, at ``image_size``.
            pixels = decode_scaled(post.image.raw_bytes(), image_size, max_pixels=settings.limits.max_image_pixels)
            source = None
        return cls(post.post_id, post.caption, tuple(post.comments), read_hashtags(post.hashtags),
                   read_handles(post.user_tags), pixels, source)

    def to_bytes(self) -> bytes:
        text = {name: getattr(self, name) for name in _TEXT_FIELDS}
        text["source"] = self.source.model_dump(exclude_none=True) if self.source is not None else None
        tensors = {"text": _text_tensor(text)}
        if self.pixels is not None:
            tensors["jpeg"] = _jpeg(self.pixels)
        return save_tensors(tensors)

    @classmethod
    def from_bytes(cls, data: bytes) -> StoredPost:
        tensors = load_tensors(data)
        text = _tensor_text(tensors["text"])
        source = ImageSource(**text["source"]) if text["source"] is not None else None
        return cls(text["post_id"], text["caption"], *(tuple(text[n]) for n in _TEXT_FIELDS[2:]),
                   _pixels(tensors), source)

    def image(self, settings: Settings, *, image_size: int) -> np.ndarray:
        """The post's image at ``image_size`` (a url/path image is loaded now).

        Raises:
            BadInput: the referenced image cannot be loaded.
        """
        if self.pixels is not None:
            return self.pixels
        return to_chw(load_image(self.source, settings), image_size)


#: Example fields not stored as arrays of their own.
_NOT_ARRAYS = ("pixels", "caption", "post_id")


@dataclass(frozen=True)
class Example:
    """One training row: image, mined hint scores and the feedback's multi-hot targets.

    ``pixels`` is uint8 ``[3, S, S]``, or (read back from the store) the 1-D bytes of its JPEG, decoded only by
    :meth:`image`: a run over tens of thousands of corrections holds their JPEGs, not their pixels.
    """

    pixels: np.ndarray
    hint_categories: np.ndarray
    hint_attributes: np.ndarray
    categories: np.ndarray
    subcategories: np.ndarray
    attributes: np.ndarray
    caption: str
    #: Mined sub-category hint scores, as serving feeds them (None in records stored before they were kept).
    hint_subcategories: np.ndarray | None = None
    #: The corrected post ("" in records stored before it was kept).
    post_id: str = ""

    def to_bytes(self) -> bytes:
        tensors = {f.name: np.ascontiguousarray(getattr(self, f.name)) for f in fields(self)
                   if f.name not in _NOT_ARRAYS and getattr(self, f.name) is not None}
        text = {name: _text_tensor(getattr(self, name)) for name in ("caption", "post_id")}
        jpeg = self.pixels if self.pixels.ndim == 1 else _jpeg(self.pixels)
        return save_tensors({**tensors, **text, "jpeg": jpeg})

    @classmethod
    def from_bytes(cls, data: bytes) -> Example:
        tensors = load_tensors(data)
        kept = {f.name: tensors[f.name] for f in fields(cls) if f.name not in _NOT_ARRAYS and f.name in tensors}
        text = {name: _tensor_text(tensors[name]) for name in ("caption", "post_id") if name in tensors}
        return cls(pixels=tensors["jpeg"] if "jpeg" in tensors else tensors["pixels"], **kept, **text)

    def image(self) -> np.ndarray:
        """The uint8 ``[3, S, S]`` image (decoded now when kept as a JPEG)."""
        return _decoded(self.pixels) if self.pixels.ndim == 1 else self.pixels

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


def stray_subcategories(feedback: Feedback, ontology: Ontology) -> list[str]:
    """The sub-categories ``feedback`` names whose category it does not name (an "overcoat" on a blouse): such a
    correction contradicts itself, and learning it would teach both."""
    chosen = {ontology.category_ids[c] for c in feedback.categories if c in ontology.category_ids}
    return [s for s in feedback.subcategories
            if s in ontology.subcategory_ids and ontology.subcategory_parent[ontology.subcategory_ids[s]] not in chosen]


def targets(feedback: Feedback, *, ontology: Ontology, multi: bool) -> list[np.ndarray]:
    """What ``feedback`` teaches, per level (categories, sub-categories, attributes): 0/1 rows.

    A correction saying the photo shows no garment (no category) has every target 0: a multi-label model
    learns to put every category below its abstain bar there.

    Raises:
        BadInput: unknown ontology terms, a sub-category of a category the correction does not name, several
            categories or none (no garment) for a one-item (``multi=False``) model, which names one garment on
            every photo.
    """
    if not multi and feedback.no_garment:
        raise BadInput("bad_schema", "a one-item model names one garment on every photo: it cannot learn that "
                                     "a photo shows none")
    if not multi and len(feedback.categories) != 1:
        raise BadInput("bad_schema", f"a one-item model takes exactly one category, got {feedback.categories}")
    rows = [_multi_hot(getattr(feedback, level), index, level)
            for level, index in (("categories", ontology.category_ids),
                                 ("subcategories", ontology.subcategory_ids),
                                 ("attributes", ontology.attribute_ids))]
    stray = stray_subcategories(feedback, ontology)
    if stray:
        raise BadInput("bad_schema", f"feedback names sub-categories of categories it does not name: {stray[:5]}")
    return rows


def join(feedback: Feedback, stored: StoredPost, *, ontology: Ontology, miner: TextMiner, settings: Settings,
         multi: bool, image_size: int) -> Example:
    """The training example of ``feedback`` (:func:`targets`) on its ``stored`` post.

    Raises:
        BadInput: as :func:`targets`; or an image reference that cannot be loaded.
    """
    rows = targets(feedback, ontology=ontology, multi=multi)
    hints = miner.mine_text(stored.caption, stored.comments, stored.hashtags, stored.user_tags, post_id=stored.post_id)
    tensors = hint_tensors([hints], ontology)
    return Example(stored.image(settings, image_size=image_size), tensors.categories[0].numpy(),
                   tensors.attributes[0].numpy(), *rows, stored.caption,
                   hint_subcategories=tensors.subcategories[0].numpy(), post_id=feedback.post_id)


def learnable(examples: Sequence[Example], *, multi: bool) -> list[Example]:
    """The examples a model of this kind can learn: a single-label one, those naming exactly one category (the
    others were taken while a multi-label model served; they wait for one again, never collapsed to one)."""
    return list(examples) if multi else [e for e in examples if int(np.count_nonzero(e.categories)) == 1]


def to_split(examples: Sequence[Example], *, size: int | None = None, images: bool = True) -> Split:
    """Stack examples into a :class:`Split` (at least one example), their images resized to ``size`` square
    (``None``: as kept, which must then be one size); ``images=False`` leaves the images out (an empty
    ``[N, 3, 0, 0]``), for a split whose inputs are features computed apart."""
    if not examples:
        raise ValueError("to_split needs at least one example")

    def stack(name: str) -> np.ndarray:
        return np.stack([getattr(e, name) for e in examples])

    def image(pixels: np.ndarray) -> np.ndarray:
        if size is None or pixels.shape[1:] == (size, size):
            return pixels
        return resize(torch.from_numpy(pixels)[None], size)[0].numpy()

    pixels = np.stack([image(e.image()) for e in examples]) if images else np.zeros((len(examples), 3, 0, 0), np.uint8)
    return Split(pixels, stack("categories"), stack("subcategories"), stack("attributes"),
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
