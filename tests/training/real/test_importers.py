"""Street-photo regions cut from a pixel mask: where each large garment is, and what the region shows."""

import numpy as np

from training.real.importers import garment_boxes

NAMES = ["null", "skin", "top", "jacket", "skirt", "shoes", "ring"]


def _person() -> np.ndarray:
    mask = np.zeros((200, 100), dtype=np.uint8)
    mask[20:30, 40:60] = 1             # face
    mask[30:90, 30:70] = 2             # a top
    mask[30:90, 20:30] = 3             # a jacket worn open: two strips beside the top
    mask[30:90, 70:80] = 3
    mask[90:150, 30:70] = 4            # a skirt
    mask[185:195, 35:65] = 5           # shoes: under min_area of the photo
    mask[60:62, 25:27] = 6             # a ring
    return mask


def _regions(mask):
    return [(box, sorted({c for c, _ in pairs})) for box, pairs in garment_boxes(mask, NAMES)]


def test_a_region_per_large_garment_with_what_it_shows():
    regions = _regions(_person())
    # The jacket's region, the top's (which holds the open jacket beside it and the ring) and the skirt's;
    # the shoes are under min_area of the photo.
    assert [labels for _box, labels in regions] == [
        ["all_accessories", "jackets", "tops_and_tshirts"], ["skirts"], ["all_accessories", "jackets", "tops_and_tshirts"]]
    (jacket, _), (skirt, _), (top, _) = regions
    assert jacket[0] < 20 and jacket[2] > 80 and top[0] > 20 and top[2] < 80
    assert skirt[1] < 90 and skirt[3] > 150 and skirt[0] < 30 and skirt[2] > 70


def test_the_same_region_is_cut_once():
    mask = np.zeros((200, 100), dtype=np.uint8)
    mask[30:150, 30:70] = 2  # a long top and a jacket whose edges frame it: one region for both
    mask[30:150, 30:31] = 3
    mask[30:150, 69:70] = 3
    assert _regions(mask) == [((26, 18, 74, 162), ["jackets", "tops_and_tshirts"])]


def test_a_garment_barely_in_a_region_is_not_labelled_there():
    regions = [labels for _box, labels in _regions(_person())]
    # The skirt's region takes a sliver of the top above it (and of the jacket): not its garments.
    assert ["skirts"] in regions


def test_a_photo_that_is_one_garment_gives_no_region():
    mask = np.full((100, 100), 4, dtype=np.uint8)
    assert garment_boxes(mask, NAMES) == []
