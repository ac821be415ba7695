"""Heads learn, route per sample, and a mixed batch equals each sample alone."""

import pytest
import torch

from serving.models import build_model
from serving.models.build import HintTensors
from serving.models.heads import DEACTIVATED, coherent_subcategories, route_categories
from serving.ontology import load_ontology
from training.train import compute_loss, drop_hints

ONTOLOGY = load_ontology()
K, M, P = len(ONTOLOGY.category_names), len(ONTOLOGY.subcategory_names), len(ONTOLOGY.attribute_names)
HEADS = ["base", "fusion", "dynamic_pruning", "dynamic_layers", "dynamic_layers_pure"]
DYNAMIC = ["dynamic_pruning", "dynamic_layers", "dynamic_layers_pure"]


def _model(head: str, multi: bool = False, **kw):
    torch.manual_seed(0)
    return build_model(backbone="tiny", head=head, ontology=ONTOLOGY, multi=multi, **kw)


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
    hints[-1] = 0  # one silent sample: it trains the (not yet frozen) silent-text fallback of dynamic heads
    before = {n: p.detach().clone() for n, p in model.head.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = compute_loss(model(torch.rand(8, 3, 64, 64), hints), targets, multi=multi)
    loss.backward()
    optimizer.step()
    for name, param in model.head.named_parameters():
        assert not torch.equal(before[name], param.detach()), f"{head}: {name} did not change"


@pytest.mark.parametrize("head", ["dynamic_layers", "dynamic_layers_pure"])
def test_dynamic_layers_gradients_reach_only_routed_layers(head: str) -> None:
    model = _model(head)
    hints = torch.zeros(4, K)
    hints[:2, 0] = 1
    hints[2:, 5] = 1
    targets, _ = _targets(4, False)
    out = model(torch.rand(4, 3, 64, 64), hints)
    routed = out.routes.any(0).nonzero().flatten().tolist()  # the hinted categories plus the image's own
    assert {0, 5} <= set(routed)
    compute_loss(out, targets, multi=False).backward()
    for level, ranges in ((model.head.attributes, ONTOLOGY.attribute_ranges), (model.head.subcategories, ONTOLOGY.subcategory_ranges)):
        grad = level.weight.grad.abs().sum(dim=2)  # [K, R]
        for k in range(K):
            used = grad[k, : len(ranges[k])]
            if k in routed and head == "dynamic_layers":
                assert (used > 0).all()  # zero-initialised parts tie, so the max passes gradient to each
            elif k in routed:
                # Separate layers: an output in two routed ranges keeps the larger slot, which alone learns.
                assert used.sum() > 0
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


@pytest.mark.parametrize("head", DYNAMIC)
def test_outputs_outside_routed_ranges_are_deactivated(head: str) -> None:
    model = _model(head, route_threshold=1.0).eval()  # the image adds only its top category
    hints = torch.zeros(2, K)
    hints[0, 4] = 1.0
    hints[1, [4, 11]] = torch.tensor([0.3, 0.7])  # single-class: the top hint (11) is routed, 4 is not
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64), hints)
    image_top = out.categories.argmax(1).tolist()
    for row, k in ((0, 4), (1, 11)):
        assert set(out.routes[row].nonzero().flatten().tolist()) == {k, image_top[row]}
        allowed = torch.zeros(P, dtype=torch.bool)
        for c in {k, image_top[row]}:
            allowed[ONTOLOGY.attribute_ranges[c]] = True
        closed = out.attributes[row, ~allowed]
        # Closed outputs score about DEACTIVATED, below every open one, whatever the image says.
        assert ((closed <= DEACTIVATED) & (closed > DEACTIVATED - 1)).all()
        assert (out.attributes[row, allowed] > DEACTIVATED).all()
    model.train()
    out = model(torch.rand(2, 3, 64, 64), hints)
    assert (out.attributes[~out.attributes.gt(DEACTIVATED)] == DEACTIVATED).all()  # training: the constant


