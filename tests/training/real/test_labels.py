"""Labels of a multi-label real-photo model: every category above the floor, ranked; sub-categories only under
them; a photo whose top category is below the abstain bar gets empty lists and ``abstain: "no_garment"``."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from serving.models import build_model
from serving.ontology import load_ontology
from serving.predict import Predictor
from streamcore.schemas import Label

ONTOLOGY = load_ontology()
K = len(ONTOLOGY.category_names)


def _predictor(category_logits: list[float], *, floor: float, abstain_below: float, multi: bool = True) -> Predictor:
    torch.manual_seed(0)
    model = build_model(backbone="tiny", head="base", ontology=ONTOLOGY, multi=multi, weights="random")
    with torch.no_grad():  # category scores that do not depend on the image
        model.head.categories.weight.zero_()
        model.head.categories.bias.copy_(torch.tensor(category_logits))
    model.config = dataclasses.replace(model.config, label_floor=floor, abstain_below=abstain_below)
    return Predictor(model, ONTOLOGY, version="v-real", device=torch.device("cpu"))


def _labels(predictor: Predictor, n: int = 3) -> list[tuple[dict, Label]]:
    size = predictor.image_size
    images = list(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(2)))
    raw = predictor.label_json(predictor.infer(predictor.stage(images, [None] * n)), [f"p{i}" for i in range(n)], [0] * n)
    return [(json.loads(r), Label.model_validate_json(r)) for r in raw]


def test_every_category_above_the_floor_is_listed_ranked_with_its_subcategories():
    logits = [-6.0] * K
    shown = {1: 3.0, 4: 1.0, 7: 0.0, 10: -1.0, 11: -2.0, 12: -2.5}  # sigmoid 0.95 0.73 0.5 0.27 0.12 0.08
    for k, v in shown.items():
        logits[k] = v
    for raw, label in _labels(_predictor(logits, floor=0.1, abstain_below=0.3)):
        names = [t.term for t in label.categories]
        assert names == [ONTOLOGY.category_names[k] for k in (1, 4, 7, 10, 11)]  # 6 above the top five, 12 below
        assert [t.score for t in label.categories] == sorted((t.score for t in label.categories), reverse=True)
        parents = {ONTOLOGY.category_names[ONTOLOGY.subcategory_parent[ONTOLOGY.subcategory_ids[s.term]]]
                   for s in label.subcategories}
        assert parents <= set(names)
        assert all(t.score >= 0.1 for t in (*label.subcategories, *label.attributes))
        assert "abstain" not in raw and label.abstain is None


def test_a_photo_below_the_abstain_bar_gets_no_garment():
    logits = [-4.0] * K  # every category at 0.018
    for raw, label in _labels(_predictor(logits, floor=0.01, abstain_below=0.3)):
        assert raw["abstain"] == "no_garment" and label.abstain == "no_garment"
        assert label.categories == label.subcategories == label.attributes == []


@pytest.mark.parametrize("multi", [True, False])
def test_models_without_floor_or_bar_label_as_before(multi):
    logits = [-4.0] * K
    for raw, label in _labels(_predictor(logits, floor=0.0, abstain_below=0.0, multi=multi)):
        assert "abstain" not in raw
        assert len(label.categories) == len(label.subcategories) == len(label.attributes) == 5
