"""Heads learn, route per sample, and a mixed batch equals each sample alone."""

import pytest
import torch

from training.models import build_model
from training.models.heads import DEACTIVATED
from training.ontology import load_ontology
from training.train import compute_loss, drop_hints

ONTOLOGY = load_ontology()
K, M, P = len(ONTOLOGY.category_names), len(ONTOLOGY.subcategory_names), len(ONTOLOGY.attribute_names)
HEADS = ["base", "dynamic_pruning", "dynamic_layers"]


def _model(head: str, multi: bool = False):
    torch.manual_seed(0)
    return build_model(backbone="tiny", head=head, ontology=ONTOLOGY, multi=multi)


def _targets(batch: int, multi: bool) -> dict:
    gen = torch.Generator().manual_seed(1)
    category = torch.randint(0, K, (batch,), generator=gen)
    cats = torch.nn.functional.one_hot(category, K).float()
    subs = torch.zeros(batch, M)
    atts = torch.zeros(batch, P)
    for b, k in enumerate(category.tolist()):
        subs[b, ONTOLOGY.subcategory_ranges[k][0]] = 1
        atts[b, ONTOLOGY.attribute_ranges[k][:2]] = 1
    return {"categories": cats if multi else category, "subcategories": subs, "attributes": atts}, category


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("head", HEADS)
def test_one_step_changes_every_head_parameter(head: str, multi: bool) -> None:
    model = _model(head, multi)
    targets, category = _targets(8, multi)
    hints = torch.nn.functional.one_hot(category, K).float()
    before = {n: p.detach().clone() for n, p in model.head.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = compute_loss(model(torch.rand(8, 3, 64, 64), hints), targets, multi=multi)
    loss.backward()
    optimizer.step()
    for name, param in model.head.named_parameters():
        assert not torch.equal(before[name], param.detach()), f"{head}: {name} did not change"


def test_dynamic_layers_gradients_reach_only_routed_layers() -> None:
    model = _model("dynamic_layers")
    routed = [0, 5]
    hints = torch.zeros(4, K)
    hints[:2, routed[0]] = 1
    hints[2:, routed[1]] = 1
    targets, _ = _targets(4, False)
    compute_loss(model(torch.rand(4, 3, 64, 64), hints), targets, multi=False).backward()
    for level, ranges in ((model.head.attributes, ONTOLOGY.attribute_ranges), (model.head.subcategories, ONTOLOGY.subcategory_ranges)):
        grad = level.weight.grad.abs().sum(dim=2)  # [K, R]
        for k in range(K):
            used = grad[k, : len(ranges[k])]
            if k in routed:
                assert (used > 0).all()
            else:
                assert (grad[k] == 0).all(), f"gradient leaked into category {k}'s layer"
        for k in range(K):
            assert (grad[k, len(ranges[k]) :] == 0).all(), "padding rows must never get gradient"


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("head", HEADS)
def test_mixed_batch_equals_each_sample_alone(head: str, multi: bool) -> None:
    model = _model(head, multi).eval()
    images = torch.rand(5, 3, 64, 64)
    hints = torch.zeros(5, K)
    hints[1, 3] = 1.0
    hints[2, [0, 7]] = torch.tensor([0.6, 0.4])
    hints[3, 12] = 1.0  # row 0 and row 4: no hint, fall back to the prediction
    attributes = torch.zeros(5, P)
    attributes[3, ONTOLOGY.attribute_ranges[12][0]] = 1.0
    attributes[2, ONTOLOGY.attribute_ranges[0][1]] = 1.0
    with torch.no_grad():
        batch = model(images, hints, attributes)
        for i in range(5):
            alone = model(images[i : i + 1], hints[i : i + 1], attributes[i : i + 1])
            for level in ("categories", "subcategories", "attributes"):
                torch.testing.assert_close(getattr(batch, level)[i : i + 1], getattr(alone, level), rtol=1e-5, atol=1e-5)
            assert torch.equal(batch.routes[i : i + 1], alone.routes)


@pytest.mark.parametrize("head", ["dynamic_pruning", "dynamic_layers"])
def test_outputs_outside_hinted_range_are_deactivated(head: str) -> None:
    model = _model(head).eval()
    hints = torch.zeros(2, K)
    hints[0, 4] = 1.0
    hints[1, [4, 11]] = torch.tensor([0.3, 0.7])  # single-class: the top hint (11) wins
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64), hints)
    for row, k in ((0, 4), (1, 11)):
        allowed = torch.zeros(P, dtype=torch.bool)
        allowed[ONTOLOGY.attribute_ranges[k]] = True
        assert (out.attributes[row, ~allowed] == DEACTIVATED).all()
        assert (out.attributes[row, allowed] > DEACTIVATED).all()
        assert out.routes[row].nonzero().flatten().tolist() == [k]


