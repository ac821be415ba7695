"""The packaged default model serves sensible, coherent labels when the registry is empty; a published
version replaces it; ``hints_used`` says what really steered each label."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from streamcore.images import load_image
from streamcore.schemas import HintsUsed
from streamcore.settings import Settings
from tests.support import publish_tiny
from training.ontology import load_ontology
from training.predict import Predictor, _hints_used
from training.registry import DEFAULT_MODEL_DIR, default_entry, weights_checksum
from training.synthetic.posts import generate_posts
from training.text import TextMiner

ONTOLOGY = load_ontology()


def _image(post) -> Image.Image:
    return load_image(post.image, Settings())


def test_packaged_default_is_small_and_matches_its_checksum() -> None:
    entry = default_entry()
    assert entry.path == DEFAULT_MODEL_DIR
    assert (DEFAULT_MODEL_DIR / "model.safetensors").stat().st_size < 5 * 2**20
    assert weights_checksum(DEFAULT_MODEL_DIR) == (DEFAULT_MODEL_DIR / "SHA256").read_text().strip()
    assert entry.load().config.ontology_version == ONTOLOGY.version


def test_empty_registry_serves_the_default_with_sensible_coherent_labels(tmp_path) -> None:
    predictor = Predictor.load(Settings(model_dir=tmp_path / "empty", device="cpu"))
    assert predictor.version == default_entry().version
    miner = TextMiner.load(ONTOLOGY)
    posts = list(generate_posts(ONTOLOGY, 40, seed=11))
    labels = predictor.predict([predictor.to_tensor(_image(p)) for p, _ in posts], [miner.mine(p) for p, _ in posts],
                               [p.post_id for p, _ in posts], [0] * len(posts))
    right = sum(label.categories[0].term in truth.categories for label, (_, truth) in zip(labels, posts, strict=True))
    assert right >= 0.6 * len(posts), f"only {right}/{len(posts)} top categories right"
    for label in labels:
        top = ONTOLOGY.category_index(label.categories[0].term)
        assert ONTOLOGY.subcategory_parent[ONTOLOGY.subcategory_ids[label.subcategories[0].term]] == top


def test_a_published_version_replaces_the_default(tmp_path) -> None:
    publish_tiny(tmp_path, "v1")
    assert Predictor.load(Settings(model_dir=tmp_path, device="cpu")).version == "v1"


@pytest.mark.parametrize(("head", "hint", "source"), [
    ("base", "category", "none"), ("base", None, "none"),
    ("fusion", "attribute", "mined"), ("fusion", None, "none"),
    ("dynamic_layers", "attribute", "mined"), ("dynamic_layers", "category", "mined"), ("dynamic_pruning", None, "predicted"),
])
def test_hints_used_names_what_steered(head: str, hint: str | None, source: str) -> None:
    k = len(ONTOLOGY.category_names)
    route, hinted = np.zeros(k, dtype=bool), np.zeros(k, dtype=bool)
    route[[2, 5]] = True
    if hint == "category":
        hinted[5] = True
    used = HintsUsed.model_validate(_hints_used(head, route, hinted, hint is not None, ONTOLOGY.category_names))
    assert used.source == source
    if head.startswith("dynamic"):
        assert used.categories == [ONTOLOGY.category_names[2], ONTOLOGY.category_names[5]]
    elif source == "none":
        assert used.categories == []
