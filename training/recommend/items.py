"""A catalogue's items cut from held-out street photos: garments, bags and accessories as worn.

The clothing dataset photographs tops, trousers, dresses, jackets, shoes and hats, and no bag, belt, scarf,
watch, sunglasses or socks. A street outfit wears those too, so with that catalogue alone a list cannot
match a query on its bag however it is ranked. Clothing Co-Parsing's pixel masks say where each worn item
is: one item per Co-Parsing class a photo shows (the box around that class's pixels, widened a little),
labelled with that class's category only (a shop item is one product). Only held-out photos (validation and
test splits, never past 1004) are cut, and a query is never answered with an item cut from its own photo
(:func:`training.recommend.evaluate.evaluate` leaves those out)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.ontology import Ontology
from streamcore.extras import needs
from training.real.importers import CO_PARSING, co_parsing_ids, co_parsing_split, mask_box
from training.real.manifest import Record
from training.recommend.photos import Embedded, cached_embedding

SOURCE = "co_parsing_item"


def item_boxes(mask: np.ndarray, names: list[str], *, min_area: float = 0.002, max_area: float = 0.5,
               min_fill: float = 0.15, pad: float = 0.1) -> list[tuple[tuple[int, int, int, int], str, str | None]]:
    """``(box, category, sub-category)`` per garment class the mask shows, big enough to be a product photo.

    A class is cut when its box covers ``min_area``–``max_area`` of the photo and its pixels fill at least
    ``min_fill`` of the box: earrings on both ears, or bracelets on both wrists, make a box of mostly
    something else, which is not a photo of them.
    """
    h, w = mask.shape
    out = []
    for label in np.unique(mask).tolist():
        if names[label] not in CO_PARSING:
            continue
        selected = mask == label
        area, box = mask_box(selected, pad)
        if not min_area * h * w <= area <= max_area * h * w or selected.sum() < min_fill * area:
            continue
        category, subcategory = CO_PARSING[names[label]]
        out.append((box, category, subcategory))
    return out


def street_items(root: Path, split: str) -> list[Record]:
    """Item records (:data:`SOURCE`) of one held-out split's Co-Parsing photos at ``root``."""
    if split not in ("val", "test"):
        raise ValueError(f"items are cut from held-out photos only (val, test), not {split!r}")
    with needs("train"):
        from scipy.io import loadmat

    names = [str(x[0]) for x in loadmat(root / "label_list.mat")["label_list"][0]]
    records = []
    for number in co_parsing_ids(root):
        if co_parsing_split(number) != split:
            continue
        photo = root / "photos" / f"{number:04d}.jpg"
        if not photo.is_file():
            continue
        mask = loadmat(root / "annotations" / "pixel-level" / f"{number:04d}.mat")["groundtruth"]
        for box, category, subcategory in item_boxes(mask, names):
            records.append(Record(image=str(photo), categories=[category],
                                  subcategories=[subcategory] if subcategory else [], box=box,
                                  split=split, source=SOURCE))
    return records


def embedded_items(root: Path, cache: Path, ontology: Ontology, split: str) -> Embedded:
    """One held-out split's street items embedded by the packaged model (cached at ``cache``)."""
    return cached_embedding(cache, lambda: street_items(root, split), ontology)