def test_multi_class_opens_the_union_of_hinted_ranges() -> None:
    model = _model("dynamic_layers", multi=True).eval()
    hints = torch.zeros(1, K)
    hints[0, [1, 9]] = 0.5
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64), hints)
    union = set(ONTOLOGY.attribute_ranges[1]) | set(ONTOLOGY.attribute_ranges[9])
    opened = set((out.attributes[0] > DEACTIVATED).nonzero().flatten().tolist())
    assert opened == union


@pytest.mark.parametrize("head", HEADS)
def test_no_hint_falls_back_to_predicted_category(head: str) -> None:
    model = _model(head).eval()
    with torch.no_grad():
        out = model(torch.rand(3, 3, 64, 64))
    top = torch.nn.functional.one_hot(out.categories.argmax(1), K).bool()
    assert torch.equal(out.routes, top | (out.categories.softmax(1) >= 0.05))


@pytest.mark.parametrize("multi", [False, True])
def test_hint_dropout_one_trains_through_the_fallback_route(multi: bool) -> None:
    model = _model("dynamic_layers", multi)
    targets, category = _targets(8, multi)
    hints = torch.nn.functional.one_hot((category + 1) % K, K).float()  # hint a wrong category everywhere
    hc, ha = drop_hints(hints, torch.rand(8, P), 1.0, torch.Generator().manual_seed(0))
    assert not hc.any() and not ha.any()
    out = model(torch.rand(8, 3, 64, 64), hc, ha)
    compute_loss(out, targets, multi=multi).backward()
    routed = out.routes.any(0)  # the fallback: the model's own predicted categories
    grad = model.head.attributes.weight.grad.abs().sum(dim=(1, 2))
    assert (grad[routed] > 0).all() and (grad[~routed] == 0).all()
    assert model.head.categories.weight.grad.abs().sum() > 0


def test_hint_dropout_keeps_or_zeroes_whole_rows() -> None:
    hints, attributes = torch.rand(1000, K) + 0.1, torch.rand(1000, P) + 0.1
    unchanged = drop_hints(hints, attributes, 0.0, torch.Generator())
    assert unchanged[0] is hints and unchanged[1] is attributes
    hc, ha = drop_hints(hints, attributes, 0.3, torch.Generator().manual_seed(0))
    silent = ~hc.any(1)
    assert torch.equal(silent, ~ha.any(1))
    assert torch.equal(hc[~silent], hints[~silent]) and torch.equal(ha[~silent], attributes[~silent])
    assert 0.25 < silent.float().mean() < 0.35


@pytest.mark.parametrize("head", ["dynamic_pruning", "dynamic_layers"])
def test_hinted_attribute_is_boosted_by_alpha(head: str) -> None:
    model = _model(head).eval()
    images = torch.rand(1, 3, 64, 64)
    hints = torch.zeros(1, K)
    hints[0, 2] = 1.0
    target = ONTOLOGY.attribute_ranges[2][0]
    attribute = torch.zeros(1, P)
    attribute[0, target] = 1.0
    with torch.no_grad():
        plain = model(images, hints).attributes
        boosted = model(images, hints, attribute).attributes
        h = model.head.trunk(model.backbone(images))
    delta = boosted - plain
    torch.testing.assert_close(delta[0, target], 0.1 * h.sum(), rtol=1e-4, atol=1e-4)
    delta[0, target] = 0
    assert (delta == 0).all()


@pytest.mark.parametrize("head", HEADS)
def test_forward_never_writes_weights(head: str) -> None:
    model = _model(head)
    before = {n: t.clone() for n, t in model.state_dict().items() if "running" not in n and "num_batches" not in n}
    hints = torch.zeros(4, K)
    hints[:, 3] = 1
    model(torch.rand(4, 3, 64, 64), hints, torch.rand(4, P))
    for name, tensor in before.items():
        assert torch.equal(tensor, model.state_dict()[name]), name
