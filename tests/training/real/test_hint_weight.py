"""The weight of a mined category hint on a fusion head's category logits, fitted on validation photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serving.models import build_model
from serving.ontology import load_ontology
from training.data.benchmark import Split
from training.real.pipeline import weigh_hints
from training.train import Batchable, predict

ONTOLOGY = load_ontology()
K, M, P = (len(ONTOLOGY.category_names), len(ONTOLOGY.subcategory_names), len(ONTOLOGY.attribute_names))
N = 400


def _model(head: str):
    torch.manual_seed(0)
    model = build_model(backbone="tiny", head=head, ontology=ONTOLOGY, multi=True, weights="random")
    model.eval()
    return model


def _split(hints_follow_truth: bool, seed: int = 0) -> Split:
    """Photos showing each category with probability 0.2, each hinting one category: one it shows, or any."""
    rng = np.random.default_rng(seed)
    categories = (rng.random((N, K)) < 0.2).astype(np.float32)
    hint = np.zeros((N, K), np.float32)
    for n in range(N):
        shown = np.flatnonzero(categories[n])
        hint[n, rng.choice(shown) if hints_follow_truth and len(shown) else rng.integers(0, K)] = 0.5
    return Split(np.zeros((N, 1), np.float32), categories, np.zeros((N, M), np.float32), np.zeros((N, P), np.float32),
                 hint, np.zeros((N, P), np.float32), np.array([""] * N, dtype=object), np.zeros((N, M), np.float32))


def _features(model) -> torch.Tensor:
    return torch.randn(N, model.head.trunk[0].in_features, generator=torch.Generator().manual_seed(1))


def _category_logits(model, split: Split, features: torch.Tensor) -> torch.Tensor:
    out = predict(model, Batchable.from_split(split, multi=True, inputs=features, hints=True), features=True)
    return out.categories.float()


def test_hints_that_name_a_shown_garment_get_weight_and_raise_its_logit_by_it():
    model = _model("fusion")
    split = _split(hints_follow_truth=True)
    features = _features(model)
    before = _category_logits(model, split, features)
    weight = weigh_hints(model, split, features)
    after = _category_logits(model, split, features)
    assert weight >= 1.0
    assert torch.allclose(after - before, weight * torch.from_numpy(split.hint_categories), atol=1e-4)


def test_hints_that_name_garments_at_random_get_little_weight():
    model = _model("fusion")
    split = _split(hints_follow_truth=False)
    assert weigh_hints(model, split, _features(model)) <= 0.5


@pytest.mark.parametrize("head", ["base", "dynamic_pruning"])
def test_a_head_whose_category_layer_does_not_read_hints_is_left_alone(head):
    model = _model(head)
    split = _split(hints_follow_truth=True)
    features = _features(model)
    before = _category_logits(model, split, features)
    assert weigh_hints(model, split, features) == 0.0
    assert torch.equal(_category_logits(model, split, features), before)