@pytest.mark.parametrize("head", DYNAMIC)
def test_closed_outputs_keep_the_images_order(head: str) -> None:
    """A top-5 that runs past the open range fills with the image's next guesses, not arbitrary ties."""
    model = _model(head, route_threshold=1.0).eval()
    base = _model("base").eval()
    model.head.start_from(base.head)  # closed outputs then rank as Base ranks them
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        out, expected = model(images, torch.zeros(3, K)), base(images)
    for row in range(3):
        closed = out.attributes[row] <= DEACTIVATED
        assert closed.sum() > 1
        got, want = out.attributes[row, closed], expected.attributes[row, closed]
        apart = want[:, None] > want[None, :] + 1e-2  # pairs the image tells apart (no float ties)
        assert apart.any() and (got[:, None] > got[None, :])[apart].all()


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("head", DYNAMIC)
def test_a_dynamic_head_continues_base(head: str, multi: bool) -> None:
    """Started from Base, a dynamic head is Base at the category level and, with every range open and no
    hints, ranks the dependent levels as Base does; training then leaves Base's part (trunk, category
    layer, silent-text fallback) alone."""
    base = _model("base", multi)
    targets, _ = _targets(8, multi)
    torch.optim.SGD(base.parameters(), lr=0.1).zero_grad()
    compute_loss(base(torch.rand(8, 3, 64, 64)), targets, multi=multi).backward()  # Base leaves its init
    with torch.no_grad():
        for p in base.parameters():
            p -= 0.1 * p.grad
    model = _model(head, multi, route_threshold=1e-9)  # every category routed
    model.backbone = base.backbone
    model.head.start_from(base.head)
    images = torch.rand(4, 3, 64, 64)
    model.eval(), base.eval()
    with torch.no_grad():
        out, expected = model(images), base(images)
    assert out.routes.all()
    assert torch.equal(out.categories, expected.categories)
    for level in ("subcategories", "attributes"):  # Base's logits plus one boost per sample
        got, want = getattr(out, level), getattr(expected, level)
        torch.testing.assert_close(got - got.mean(1, keepdim=True), want - want.mean(1, keepdim=True),
                                   rtol=0, atol=1e-4)
    frozen = {n: p.clone() for n, p in model.head.named_parameters() if n.startswith(("trunk", "categories"))
              or ".fallback." in n}
    assert frozen and not any(p.requires_grad for n, p in model.head.named_parameters() if n in frozen)
    model.train()
    optimizer = torch.optim.SGD([p for p in model.head.parameters() if p.requires_grad], lr=0.1)
    compute_loss(model(images, torch.rand(4, K)), {k: v[:4] for k, v in targets.items()}, multi=multi).backward()
    optimizer.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.head.named_parameters() if n in frozen)


def test_a_hint_cannot_silence_a_confident_image() -> None:
    logits = torch.full((2, K), -5.0)
    logits[:, 2] = 5.0  # the image is sure of category 2
    logits[1, 6] = 4.5  # ... and fairly sure of 6 on row 1
    hints = torch.zeros(2, K)
    hints[:, 9] = 1.0  # the text says 9
    single = route_categories(hints, logits, multi=False, threshold=0.3)
    assert single[0].nonzero().flatten().tolist() == [2, 9]
    assert single[1].nonzero().flatten().tolist() == [2, 6, 9]
    multi = route_categories(hints, logits, multi=True, threshold=0.9)
    assert multi[1].nonzero().flatten().tolist() == [2, 6, 9]
    silent = route_categories(torch.zeros(2, K), logits, multi=False, threshold=0.3)
    assert silent[0].nonzero().flatten().tolist() == [2]


def test_multi_class_opens_every_hinted_range() -> None:
    model = _model("dynamic_layers", multi=True, route_threshold=1.0).eval()
    hints = torch.zeros(1, K)
    hints[0, [1, 9]] = torch.tensor([0.8, 0.1])  # a weak hint still opens its range
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64), hints)
    routed = {1, 9, int(out.categories.argmax())}
    union = set().union(*(ONTOLOGY.attribute_ranges[k] for k in routed))
    opened = set((out.attributes[0] > DEACTIVATED).nonzero().flatten().tolist())
    assert opened == union


