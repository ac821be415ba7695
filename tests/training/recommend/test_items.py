"""Worn items cut from street photos for the catalogue, and the evaluation's rule that a query is never
answered with an item of its own photo."""

from __future__ import annotations

import numpy as np
import pytest

from serving.ontology import load_ontology
from training.recommend import evaluate
from training.recommend.items import SOURCE, item_boxes, street_items
from training.recommend.photos import Embedded
from training.recommend.vectors import Layout

NAMES = ["null", "skin", "bag", "purse", "earrings", "belt", "dress"]


def test_each_garment_class_big_and_solid_enough_is_one_item_with_its_category() -> None:
    mask = np.zeros((400, 200), np.int32)
    mask[0:400, 0:40] = 1                # skin: not a garment
    mask[100:140, 120:160] = 2           # bag: 40 x 40, solid
    mask[300:330, 60:90] = 3             # purse: a handbag
    mask[10:14, 50:54] = 4               # earrings, both ears: tiny, far apart, so mostly not earring
    mask[10:14, 190:194] = 4
    mask[200:201, 100:101] = 5           # belt of one pixel: under the smallest item
    items = sorted(item_boxes(mask, NAMES))
    # Each box widened by a tenth of its size; a purse is a bag, with its sub-category.
    assert items == [((57, 297, 93, 333), "bags", "handbag"), ((116, 96, 164, 144), "bags", None)]


def test_an_item_as_big_as_the_person_is_not_a_product_photo() -> None:
    mask = np.zeros((400, 200), np.int32)
    mask[20:380, 20:180] = 6  # a dress filling most of the photo
    assert item_boxes(mask, NAMES) == []


def test_items_are_cut_from_held_out_photos_only(tmp_path) -> None:
    with pytest.raises(ValueError, match="held-out"):
        street_items(tmp_path, "train")


def _embedded(images: list[str], sources: list[str], truth: list[list[str]], boxes: list, layout: Layout,
              vectors: np.ndarray) -> Embedded:
    labels = np.zeros((len(images), layout.size), np.float32)
    for row, categories in enumerate(truth):
        for category in categories:
            labels[row, layout.ontology.category_ids[category]] = 1.0
    embeddings = np.repeat(vectors[:, None, :], 4, axis=1).astype(np.float32)
    return Embedded(images, sources, truth, labels, embeddings, "v1", {}, boxes)


def test_a_query_is_never_answered_with_an_item_cut_from_its_own_photo(tmp_path) -> None:
    layout = Layout(load_ontology())
    rng = np.random.default_rng(0)
    query = rng.normal(size=8)
    others = rng.normal(size=(11, 8))
    # The query's own bag is the query's twin; the other bags and the shoes look nothing like it.
    vectors = np.vstack([query, query, others])
    images = [str(tmp_path / "photos/0005.jpg"), str(tmp_path / "photos/0005.jpg")]
    images += [str(tmp_path / f"photos/{n:04d}.jpg") for n in range(10, 15)] + [f"c{n}.jpg" for n in range(6)]
    sources = ["co_parsing", SOURCE] + [SOURCE] * 5 + ["clothing_dataset"] * 6
    truth = [["bags", "shoes"], ["bags"]] + [["bags"]] * 5 + [["shoes"]] * 6
    boxes = [None, (0, 0, 5, 5)] + [(0, 0, 5, 5)] * 5 + [None] * 6
    data = _embedded(images, sources, truth, boxes, layout, vectors)
    table, ranked = evaluate.evaluate(data, layout, {"plain": evaluate.RANKINGS["plain"]})
    shown = [ranked["items"][r] for r, _ in ranked["results"]["plain"][0]]
    assert 1 not in shown and len(shown) == evaluate.K
    assert table["plain"]["recall"] == pytest.approx(10 / 11, abs=1e-3)  # 11 relevant items, its own bag not one
    assert evaluate.ceiling(data) == 2  # bags (other photos') and shoes


def test_the_second_catalogue_adds_worn_items_only_of_categories_no_single_garment_photo_shows(tmp_path) -> None:
    layout = Layout(load_ontology())
    photos = _embedded(["q.jpg", "c.jpg"], ["co_parsing", "clothing_dataset"], [["shoes", "bags"], ["shoes"]],
                       [None, None], layout, np.eye(2, 4))
    items = _embedded(["p.jpg", "p.jpg"], [SOURCE, SOURCE], [["shoes"], ["bags"]], [(0, 0, 2, 2), (2, 2, 4, 4)],
                      layout, np.eye(2, 4))
    every, lacking, single = evaluate.catalogues(photos, items).values()
    assert lacking.truth == [["shoes", "bags"], ["shoes"], ["bags"]] and lacking.boxes[2] == (2, 2, 4, 4)
    assert single.truth == photos.truth
    assert len(every.images) == 4
