"""Importers: public labelled-photo datasets → manifests (:mod:`training.real.manifest`).

Each dataset's classes are mapped to the ontology by a documented table (``CLOTHING_DATASET`` and
``CO_PARSING`` below, also in ``docs/real-photos.md``); classes with no place in it are dropped and counted, as
are photos whose file is missing (``(missing image)``) and Co-Parsing masks that label no pixel
(``(unannotated mask)``).

* **Clothing dataset** (``alexeygrigorev/clothing-dataset``, CC0): single garments, ``images.csv`` with
  ``image,sender_id,label,kids``. One category per photo.
* **Clothing Co-Parsing** (``bearpaw/clothing-co-parsing``, Apache-2.0): street photos of people with a
  per-pixel label mask (``annotations/pixel-level/NNNN.mat``). A photo's labels are the classes its mask
  shows. Only photos 0001–1004 and their pixel masks are read; everything else in the repository is an
  outside hold-out, which this importer never opens. It also cuts street-background regions (no person pixel
  in them) as no-garment negatives.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamcore.exceptions import StylestreamError
from streamcore.extras import needs
from training.real.manifest import Record

#: Clothing dataset class → (category, sub-category or None). Unlisted classes are dropped.
CLOTHING_DATASET: dict[str, tuple[str, str | None]] = {
    "T-Shirt": ("tops_and_tshirts", "t_shirt"),
    "Longsleeve": ("tops_and_tshirts", "long_sleeve_top"),
    "Polo": ("tops_and_tshirts", "polo"),
    "Undershirt": ("tops_and_tshirts", "tank_top"),
    "Top": ("tops_and_tshirts", None),
    "Shirt": ("blouses_and_tunics", "shirt"),
    "Blouse": ("blouses_and_tunics", "blouse"),
    "Pants": ("trouser_and_shorts", "trousers"),
    "Shorts": ("trouser_and_shorts", "shorts"),
    "Dress": ("dresses", None),
    "Skirt": ("skirts", None),
    "Outwear": ("jackets", None),  # the dataset's jackets and coats; most are jackets
    "Blazer": ("jackets", "blazer"),
    "Hoodie": ("jumpers_and_cardigans", "hoodie"),
    "Shoes": ("shoes", None),
    "Hat": ("all_accessories", "hat"),
}
#: Dropped on purpose: ``Body`` (babies' bodysuits: no ontology term), ``Other``, ``Not sure``, ``Skip``.

#: Clothing Co-Parsing label → (category, sub-category or None). Unlisted labels (null, skin, hair, bra,
#: panties, intimate, swimwear) are not garments of the ontology and are ignored.
CO_PARSING: dict[str, tuple[str, str | None]] = {
    "accessories": ("all_accessories", None), "belt": ("all_accessories", "belt"),
    "bracelet": ("all_accessories", "jewellery"), "earrings": ("all_accessories", "jewellery"),
    "necklace": ("all_accessories", "jewellery"), "ring": ("all_accessories", "jewellery"),
    "glasses": ("all_accessories", None), "sunglasses": ("all_accessories", "sunglasses"),
    "gloves": ("all_accessories", "gloves"), "hat": ("all_accessories", "hat"),
    "scarf": ("all_accessories", "scarf"), "tie": ("all_accessories", None), "watch": ("all_accessories", "watch"),
    "bag": ("bags", None), "purse": ("bags", "handbag"), "wallet": ("bags", None),
    "blazer": ("jackets", "blazer"), "cape": ("jackets", "cape"), "jacket": ("jackets", None),
    "suit": ("jackets", "blazer"), "vest": ("jackets", "gilet"),
    "blouse": ("blouses_and_tunics", "blouse"), "shirt": ("blouses_and_tunics", "shirt"),
    "bodysuit": ("tops_and_tshirts", None), "top": ("tops_and_tshirts", None), "t-shirt": ("tops_and_tshirts", "t_shirt"),
    "cardigan": ("jumpers_and_cardigans", "cardigan"), "hoodie": ("jumpers_and_cardigans", "hoodie"),
    "jumper": ("jumpers_and_cardigans", "jumper"), "sweater": ("jumpers_and_cardigans", "jumper"),
    "sweatshirt": ("jumpers_and_cardigans", "sweatshirt"),
    "coat": ("coats", None), "dress": ("dresses", None), "jeans": ("jeans", None), "skirt": ("skirts", None),
    "leggings": ("trouser_and_shorts", "leggings"), "pants": ("trouser_and_shorts", "trousers"),
    "romper": ("trouser_and_shorts", "jumpsuit"), "shorts": ("trouser_and_shorts", "shorts"),
    "socks": ("tights_and_socks", "socks"), "stockings": ("tights_and_socks", "tights"),
    "tights": ("tights_and_socks", "tights"),
    "boots": ("shoes", "ankle_boot"), "clogs": ("shoes", None), "flats": ("shoes", "flats"),
    "heels": ("shoes", "heels"), "loafers": ("shoes", "flats"), "pumps": ("shoes", "heels"),
    "sandals": ("shoes", "sandal"), "shoes": ("shoes", None), "sneakers": ("shoes", "sneaker"),
    "wedges": ("shoes", "heels"),
}
NOT_GARMENTS = ("null", "skin", "hair", "bra", "panties", "intimate", "swimwear")

#: The last Co-Parsing photo the project may read; later ones are the outside hold-out.
CO_PARSING_LAST_ALLOWED = 1004
#: The columns of the clothing dataset's ``images.csv`` that the importer reads.
CLOTHING_COLUMNS = ("image", "label")


class DatasetError(StylestreamError):
    """A dataset checkout an importer cannot read; says which file and why."""


@dataclass
class ImportReport:
    """What an importer kept and dropped."""

    records: list[Record] = field(default_factory=list)
    kept: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)

    def summary(self) -> dict:
        return {"records": len(self.records), "kept": dict(self.kept.most_common()),
                "dropped": dict(self.dropped.most_common())}


def _record(image: str, pairs: list[tuple[str, str | None]], source: str, **extra) -> Record:
    categories = list(dict.fromkeys(c for c, _ in pairs))
    subcategories = list(dict.fromkeys(s for _, s in pairs if s is not None))
    return Record(image=image, categories=categories, subcategories=subcategories, source=source, **extra)


def import_clothing_dataset(root: Path) -> ImportReport:
    """Records for the clothing dataset checked out at ``root`` (``images.csv`` + ``images/``).

    Raises:
        DatasetError: ``images.csv`` unreadable, not UTF-8, or without the ``image`` and ``label`` columns.
    """
    report = ImportReport()
    table = root / "images.csv"
    try:
        with table.open(newline="", encoding="utf-8") as f:
            rows = csv.DictReader(f)
            missing = [c for c in CLOTHING_COLUMNS if c not in (rows.fieldnames or ())]
            if missing:
                raise DatasetError(f"{table}: no column {missing} (the header is {rows.fieldnames})")
            for row in rows:
                _clothing_row(root, row, report)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read {table}: {exc}") from None
    return report


def _clothing_row(root: Path, row: dict[str, str], report: ImportReport) -> None:
    label, image = row["label"], f"images/{row['image']}.jpg"
    if label not in CLOTHING_DATASET:
        report.dropped[label] += 1
    elif not (root / image).is_file():
        report.dropped["(missing image)"] += 1
    else:
        report.kept[label] += 1
        report.records.append(_record(image, [CLOTHING_DATASET[label]], "clothing_dataset"))


def co_parsing_ids(root: Path) -> list[int]:
    """Photo numbers with a pixel-level mask that the project may read (never above 1004)."""
    ids = []
    for mask in sorted((root / "annotations" / "pixel-level").glob("*.mat")):
        if mask.stem.isdigit() and int(mask.stem) <= CO_PARSING_LAST_ALLOWED:
            ids.append(int(mask.stem))
    return ids


def import_co_parsing(root: Path, *, min_pixels: int = 0, background_crops: int = 1,
                      crop_fraction: float = 0.3, garment_crops: bool = False) -> ImportReport:
    """Records for Clothing Co-Parsing photos 0001–1004 at ``root``, plus background negatives.

    Args:
        min_pixels: a class shown by fewer mask pixels is not counted as present.
        background_crops: per photo, up to this many negative regions (``box``) with no person pixel,
            each ``crop_fraction`` of the photo's shorter side or larger.
        garment_crops: also, for training photos only (validation and test stay whole photos), one region
            per large garment with the garments the mask shows in it (:func:`garment_boxes`).
    """
    with needs("train"):
        from scipy.io import loadmat

    names = [str(x[0]) for x in loadmat(root / "label_list.mat")["label_list"][0]]
    report = ImportReport()
    rng = np.random.default_rng(0)
    for number in co_parsing_ids(root):
        mask = loadmat(root / "annotations" / "pixel-level" / f"{number:04d}.mat")["groundtruth"]
        image = f"photos/{number:04d}.jpg"
        skip = _co_parsing_skip(root / image, mask)
        if skip:
            report.dropped[skip] += 1
            # Drawn all the same, so the regions cut from later photos stay those earlier imports cut.
            background_boxes(mask == 0, background_crops, crop_fraction, rng)
            continue
        present = [names[i] for i, n in zip(*np.unique(mask, return_counts=True)) if n > min_pixels]
        pairs = []
        for name in present:
            if name in CO_PARSING:
                report.kept[name] += 1
                pairs.append(CO_PARSING[name])
            elif name not in NOT_GARMENTS:
                report.dropped[name] += 1
        report.records.append(_record(image, pairs, "co_parsing", split=co_parsing_split(number)))
        for box in background_boxes(mask == 0, background_crops, crop_fraction, rng):
            report.kept["(background region)"] += 1
            report.records.append(Record(image=image, categories=[], box=box, source="co_parsing_background",
                                         split=co_parsing_split(number)))
        if garment_crops and co_parsing_split(number) == "train":
            for box, pairs in garment_boxes(mask, names):
                report.kept["(garment region)"] += 1
                report.records.append(_record(image, pairs, "co_parsing_garment", box=box, split="train"))
    return report


def _co_parsing_skip(photo: Path, mask: np.ndarray) -> str:
    """Why a Co-Parsing photo is not imported ('' when it is): no photo file, or a mask that labels nothing (all
    label 0, ``null``: nobody annotated it, so neither "no garment" nor its background would be true)."""
    if not photo.is_file():
        return "(missing image)"
    if not mask.any():
        return "(unannotated mask)"
    return ""


def co_parsing_split(number: int) -> str:
    # Photos, not records, are split, so a photo's background regions stay in its split.
    return "test" if number % 5 == 0 else "val" if number % 5 == 1 else "train"


def background_boxes(background: np.ndarray, count: int, fraction: float,
                     rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """Up to ``count`` boxes (left, top, right, bottom) lying wholly in ``background`` (a bool mask)."""
    h, w = background.shape
    side = max(16, int(min(h, w) * fraction))
    # Summed-area table: a box is clear when its count of non-background pixels is zero.
    person = np.pad((~background).astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(count * 40):
        if len(boxes) == count:
            break
        bw, bh = (int(side * s) for s in rng.uniform(1.0, 1.6, size=2))
        if bw >= w or bh >= h:
            continue
        x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        if person[y + bh, x + bw] - person[y, x + bw] - person[y + bh, x] + person[y, x] == 0:
            boxes.append((x, y, x + bw, y + bh))
    return boxes


def garment_boxes(mask: np.ndarray, names: list[str], *, min_area: float = 0.04, max_area: float = 0.7,
                  pad: float = 0.1, inside: float = 0.3, cover: float = 0.1,
                  ) -> list[tuple[tuple[int, int, int, int], list[tuple[str, str | None]]]]:
    """Regions of a street photo, one per garment category covering at least ``min_area`` of it (and at most
    ``max_area``: that is the photo again), each with the garments it shows.

    A region is the box around the category's mask pixels, widened by ``pad`` of its size on each side. A
    garment is shown in it when at least ``inside`` of its pixels fall in the box, or it covers ``cover`` of
    the box: a jacket worn open over a top is in the top's region. A region seen as a close-up teaches what
    the whole photo cannot at 288 px: the difference between a top, a blouse and a jumper on a person.
    """
    h, w = mask.shape
    labels, totals = np.unique(mask, return_counts=True)
    total = dict(zip(labels.tolist(), totals.tolist()))
    by_category: dict[str, list[int]] = {}
    for label in total:
        if names[label] in CO_PARSING:
            by_category.setdefault(CO_PARSING[names[label]][0], []).append(label)
    out: list[tuple[tuple[int, int, int, int], list[tuple[str, str | None]]]] = []
    for category in sorted(by_category):
        tight, box = mask_box(np.isin(mask, by_category[category]), pad)
        if not min_area * h * w <= tight <= max_area * h * w:
            continue
        if any(_iou(box, other) > 0.85 for other, _ in out):
            continue
        inner_labels, inner_counts = np.unique(mask[box[1]:box[3], box[0]:box[2]], return_counts=True)
        area = (box[2] - box[0]) * (box[3] - box[1])
        pairs = [CO_PARSING[names[label]] for label, n in zip(inner_labels.tolist(), inner_counts.tolist())
                 if names[label] in CO_PARSING and (n >= inside * total[label] or n >= cover * area)]
        out.append((box, pairs))
    return out


def mask_box(selected: np.ndarray, pad: float) -> tuple[int, tuple[int, int, int, int]]:
    """The area of the tightest box around a bool mask's pixels, and that box widened by ``pad`` of its size on
    each side (left, top, right, bottom; kept inside the mask)."""
    h, w = selected.shape
    ys, xs = np.nonzero(selected)
    top, bottom, left, right = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    dy, dx = int((bottom - top) * pad), int((right - left) * pad)
    return (bottom - top) * (right - left), (max(0, left - dx), max(0, top - dy), min(w, right + dx), min(h, bottom + dy))


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    both = width * height
    return both / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - both)
