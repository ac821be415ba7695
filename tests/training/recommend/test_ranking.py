"""Ranking maths: joint vectors, MMR, per-part queries and round-robin merging, explanations."""

from __future__ import annotations

import numpy as np
import pytest

from serving.ontology import load_ontology
from training.recommend.ranking import explain, joint, mmr, part_queries, round_robin
from training.recommend.vectors import Layout


@pytest.fixture(scope="module")
def layout() -> Layout:
    return Layout(load_ontology())


def _label(layout: Layout, **terms: float) -> np.ndarray:
    label = {"categories": [], "subcategories": [], "attributes": []}
    o = layout.ontology
    for name, score in terms.items():
        field = ("categories" if name in o.category_ids else "subcategories" if name in o.subcategory_ids
                 else "attributes")
        label[field].append({"term": name, "score": score})
    return layout.label_vector(label)


def test_joint_vectors_are_unit_and_weigh_image_against_labels() -> None:
    e1, e2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    l1 = np.array([1.0, 0.0, 0.0])
    a, b = joint(e1, l1, 0.25), joint(e2, l1, 0.25)
    assert np.linalg.norm(a) == pytest.approx(1.0)
    assert a @ b == pytest.approx(0.75)  # orthogonal images, equal labels: only the label share is left


def test_mmr_trades_a_near_duplicate_for_a_different_item() -> None:
    query = np.array([1.0, 0.0])
    vectors = np.array([[1.0, 0.0], [0.999, 0.0447], [0.8, 0.6]])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(3)
    assert mmr(query, ids, vectors, 2, lam=1.0) == [0, 1]
    assert mmr(query, ids, vectors, 2, lam=0.3) == [0, 2]


def test_round_robin_takes_each_list_in_turn_without_repeats() -> None:
    merged = round_robin([("upper", [1, 2, 3]), ("bag", [2, 7, 8])], 5, exclude={3})
    assert merged == [(1, "upper"), (2, "bag"), (7, "bag"), (8, "bag")]
    assert round_robin([("upper", [1, 2, 3]), ("bag", [4, 5])], 3) == [(1, "upper"), (4, "bag"), (2, "upper")]


def test_a_striped_top_with_a_leather_bag_asks_once_per_part(layout: Layout) -> None:
    label = _label(layout, tops_and_tshirts=0.9, bags=0.7, striped=0.8, leather=0.6, t_shirt=0.6)
    queries = part_queries(np.ones(4), label, layout)
    assert [q.part for q in queries] == ["upper", "bag"]
    names = layout.names
    upper, bag = queries[0].vector[4:], queries[1].vector[4:]
    kept = {names[i] for i in np.flatnonzero(upper)}
    assert kept == {"tops_and_tshirts", "t_shirt", "striped"}  # tops allow stripes, not leather
    assert {names[i] for i in np.flatnonzero(bag)} == {"bags", "leather"}


def test_explain_names_the_facet_and_the_shared_terms(layout: Layout) -> None:
    query = _label(layout, tops_and_tshirts=0.9, bags=0.7, striped=0.8, leather=0.6)
    bag = _label(layout, bags=0.9, handbag=0.8, leather=0.9)
    assert explain(query, bag, layout) == ("bag", ["bags", "leather"])  # shares 0.7 of bags, 0.6 of leather
    assert explain(query * layout.facet_masks["material"], bag, layout) == ("material", ["leather"])
    assert explain(query, bag, layout, facet="upper") == ("upper", ["bags", "leather"])
    assert explain(query, _label(layout, jeans=0.9), layout) == ("look", [])


def test_cover_asks_for_each_garment_in_turn_until_relevance_outweighs_what_is_left(layout: Layout) -> None:
    from training.recommend.ranking import cover

    kinds = [_label(layout, tops_and_tshirts=0.95, striped=0.8), _label(layout, bags=0.9, leather=0.9),
             _label(layout, jeans=0.9, denim=0.9)]
    labels = np.stack([kinds[n // 5] for n in range(15)])
    rng = np.random.default_rng(0)
    vectors = joint(rng.standard_normal((15, 8)), labels)
    query_label = _label(layout, tops_and_tshirts=0.9, bags=0.7, jeans=0.1, striped=0.8, leather=0.6)
    query = joint(rng.standard_normal(8), query_label)

    def search(vector: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(-(vectors @ vector))[:n]
        return order, (vectors @ vector)[order]

    def ranked(**weights: float) -> list[tuple[str, str | None]]:
        picked = cover(query, query_label, [], search, 4, vectors_of=lambda ids: vectors[ids],
                       labels_of=lambda ids: labels[ids], layout=layout, exclude={0}, **weights)
        assert 0 not in [i for i, _ in picked]
        return [(("top", "bag", "jeans")[i // 5], why) for i, why in picked]

    # tops (0.9), then the bag (0.7), then jeans: unlikely (0.1) but a part no pick has matched yet
    assert ranked(mu=0.05, tau=0.0) == [("top", "upper"), ("bag", "bag"), ("jeans", "lower"), ("top", None)]
    # relevance weighed high: a second top before the unlikely jeans
    assert ranked(mu=1.0, tau=0.0)[:3] == [("top", "upper"), ("bag", "bag"), ("top", None)]
