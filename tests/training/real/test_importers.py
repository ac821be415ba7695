"""Importers: street-photo regions cut from a pixel mask (where each large garment is, and what the region
shows), and what each importer drops, counts or refuses."""

import numpy as np
import pytest
from scipy.io import savemat

from training.real.importers import DatasetError, garment_boxes, import_clothing_dataset, import_co_parsing

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


def _clothing(tmp_path, table: bytes):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"")
    (tmp_path / "images.csv").write_bytes(table)
    return tmp_path


def test_the_clothing_dataset_counts_a_missing_image_apart_from_an_unmapped_class(tmp_path):
    root = _clothing(tmp_path, b"image,sender_id,label,kids\na,1,Shoes,False\nb,1,Shoes,False\nc,1,Body,False\n")
    report = import_clothing_dataset(root)
    assert [r.image for r in report.records] == ["images/a.jpg"]
    assert report.summary()["dropped"] == {"(missing image)": 1, "Body": 1}


@pytest.mark.parametrize(("table", "reason"), [
    (b"image,sender_id,kids\na,1,False\n", "no column ['label']"),
    (b"image,sender_id,label,kids\na,1,Caf\xe9,False\n", "utf-8"),
])
def test_an_unreadable_clothing_table_is_refused_with_its_name(tmp_path, table, reason):
    with pytest.raises(DatasetError, match="images.csv") as caught:
        import_clothing_dataset(_clothing(tmp_path, table))
    assert reason in str(caught.value)


def test_co_parsing_skips_an_unannotated_mask_and_a_missing_photo(tmp_path):
    (tmp_path / "annotations" / "pixel-level").mkdir(parents=True)
    (tmp_path / "photos").mkdir()
    savemat(tmp_path / "label_list.mat", {"label_list": np.array([NAMES], dtype=object)})
    for number, mask, photo in ((1, _person(), True), (2, np.zeros((200, 100), np.uint8), True), (3, _person(), False)):
        savemat(tmp_path / "annotations" / "pixel-level" / f"{number:04d}.mat", {"groundtruth": mask})
        if photo:
            (tmp_path / "photos" / f"{number:04d}.jpg").write_bytes(b"")
    report = import_co_parsing(tmp_path, crop_fraction=0.05)
    assert {r.image for r in report.records} == {"photos/0001.jpg"}
    assert {r.source for r in report.records} == {"co_parsing", "co_parsing_background"}
    assert report.summary()["dropped"] == {"(unannotated mask)": 1, "(missing image)": 1}
