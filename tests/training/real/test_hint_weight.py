"""The weights of mined category and sub-category hints on a fusion head's logits, fitted on validation photos."""

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


def _hinted(rng: np.random.Generator, targets: np.ndarray, follow_truth: bool) -> np.ndarray:
    """Each photo hints one term: one it shows, or any."""
    hint = np.zeros_like(targets)
    for n in range(len(targets)):
        shown = np.flatnonzero(targets[n])
        hint[n, rng.choice(shown) if follow_truth and len(shown) else rng.integers(0, targets.shape[1])] = 0.5
    return hint


def _split(hints_follow_truth: bool, seed: int = 0) -> Split:
    """Photos showing each category and sub-category with probability 0.2, each hinting one of each. Half the
    photos have no known sub-category: their sub-category targets are 0 whatever the hint, as unlabelled."""
    rng = np.random.default_rng(seed)
    categories = (rng.random((N, K)) < 0.2).astype(np.float32)
    subcategories = (rng.random((N, M)) < 0.2).astype(np.float32)
    hint, hint_sub = _hinted(rng, categories, hints_follow_truth), _hinted(rng, subcategories, hints_follow_truth)
    known = np.repeat((np.arange(N) % 2 == 0)[:, None], M, 1).astype(np.float32)
    return Split(np.zeros((N, 1), np.float32), categories, subcategories * known, np.zeros((N, P), np.float32),
                 hint, np.zeros((N, P), np.float32), np.array([""] * N, dtype=object), hint_sub,
                 subcategory_known=known)


def _features(model) -> torch.Tensor:
    return torch.randn(N, model.head.trunk[0].in_features, generator=torch.Generator().manual_seed(1))


def _logits(model, split: Split, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = predict(model, Batchable.from_split(split, multi=True, inputs=features, hints=True), features=True)
    return out.categories.float(), out.subcategories.float()


def test_hints_that_name_a_shown_garment_get_weight_and_raise_its_logit_by_it():
    model = _model("fusion")
    split = _split(hints_follow_truth=True)
    features = _features(model)
    before = _logits(model, split, features)
    weights = weigh_hints(model, split, features)
    after = _logits(model, split, features)
    # Photos whose sub-category nobody labelled would pull the sub-category weight to 0 if they counted.
    assert weights["categories"] >= 1.0 and weights["subcategories"] >= 1.0
    for level, b, a, hint in zip(("categories", "subcategories"), before, after,
                                 (split.hint_categories, split.hint_subcategories)):
        assert torch.allclose(a - b, weights[level] * torch.from_numpy(hint), atol=1e-4)


def test_hints_that_name_garments_at_random_get_little_weight():
    model = _model("fusion")
    split = _split(hints_follow_truth=False)
    weights = weigh_hints(model, split, _features(model))
    assert weights["categories"] <= 0.5 and weights["subcategories"] <= 0.5


@pytest.mark.parametrize("head", ["base", "dynamic_pruning"])
def test_a_head_whose_layers_do_not_read_hints_is_left_alone(head):
    model = _model(head)
    split = _split(hints_follow_truth=True)
    features = _features(model)
    before = _logits(model, split, features)
    assert weigh_hints(model, split, features) == {"categories": 0.0, "subcategories": 0.0}
    after = _logits(model, split, features)
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])


def test_only_the_two_fused_levels_take_a_hint_weight():
    with pytest.raises(ValueError, match="attributes"):
        _model("fusion").head.add_hint_weight(1.0, "attributes")