@pytest.mark.parametrize("head", HEADS)
def test_no_hint_falls_back_to_predicted_category(head: str) -> None:
    model = _model(head, route_threshold=0.05).eval()
    with torch.no_grad():
        out = model(torch.rand(3, 3, 64, 64))
    top = torch.nn.functional.one_hot(out.categories.argmax(1), K).bool()
    assert torch.equal(out.routes, top | (out.categories.softmax(1) >= 0.05))


def test_coherent_subcategories_put_the_top_category_first() -> None:
    parent = torch.tensor(ONTOLOGY.subcategory_parent)
    categories = torch.zeros(1, K)
    categories[0, 3] = 4.0
    subs = torch.randn(1, M) * 5
    subs[0, ONTOLOGY.subcategory_ranges[7][0]] = 20.0  # the raw winner lies under another category
    coherent = coherent_subcategories(categories, subs, parent)
    assert parent[coherent.argmax()] == 3
    inside = parent == 3
    assert torch.equal(coherent[0, inside].argsort(), subs[0, inside].argsort())  # order kept within


@pytest.mark.parametrize("multi", [False, True])
def test_hint_dropout_one_trains_only_the_silent_text_fallback(multi: bool) -> None:
    model = _model("dynamic_layers", multi)  # not started from Base: its fallback layer still learns
    targets, category = _targets(8, multi)
    hints = torch.nn.functional.one_hot((category + 1) % K, K).float()  # hint a wrong category everywhere
    hc, hs, ha = drop_hints(HintTensors(hints, torch.rand(8, M), torch.rand(8, P)), 1.0, torch.Generator().manual_seed(0))
    assert not hc.any() and not ha.any() and not hs.any()
    out = model(torch.rand(8, 3, 64, 64), hc, ha, hs)
    compute_loss(out, targets, multi=multi).backward()
    allowed = (out.routes.float() @ model.head.attributes.range_mask.float()) > 0  # the image's own route
    grad = model.head.attributes.fallback.weight.grad.abs().sum(1)
    assert (grad[allowed.any(0)] > 0).all() and (grad[~allowed.any(0)] == 0).all()
    assert model.head.attributes.weight.grad.abs().sum() == 0  # the per-category layers learn from hints only
    assert model.head.categories.weight.grad.abs().sum() > 0


def test_hint_dropout_keeps_or_zeroes_whole_rows() -> None:
    hints = HintTensors(torch.rand(1000, K) + 0.1, torch.rand(1000, M) + 0.1, torch.rand(1000, P) + 0.1)
    assert drop_hints(hints, 0.0, torch.Generator()) is hints
    dropped = drop_hints(hints, 0.3, torch.Generator().manual_seed(0))
    silent = ~dropped.categories.any(1)
    for kept, original in zip(dropped, hints, strict=True):
        assert torch.equal(silent, ~kept.any(1))
        assert torch.equal(kept[~silent], original[~silent])
    assert 0.25 < silent.float().mean() < 0.35


@pytest.mark.parametrize("head", HEADS)
def test_forward_never_writes_weights(head: str) -> None:
    model = _model(head)
    before = {n: t.clone() for n, t in model.state_dict().items() if "running" not in n and "num_batches" not in n}
    hints = torch.zeros(4, K)
    hints[:, 3] = 1
    model(torch.rand(4, 3, 64, 64), hints, torch.rand(4, P))
    for name, tensor in before.items():
        assert torch.equal(tensor, model.state_dict()[name]), name


@pytest.mark.parametrize("level", ["subcategories", "attributes"])
@pytest.mark.parametrize("head", DYNAMIC)
def test_a_hinted_output_is_boosted_by_alpha(head: str, level: str) -> None:
    model = _model(head).eval()
    images = torch.rand(1, 3, 64, 64)
    hints = torch.zeros(1, K)
    hints[0, 2] = 1.0
    ranges, size = (ONTOLOGY.subcategory_ranges, M) if level == "subcategories" else (ONTOLOGY.attribute_ranges, P)
    target = ranges[2][-1]
    hint = torch.zeros(1, size)
    hint[0, target] = 0.5
    kwargs = {"hint_subcategories" if level == "subcategories" else "hint_attributes": hint}
    with torch.no_grad():
        plain = getattr(model(images, hints), level)
        boosted = getattr(model(images, hints, **kwargs), level)
        h = model.head.trunk(model.backbone(images))
    delta = boosted - plain
    torch.testing.assert_close(delta[0, target], 0.1 * 0.5 * h.sum(), rtol=1e-4, atol=1e-4)
    delta[0, target] = 0
    assert (delta == 0).all()


