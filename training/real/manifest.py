"""The labelled-photo manifest ``stylestream train --data`` reads: JSON lines, one photo per line.

A record names its image (a path relative to the manifest's folder, an absolute path, or an ``https``
URL) and any subset of its labels as ontology term names::

    {"image": "images/0001.jpg", "categories": ["shoes", "skirts"], "subcategories": ["sneaker"],
     "attributes": ["denim"], "caption": "new skirt!", "box": [0, 0, 200, 300], "split": "train"}

``categories: []`` marks a photo that shows no garment (a negative). A sub-category implies its
category. ``box`` (left, top, right, bottom in pixels) uses a region of the photo, e.g. the street behind
a person. ``split`` (``train`` / ``val`` / ``test``) is optional; records without it are split by a hash
of their image's file name, so a photo (and every region of it) stays in its split however the manifest grows
and wherever it lives. ``source`` names where a record came from; ``synthetic_negative`` is reserved for the
images training draws.

A folder with one sub-folder per category (``FOLDER/shoes/*.jpg``) reads as a manifest too; hidden files and
folders (``.ipynb_checkpoints``) are skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from serving.ontology import Ontology
from streamcore.exceptions import StylestreamError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
Splits = Literal["train", "val", "test"]
#: Sources training gives its own records; a manifest naming one would pass for them.
RESERVED_SOURCES = ("synthetic_negative",)


class ManifestError(StylestreamError):
    """A manifest line or folder that cannot be read; says which line and why."""


class Record(BaseModel):
    """One labelled photo."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    image: str = Field(min_length=1)
    categories: list[str] | None = None
    subcategories: list[str] = Field(default_factory=list)
    attributes: list[str] = Field(default_factory=list)
    caption: str = ""
    box: tuple[int, int, int, int] | None = None
    split: Splits | None = None
    #: Where the record came from (an importer's name); kept for per-source reports.
    source: str = "user"

    @field_validator("image")
    @classmethod
    def _no_nul(cls, image: str) -> str:
        if "\0" in image:
            raise ValueError("image must not contain a NUL character")
        return image

    @field_validator("box")
    @classmethod
    def _positive_box(cls, box: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        if box is not None and not (0 <= box[0] < box[2] and 0 <= box[1] < box[3]):
            raise ValueError(f"box must be (left, top, right, bottom) with left < right and top < bottom, got {box}")
        return box

    def resolved(self, ontology: Ontology) -> Record:
        """The record with unknown terms refused and each sub-category's category added.

        Raises:
            ValueError: a term the ontology does not know, or no labels at all.
        """
        parents = {s.name: c.name for c in ontology.categories for s in c.subcategories}
        for names, known, kind in ((self.categories or [], ontology.category_ids, "category"),
                                   (self.subcategories, ontology.subcategory_ids, "sub-category"),
                                   (self.attributes, ontology.attribute_ids, "attribute")):
            unknown = sorted(set(names) - set(known))
            if unknown:
                raise ValueError(f"unknown {kind} {unknown}; the ontology's are {sorted(known)}")
        if self.categories is None and not self.subcategories:
            raise ValueError("a record needs categories (an empty list for no garment) or sub-categories")
        categories = list(dict.fromkeys([*(self.categories or []), *(parents[s] for s in self.subcategories)]))
        return self.model_copy(update={"categories": categories})

    def split_of(self, *, val: float = 0.15, test: float = 0.15) -> str:
        """The record's split: its own, or a stable hash of its image's file name (not its folder: the same
        photo keeps its split wherever the dataset is checked out; not its box: a photo's regions share its split,
        so no pixel of a held-out photo is trained on)."""
        if self.split is not None:
            return self.split
        name = self.image.rstrip("/").rsplit("/", 1)[-1]
        # "|None" is what a whole photo's key always ended with, so whole photos keep the splits they had.
        digest = hashlib.sha256(f"{name}|None".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        return "test" if u < test else "val" if u < test + val else "train"


def read_manifest(path: Path, ontology: Ontology) -> list[Record]:
    """Records of a JSONL manifest or a folder per category, resolved against ``ontology``.

    Image paths come back absolute (relative ones are taken from the manifest's folder); URLs unchanged.

    Raises:
        ManifestError: unreadable file, bad JSON, a bad record (with its line number), or an empty manifest.
    """
    path = Path(path)
    if path.is_dir():
        records = list(_folder_records(path, ontology))
    else:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ManifestError(f"cannot read manifest {path}: {exc}") from None
        records = list(_jsonl_records(lines, path.parent, ontology, name=str(path)))
    if not records:
        raise ManifestError(f"{path}: no labelled photos")
    return records


def _jsonl_records(lines: Iterable[str], root: Path, ontology: Ontology, *, name: str) -> Iterator[Record]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = Record.model_validate(json.loads(line)).resolved(ontology)
            if record.source in RESERVED_SOURCES:
                raise ValueError(f"source {record.source!r} is reserved for the images training draws")
            image = _absolute(record.image, root)
        except ValidationError as exc:
            reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in exc.errors())
            raise ManifestError(f"{name}:{number}: {reasons}") from None
        except (json.JSONDecodeError, ValueError, OSError) as exc:
            raise ManifestError(f"{name}:{number}: {exc}") from None
        yield record.model_copy(update={"image": image})


def _absolute(image: str, root: Path) -> str:
    if image.startswith(("https://", "http://")):
        return image
    return str((root / image).resolve())


def _folder_records(root: Path, ontology: Ontology) -> Iterator[Record]:
    # Hidden entries are tools' leftovers (.ipynb_checkpoints, macOS ._ files), never labelled photos.
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name not in ontology.category_ids and folder.name != "no_garment":
            raise ManifestError(f"{folder}: folder name is not a category ({sorted(ontology.category_ids)}) "
                                "nor no_garment")
        categories = [] if folder.name == "no_garment" else [folder.name]
        for image in sorted(folder.iterdir()):
            if image.suffix.lower() in IMAGE_SUFFIXES and not image.name.startswith("."):
                yield Record(image=str(image.resolve()), categories=categories, source=f"folder:{root.name}")


def write_manifest(records: Iterable[Record], path: Path) -> int:
    """Write ``records`` as JSON lines (image paths as given); returns how many.

    The file is replaced whole, only once every record is on disk, so an import that fails or is interrupted
    leaves the old manifest (or none), never a shorter one that reads as complete.

    Raises:
        ManifestError: no records, ``path`` is a folder, or the file cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise ManifestError(f"cannot write manifest {path}: it is a folder")
    # In the same folder, so that os.replace is a rename on one file system.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with temporary.open("w", encoding="utf-8") as out:
            count = _write_records(records, out)
            out.flush()
            os.fsync(out.fileno())
        if not count:
            raise ManifestError(f"{path}: no records to write (the manifest is left as it was)")
        os.replace(temporary, path)
    except BaseException as exc:
        temporary.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ManifestError(f"cannot write manifest {path}: {exc}") from None
        raise
    return count


def _write_records(records: Iterable[Record], out) -> int:
    count = 0
    for record in records:
        out.write(record.model_dump_json(exclude_defaults=True))
        out.write("\n")
        count += 1
    return count
