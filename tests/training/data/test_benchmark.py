"""The benchmark is deterministic, labels respect the ontology ranges, and hints come from text."""

import numpy as np
import pytest

from training.data.benchmark import BenchmarkConfig, load_benchmark
from training.ontology import load_ontology
from training.synthetic.textures import MATERIAL_FAMILY, paint

ONTOLOGY = load_ontology()


@pytest.fixture(scope="module", params=[False, True], ids=["single", "multi"])
def splits(request, tmp_path_factory):
    config = BenchmarkConfig(multi=request.param, n_train=60, n_test=20, seed=3)
    return request.param, config, load_benchmark(ONTOLOGY, config, cache_dir=tmp_path_factory.mktemp("cache"))


def test_sizes_and_labels_respect_ranges(splits) -> None:
    multi, config, data = splits
    assert [len(data[s]) for s in ("train", "val", "test")] == [48, 12, 20]
    for split in data.values():
        assert split.images.shape[1:] == (3, config.size, config.size) and split.images.dtype == np.uint8
        n_categories = split.categories.sum(1)
        assert ((n_categories >= 2) & (n_categories <= 4)).all() if multi else (n_categories == 1).all()
        for row in range(len(split)):
            allowed = set().union(*(ONTOLOGY.attribute_ranges[k] for k in np.flatnonzero(split.categories[row])))
            assert set(np.flatnonzero(split.attributes[row])) <= allowed
            parents = {ONTOLOGY.subcategory_parent[j] for j in np.flatnonzero(split.subcategories[row])}
            assert parents == set(np.flatnonzero(split.categories[row]))


def test_deterministic_and_cached(splits, tmp_path) -> None:
    _, config, data = splits
    again = load_benchmark(ONTOLOGY, config)  # regenerated without a cache
    for name in data:
        np.testing.assert_array_equal(again[name].images, data[name].images)
        np.testing.assert_array_equal(again[name].hint_categories, data[name].hint_categories)


def test_hints_are_mined_not_copied_from_labels(splits) -> None:
    _, _, data = splits
    split = data["train"]
    top = split.hint_categories.argmax(1)
    right = (split.hint_categories.sum(1) > 0) & (split.categories[np.arange(len(split)), top] > 0)
    assert 0.5 < right.mean() < 1.0  # usually right, sometimes silent or wrong: mined text, not labels


def test_every_pattern_and_material_family_renders() -> None:
    rng = np.random.default_rng(0)
    grey = np.ones((64, 64), np.float32)
    renders = {p: paint(grey, p, "cotton", 64, np.random.default_rng(1)) for p in (t.name for t in ONTOLOGY.patterns)}
    assert len({r.tobytes() for r in renders.values()}) == len(renders)
    families = {f: paint(grey, "plain", next(m for m, g in MATERIAL_FAMILY.items() if g == f), 64, rng) for f in set(MATERIAL_FAMILY.values())}
    assert all(r.shape == (3, 64, 64) for r in families.values())