def test_fusion_reads_the_hints_and_base_does_not() -> None:
    images = torch.rand(2, 3, 64, 64)
    hints = torch.zeros(2, K)
    hints[:, 4] = 1.0
    for head, changes in (("fusion", True), ("base", False)):
        model = _model(head).eval()
        with torch.no_grad():
            silent, hinted = model(images), model(images, hints, torch.rand(2, P), torch.rand(2, M))
        assert (not torch.allclose(silent.categories, hinted.categories)) is changes, head


def test_pure_dynamic_layers_have_no_shared_rows() -> None:
    pure, shared = _model("dynamic_layers_pure"), _model("dynamic_layers")
    assert pure.head.attributes.shared is None and shared.head.attributes.shared is not None
    assert pure.head.attributes.weight.abs().sum() > 0  # separate layers start like nn.Linear, not at zero


@pytest.mark.parametrize("head", DYNAMIC)
def test_silent_text_uses_bases_layers_whatever_the_dynamic_ones_learned(head: str) -> None:
    """The fallback of "when the text is silent": Base's dependent layers under the image's route, so what
    the dynamic layers learned from hints cannot cost a post without text; hinted posts use the dynamic ones."""
    base = _model("base").eval()
    model = _model(head).eval()
    model.backbone = base.backbone
    model.head.start_from(base.head)
    with torch.no_grad():  # the dynamic layers learn something else entirely
        for name, param in model.head.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param))
    images = torch.rand(4, 3, 64, 64)
    hints = torch.zeros(4, K)
    hints[2:, 3] = 1.0  # rows 0-1 silent, rows 2-3 hinted
    with torch.no_grad():
        out, expected = model(images, hints), base(images)
    for level in ("subcategories", "attributes"):
        got, want = getattr(out, level), getattr(expected, level)
        for row in (0, 1):
            open_ = got[row] > DEACTIVATED
            shift = (got[row, open_] - want[row, open_]).mean()  # one boost per sample
            torch.testing.assert_close(got[row, open_], want[row, open_] + shift, rtol=0, atol=1e-4)
        for row in (2, 3):
            open_ = got[row] > DEACTIVATED
            assert not torch.allclose(got[row, open_] - got[row, open_].mean(), want[row, open_] - want[row, open_].mean(),
                                      atol=1e-2)


@pytest.mark.parametrize("head", DYNAMIC)
def test_the_kept_base_comes_out_whole_and_goes_back_in_without_touching_the_dynamic_layers(head: str) -> None:
    """What a warm retrain does (``training.retrain``): take out the Base a dynamic head keeps, retrain it,
    put it back; the dynamic layers stay as they were and the kept parts are frozen again."""
    base = _model("base").eval()
    model = _model(head).eval()
    model.backbone = base.backbone
    model.head.start_from(base.head)
    with torch.no_grad():
        for param in model.head.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param))
    out = _model("base").eval()
    out.backbone = base.backbone
    out.head.load_state_dict(model.head.kept_base())  # strict: every key of a Base, nothing else
    images = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(out(images).subcategories, base(images).subcategories, rtol=0, atol=0)
        for param in out.head.parameters():  # the retrain
            param.add_(0.1 * torch.randn_like(param))
    dynamic = {n: p.clone() for n, p in model.head.named_parameters() if p.requires_grad}
    model.head.requires_grad_(True)  # as loaded from a checkpoint
    model.head.keep_base(out.head)
    assert all(torch.equal(p, dynamic[n]) for n, p in model.head.named_parameters() if n in dynamic)
    assert {n for n, p in model.head.named_parameters() if p.requires_grad} == set(dynamic)
    with torch.no_grad():
        assert torch.equal(model(images).categories, out(images).categories)
    assert torch.equal(model.head.subcategories.fallback.weight, out.head.subcategories.linear.weight)


def test_a_head_without_silent_text_layers_keeps_no_base() -> None:
    with pytest.raises(ValueError, match="keeps no Base"):
        _model("fusion").head.kept_base()
