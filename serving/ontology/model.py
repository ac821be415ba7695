"""Typed, immutable view of the ontology data files under ``data/``."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
_RAW = DATA_DIR / "fashionrec"


@dataclass(frozen=True)
class Term:
    """One ontology term: a canonical name and the surface forms that evoke it."""

    name: str
    keywords: tuple[str, ...]


@dataclass(frozen=True)
class Category:
    """A top category with its sub-categories and its allowed attribute range."""

    name: str
    keywords: tuple[str, ...]
    subcategories: tuple[Term, ...]
    materials: tuple[str, ...]
    patterns: tuple[str, ...]


@dataclass(frozen=True)
class Ontology:
    """Categories, sub-categories, attributes (materials + patterns), styles, brands, colours.

    Index spaces used by models and labels:
      * categories: ``K = len(categories)``
      * subcategories: all categories' sub-categories concatenated (``M``)
      * attributes: materials then patterns (``P``); each category allows a subset (its *range*).
    """

    version: str
    categories: tuple[Category, ...]
    materials: tuple[Term, ...]
    patterns: tuple[Term, ...]
    styles: tuple[Term, ...]
    brands: tuple[Term, ...]
    colours: tuple[Term, ...]
    checksum: str = field(default="", compare=False)

    @cached_property
    def category_names(self) -> list[str]:
        return [c.name for c in self.categories]

    @cached_property
    def subcategory_names(self) -> list[str]:
        return [s.name for c in self.categories for s in c.subcategories]

    @cached_property
    def attribute_names(self) -> list[str]:
        return [t.name for t in self.materials] + [t.name for t in self.patterns]

    @cached_property
    def category_ids(self) -> dict[str, int]:
        """Category name → index."""
        return {name: i for i, name in enumerate(self.category_names)}

    @cached_property
    def subcategory_ids(self) -> dict[str, int]:
        """Sub-category name → index."""
        return {name: i for i, name in enumerate(self.subcategory_names)}

    @cached_property
    def attribute_ids(self) -> dict[str, int]:
        """Attribute (material or pattern) name → index."""
        return {name: i for i, name in enumerate(self.attribute_names)}

    @cached_property
    def subcategory_parent(self) -> list[int]:
        """Category index of every sub-category index."""
        return [ci for ci, c in enumerate(self.categories) for _ in c.subcategories]

    @cached_property
    def attribute_ranges(self) -> list[list[int]]:
        """Per category, the sorted attribute indices it allows (DynamicPruning/Layers range)."""
        return [sorted(self.attribute_ids[a] for a in (*c.materials, *c.patterns)) for c in self.categories]

    @cached_property
    def subcategory_ranges(self) -> list[list[int]]:
        """Per category, its sub-category indices."""
        return [[j for j, p in enumerate(self.subcategory_parent) if p == ci] for ci in range(len(self.categories))]

    def category_index(self, name: str) -> int:
        """Index of a category by name; raises ``KeyError`` with the known names."""
        try:
            return self.category_ids[name]
        except KeyError:
            raise KeyError(f"unknown category {name!r}; known: {self.category_names}") from None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.strip().lower()).strip("_")


def _read_lines(name: str) -> list[str]:
    with open(_RAW / name, encoding="utf-8") as fh:
        return [row[0].strip() for row in csv.reader(fh) if row and row[0].strip()]


def _styles() -> tuple[Term, ...]:
    terms = []
    with open(_RAW / "styles.csv", encoding="utf-8") as fh:
        for row in csv.reader(fh):
            if not row or not row[0].strip():
                continue
            label = row[0].split("/")[0].replace("-Style", "").replace("Style", "").strip()
            words = row[1].split() if len(row) > 1 else [w for w in re.split(r"[\s/]+", row[0].lower()) if w and w != "-style"]
            terms.append(Term(_slug(label), tuple(dict.fromkeys(w.lower() for w in words if w))))
    return tuple(terms)


def _brands() -> tuple[Term, ...]:
    names = dict.fromkeys(n.lower() for n in _read_lines("brands.csv") + _read_lines("companies.csv"))
    return tuple(Term(_slug(n), (n,)) for n in names if _slug(n))


def _colours() -> tuple[Term, ...]:
    def spaced(name: str) -> str:
        return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).lower()

    return tuple(Term(_slug(spaced(c)), (spaced(c),)) for c in _read_lines("colors.csv"))


def _checksum(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def load_ontology(path: Path | None = None) -> Ontology:
    """Load the curated hierarchy (``data/hierarchy.json`` unless ``path``) and the authors' lists.

    Raises:
        ValueError: when a category names a material or pattern the ontology does not define.
    """
    path = path or DATA_DIR / "hierarchy.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    materials = tuple(Term(n, tuple(k)) for n, k in data["materials"].items())
    patterns = tuple(Term(n, tuple(k)) for n, k in data["patterns"].items())
    known = {t.name for t in materials + patterns}
    categories = []
    for c in data["categories"]:
        unknown = {a for a in (*c["materials"], *c["patterns"]) if a not in known}
        if unknown:
            raise ValueError(f"category {c['name']!r} names undefined attributes {sorted(unknown)}")
        subs = tuple(Term(n, tuple(k)) for n, k in c["subcategories"].items())
        categories.append(Category(c["name"], tuple(c["keywords"]), subs, tuple(c["materials"]), tuple(c["patterns"])))
    checksum = _checksum([path, *_RAW.glob("*.csv")])
    return Ontology(
        version=f"{data['version']}+{checksum[:8]}",
        categories=tuple(categories),
        materials=materials,
        patterns=patterns,
        styles=_styles(),
        brands=_brands(),
        colours=_colours(),
        checksum=checksum,
    )
