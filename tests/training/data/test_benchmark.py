"""The benchmark is deterministic, labels respect the ontology ranges, and hints come from text."""

import numpy as np
import pytest

from serving.ontology import load_ontology
from training.data.benchmark import BenchmarkConfig, load_benchmark
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


def test_cache_key_follows_generator_versions(monkeypatch) -> None:
    config = BenchmarkConfig(n_train=60, n_test=20)
    key = config.key(ONTOLOGY)
    monkeypatch.setattr("training.data.benchmark.CAPTIONS_VERSION", "changed")
    assert config.key(ONTOLOGY) != key
    monkeypatch.undo()
    assert config.key(ONTOLOGY) == key
    monkeypatch.setattr("training.data.benchmark.MINER_VERSION", "other")
    assert config.key(ONTOLOGY) != key


def test_text_variants_share_images_and_labels() -> None:
    base = BenchmarkConfig(n_train=40, n_test=10, seed=1)
    harder = BenchmarkConfig(n_train=40, n_test=10, seed=1, mention_prob=0.3, distractor_prob=0.5, slang_prob=0.5)
    assert base.same_images(harder) and not base.same_images(BenchmarkConfig(n_train=40, n_test=10, seed=1, visible_materials=True))
    a, b = load_benchmark(ONTOLOGY, base), load_benchmark(ONTOLOGY, harder)
    for name in a:
        np.testing.assert_array_equal(a[name].images, b[name].images)
        np.testing.assert_array_equal(a[name].attributes, b[name].attributes)
    assert not np.array_equal(a["train"].hint_categories, b["train"].hint_categories)


def test_wrong_hints_are_injected_at_the_known_rate() -> None:
    data = load_benchmark(ONTOLOGY, BenchmarkConfig(n_train=400, n_test=10, seed=2, wrong_hint_rate=0.5))["train"]
    top = data.hint_categories.argmax(1)
    wrong = data.categories[np.arange(len(data)), top] == 0
    assert 0.5 <= wrong.mean() < 0.5 + 0.3  # injected half, plus the miner's own mistakes and silences
    assert data.hint_subcategories.shape == data.subcategories.shape


def test_visible_materials_tell_look_alikes_apart() -> None:
    grey = np.ones((64, 64), np.float32)
    def render(material: str, visible: bool) -> np.ndarray:
        return paint(grey, "plain", material, 64, np.random.default_rng(5), visible_materials=visible).astype(float)
    # cotton and linen share the "matte" family: nearly equal without the signature, apart with it
    hidden = np.abs(render("cotton", False) - render("linen", False)).mean()
    shown = np.abs(render("cotton", True) - render("linen", True)).mean()
    assert shown > 5 * max(hidden, 0.5)
