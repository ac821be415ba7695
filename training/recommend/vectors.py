"""Fashion vectors: what one labelled post contributes to profiles and to the repository.

A post's fashion vector has two halves:

* the **label vector**: its label's category, sub-category and attribute probabilities in the ontology's
  fixed order (``K + M + P`` = 13 + 56 + 43 = 112 values; terms the label does not list count 0), built
  from the label itself wherever it is needed, so it always agrees with the label;
* the **embedding**: the served model's pooled trunk features for the whole photo and three body bands
  (:mod:`serving.models.embedding`), ``[4, C]`` float16, written by the classifier beside the label as a
  :class:`VectorRecord` together with the post's ``user`` and creation time (the label does not carry them).

Embeddings of two model versions live in different spaces: every record names its model version, and
nothing compares records of two versions.

Facets name what two posts can share: a body part (the categories worn there, their sub-categories) or
an attribute family (materials, patterns). They explain results and steer the diverse ranking.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from serving.ontology import Ontology

#: Where each category is worn; every category of the ontology must be listed.
CATEGORY_PART = {
    "blouses_and_tunics": "upper", "coats": "upper", "dresses": "upper", "jackets": "upper",
    "jumpers_and_cardigans": "upper", "tops_and_tshirts": "upper",
    "jeans": "lower", "skirts": "lower", "tights_and_socks": "lower", "trouser_and_shorts": "lower",
    "shoes": "feet", "bags": "bag", "all_accessories": "accessories",
}
PARTS = ("upper", "lower", "feet", "bag", "accessories")
FAMILIES = ("material", "pattern")
FACETS = PARTS + FAMILIES
#: Embedding row a part's query uses (parts without a band of their own use the whole photo).
PART_REGION = {"upper": 1, "lower": 2, "feet": 3, "bag": 0, "accessories": 0}


@dataclass(frozen=True)
class Layout:
    """Index spaces of the label vector for one ontology, and the facet masks over it."""

    ontology: Ontology

    def __post_init__(self) -> None:
        missing = set(self.ontology.category_names) - set(CATEGORY_PART)
        if missing:
            raise ValueError(f"categories without a body part: {sorted(missing)}")

    @cached_property
    def offsets(self) -> tuple[int, int, int]:
        """Start of the categories, sub-categories and attributes in the label vector."""
        k, m = len(self.ontology.category_names), len(self.ontology.subcategory_names)
        return 0, k, k + m

    @cached_property
    def size(self) -> int:
        return self.offsets[2] + len(self.ontology.attribute_names)

    @cached_property
    def names(self) -> list[str]:
        """Term name per position of the label vector."""
        o = self.ontology
        return [*o.category_names, *o.subcategory_names, *o.attribute_names]

    @cached_property
    def facet_masks(self) -> dict[str, np.ndarray]:
        """Per facet, the positions it owns: a part owns its categories and their sub-categories, a family its
        attributes (every position belongs to exactly one facet)."""
        o, (_, sub0, att0) = self.ontology, self.offsets
        masks = {f: np.zeros(self.size, dtype=bool) for f in FACETS}
        for k, name in enumerate(o.category_names):
            masks[CATEGORY_PART[name]][k] = True
        for j, parent in enumerate(o.subcategory_parent):
            masks[CATEGORY_PART[o.category_names[parent]]][sub0 + j] = True
        n_materials = len(o.materials)
        masks["material"][att0: att0 + n_materials] = True
        masks["pattern"][att0 + n_materials:] = True
        return masks

    @cached_property
    def facet_matrix(self) -> np.ndarray:
        """``[len(FACETS), size]`` float32: row f is facet f's mask (a facet's share of a vector is one product)."""
        return np.stack([self.facet_masks[f] for f in FACETS]).astype(np.float32)

    def part_query_mask(self, part: str, label: np.ndarray) -> np.ndarray:
        """What a query for one part keeps of a label vector: the part's categories and sub-categories, and the
        attributes allowed by the part's categories the label shows (a striped top asks for stripes on tops,
        not on bags; a top shown alone does not ask for the leather a jacket could have)."""
        o, (_, _, att0) = self.ontology, self.offsets
        mask = self.facet_masks[part].copy()
        for k, name in enumerate(o.category_names):
            if CATEGORY_PART[name] == part and label[k] > 0:
                mask[[att0 + a for a in o.attribute_ranges[k]]] = True
        return mask

    def label_vector(self, label: Mapping) -> np.ndarray:
        """A ``label/v1`` (as a dict) → float32 ``[size]``; terms outside the ontology are ignored."""
        o, offsets = self.ontology, self.offsets
        vec = np.zeros(self.size, dtype=np.float32)
        for field, ids, start in (("categories", o.category_ids, offsets[0]),
                                  ("subcategories", o.subcategory_ids, offsets[1]),
                                  ("attributes", o.attribute_ids, offsets[2])):
            for term in label.get(field) or ():
                index = ids.get(term["term"])
                if index is not None:
                    vec[start + index] = term["score"]
        return vec

    def shows_part(self, part: str, labels: np.ndarray, *, floor: float = 0.3) -> np.ndarray:
        """Per row of ``[N, size]`` label vectors, whether it shows a category of ``part`` at ``floor`` or more."""
        k = len(self.ontology.category_names)
        return (labels[:, :k][:, self.facet_masks[part][:k]] >= floor).any(axis=1)

    @cached_property
    def category_part(self) -> np.ndarray:
        """Per category (ontology order), the index of its body part in :data:`PARTS`."""
        return np.array([PARTS.index(CATEGORY_PART[c]) for c in self.ontology.category_names])

    def part_weights(self, label_vec: np.ndarray) -> dict[str, float]:
        """Per part, how strongly a label vector shows it: its most probable category there."""
        k = len(self.ontology.category_names)
        return {p: float(label_vec[:k][self.facet_masks[p][:k]].max(initial=0.0)) for p in PARTS}


_MAGIC = b"SSV1"


@dataclass(frozen=True)
class VectorRecord:
    """What the classifier stores beside a label: who posted it, when, and the model's embedding of it.

    ``catalogue`` marks a shop's item (the catalogue stage's; ``user`` is then the shop): it joins the
    repository, never a style profile.
    """

    post_id: str
    user: str
    created_ms: int
    model_version: str
    #: ``[len(REGIONS), C]`` float16, rows L2-normalised.
    embedding: np.ndarray
    catalogue: bool = False

    def encode(self) -> bytes:
        """``SSV1``, a length-prefixed JSON header, then the float16 rows (little-endian).

        Size: 8 bytes + the header (~150 bytes) + ``4 * C * 2`` bytes (10,240 for C = 1280).
        """
        head = {"post_id": self.post_id, "user": self.user, "created_ms": self.created_ms,
                "model_version": self.model_version, "shape": list(self.embedding.shape)}
        if self.catalogue:  # only then: a post's record keeps the bytes it always had
            head["catalogue"] = True
        header = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode()
        rows = np.ascontiguousarray(self.embedding, dtype="<f2")
        return _MAGIC + struct.pack("<I", len(header)) + header + rows.tobytes()

    @classmethod
    def decode(cls, raw: bytes) -> VectorRecord:
        """Raises ``ValueError`` on anything that is not an encoded record."""
        if raw[:4] != _MAGIC or len(raw) < 8:
            raise ValueError("not a fashion vector record")
        (size,) = struct.unpack("<I", raw[4:8])
        try:
            head = json.loads(raw[8: 8 + size])
            shape = tuple(int(n) for n in head["shape"])
            embedding = np.frombuffer(raw[8 + size:], dtype="<f2").reshape(shape)
            return cls(str(head["post_id"]), str(head["user"]), int(head["created_ms"]), str(head["model_version"]),
                       embedding, head.get("catalogue") is True)
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise ValueError(f"bad fashion vector record: {exc}") from None


def encode_embeddings(post_ids: list[str], users: list[str], created_ms: list[int], version: str,
                      embeddings: np.ndarray, *, catalogue: bool = False) -> list[bytes]:
    """One encoded :class:`VectorRecord` per row of a batch's ``[B, R, C]`` embeddings."""
    half = embeddings.astype(np.float16)
    return [VectorRecord(p, u, t, version, half[i], catalogue).encode()
            for i, (p, u, t) in enumerate(zip(post_ids, users, created_ms, strict=True))]
