"""Classification heads: Base, DynamicPruning (Algorithm 1), DynamicLayers (Algorithm 2) and baselines.

All heads share a trunk (two FC layers) and a category layer. They differ in the *dependent* levels
(sub-categories and attributes):

* :class:`BaseHead` — plain linear layers; hints are ignored.
* :class:`FusionHead` — late fusion: Base whose output layers read the hint vectors next to the trunk's
  features (a learned, linear path from each hint to each output; no routing, no fixed boosts).
* :class:`DynamicPruningHead` — one linear layer per level; per sample, outputs outside the range of the
  routed categories are deactivated, the allowed range is boosted by ``beta`` and directly hinted
  sub-categories / attributes by ``alpha``. Masks are per sample, so a batch mixes hints; learned
  weights are never modified (the authors' code overwrote ``weight.data`` in ``forward``).
* :class:`DynamicLayersHead` — one small layer per category, sized to its range (shared rows plus a
  per-category part); each sample uses only its routed categories' layers, merged into the unified
  tensor for the loss, with the same boosts as DynamicPruning.
* :class:`DynamicLayersPureHead` — the paper's DynamicLayers without shared rows (fully separate
  per-category layers): the ablation that makes the DynamicLayers-vs-DynamicPruning comparison.

Routing (:func:`route_categories`) opens the hinted categories *and* the image's confident predictions,
so a wrong or missing hint cannot silence what the image shows.

Dynamic heads start from a trained Base (:meth:`_Head.start_from`): its trunk and category layer are
copied and frozen, its dependent layers seed theirs, and a frozen copy of them serves the samples whose
text is silent (no hint at all), under the image's own route: "when the text is silent, fall back to the
predicted category". The category level is then Base's exactly; the dynamic layers learn what the hints
add, and a silent text cannot leave a dynamic head below Base. A warm retrain keeps it so: the kept Base
comes out (:meth:`_Head.kept_base`), retrains as a Base, and goes back in frozen (:meth:`_Head.keep_base`)
before the dynamic layers continue.

Deactivated outputs keep the image's order among themselves (:func:`deactivate`): they all score about
``DEACTIVATED``, so no closed range ever outranks an open one, but a top-5 list that runs past the open
range fills with the image's next guesses, not with arbitrary ties.

"Boosting a connection by v" follows the paper literally: v is added to every incoming weight of that
output, i.e. ``v * sum(h)`` is added to its logit, computed without materialising per-sample weights.
``sum(h)`` is detached there: the boost is a prior from the text, and letting the trunk learn through
it teaches the trunk to scale its activations to the (noisy) hints, which hurts every other output.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor, nn

#: Logit of a deactivated output: sigmoid ~ 1e-13 and finite, so BCE/CE stay finite and pass no gradient.
DEACTIVATED = -30.0
#: Default of the image-confidence bar for opening a category's range: what Table II's validation-only
#: selection picked for most dynamic heads (``training.evaluate``).
ROUTE_THRESHOLD = 0.1
#: Pushes a single-class label's sub-categories outside its top category below every one inside it.
_INCOHERENT = 100.0


class ModelOutput(NamedTuple):
    """Logits per level plus the category route each sample used (``[B, K]`` bool)."""

    categories: Tensor
    subcategories: Tensor
    attributes: Tensor
    routes: Tensor


def route_categories(hint_categories: Tensor, category_logits: Tensor, *, multi: bool, threshold: float = ROUTE_THRESHOLD) -> Tensor:
    """Per sample, the categories whose dependent ranges are opened (``[B, K]`` bool).

    The union of the text's categories and the image's: the top hinted category (single-class) or every
    hinted category (multi-class), plus the image's top category and every category whose probability
    (softmax for single-class, sigmoid for multi-class) reaches ``threshold``. A hint can add a range but
    never close one the image is confident about; silent text leaves the image's route alone.
    """
    if multi:
        probabilities = torch.sigmoid(category_logits)
        hinted = hint_categories > 0
    else:
        probabilities = torch.softmax(category_logits, dim=1)
        has_hint = (hint_categories > 0).any(dim=1, keepdim=True)
        hinted = nn.functional.one_hot(hint_categories.argmax(1), hint_categories.shape[1]).bool() & has_hint
    predicted_top = nn.functional.one_hot(category_logits.argmax(1), category_logits.shape[1]).bool()
    return hinted | predicted_top | (probabilities >= threshold)


def coherent_subcategories(category_logits: Tensor, subcategory_logits: Tensor, parent: Tensor) -> Tensor:
    """Single-class labels: rank the top category's sub-categories above all others (order kept within).

    ``parent`` maps each sub-category to its category index (``[M]`` long). Shifting the others by a
    constant keeps every ranking inside each group, so the top sub-category always lies under the top
    category and the rest of the list stays informative.
    """
    outside = parent[None, :] != category_logits.argmax(1, keepdim=True)
    return subcategory_logits - _INCOHERENT * outside.to(subcategory_logits.dtype)


def deactivate(logits: Tensor, allowed: Tensor, raw: Tensor | None) -> Tensor:
    """Close the outputs outside ``allowed``: ``DEACTIVATED`` in training, and at inference just below
    it, ordered by the unrouted logits ``raw`` (no gradient ever reaches a closed output)."""
    if raw is None:
        return logits.masked_fill(~allowed, DEACTIVATED)
    # In (DEACTIVATED - 1, DEACTIVATED): below every open output, monotone in the image's own score.
    closed = DEACTIVATED - torch.sigmoid(-raw.detach().float()).to(logits.dtype)
    return torch.where(allowed, logits, closed)


def _with_fallback(logits: Tensor, fallback: nn.Linear | None, h: Tensor, silent: Tensor) -> Tensor:
    """``logits`` with the rows of silent-text samples replaced by the fallback layer's."""
    if fallback is None:
        return logits
    return torch.where(silent[:, None], fallback(h).to(logits.dtype), logits)


def _freeze_copy(fallback: nn.Linear | None, base: nn.Linear) -> None:
    if fallback is not None:
        fallback.load_state_dict(base.state_dict())
        fallback.requires_grad_(False)


def _range_mask(ranges: list[list[int]], size: int) -> Tensor:
    mask = torch.zeros(len(ranges), size, dtype=torch.bool)
    for k, indices in enumerate(ranges):
        mask[k, indices] = True
    return mask


class PrunedLinear(nn.Module):
    """One dependent layer whose outputs are masked and boosted per sample (DynamicPruning)."""

    def __init__(self, in_features: int, ranges: list[list[int]], out_features: int, *, alpha: float, beta: float,
                 fallback: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        #: The layer of samples whose text is silent (Base's, frozen, after :meth:`start_from`).
        self.fallback = nn.Linear(in_features, out_features) if fallback else None
        self.register_buffer("range_mask", _range_mask(ranges, out_features), persistent=False)
        self.alpha = alpha
        self.beta = beta

    def forward(self, h: Tensor, routes: Tensor, hint: Tensor | None, silent: Tensor) -> Tensor:
        allowed = (routes.to(h.dtype) @ self.range_mask.to(h.dtype)) > 0
        boost = self.beta * allowed.to(h.dtype)
        if hint is not None:
            boost = boost + self.alpha * hint * allowed
        raw = _with_fallback(self.linear(h), self.fallback, h, silent)
        logits = raw + boost * h.sum(dim=1, keepdim=True).detach()
        return deactivate(logits, allowed, None if self.training else raw)

    @torch.no_grad()
    def start_from(self, base: nn.Linear) -> None:
        """Begin as Base's dependent layer."""
        self.linear.load_state_dict(base.state_dict())


class RoutedLinear(nn.Module):
    """One layer per category sized to its range, stored padded as ``[K, R, in]`` (DynamicLayers).

    Every category's layer is evaluated at once as one ``linear`` over the ``K * R`` slots; slots of
    layers a sample is not routed to are deactivated, so no gradient reaches them. Each output then
    gathers its slots (one per category whose range holds it) and keeps their max, which merges
    overlapping ranges when a sample is routed to several categories. The gather index is built once:
    a gather + max is cheaper than a ``scatter_reduce`` and allocates nothing per call but the outputs.

    With ``shared=True`` category k's layer is ``shared[range_k] + (weight[k], bias[k])``: the shared rows
    learn from every sample whose route holds an output, the per-category part (starting at zero) from
    that category's samples only. ``shared=False`` is the paper's literal, fully separate layers.
    """

    def __init__(self, in_features: int, ranges: list[list[int]], out_features: int, *, alpha: float, beta: float,
                 shared: bool = True, fallback: bool = False) -> None:
        super().__init__()
        #: The layer of samples whose text is silent (Base's, frozen, after :meth:`start_from`).
        self.fallback = nn.Linear(in_features, out_features) if fallback else None
        width = max(len(r) for r in ranges)
        slots_of: list[list[int]] = [[] for _ in range(out_features)]
        for k, indices in enumerate(ranges):
            for r, output in enumerate(indices):
                slots_of[output].append(k * width + r)
        # Missing slots point at a spare, always-deactivated column appended after the ``K * R`` slots.
        spare = len(ranges) * width
        gather = torch.full((out_features, max(map(len, slots_of))), spare, dtype=torch.long)
        for output, slots in enumerate(slots_of):
            gather[output, : len(slots)] = torch.tensor(slots, dtype=torch.long)
        self.register_buffer("gather", gather, persistent=False)
        self.register_buffer("slot_category", torch.arange(len(ranges)).repeat_interleave(width), persistent=False)
        self.register_buffer("range_mask", _range_mask(ranges, out_features), persistent=False)
        self.weight = nn.Parameter(torch.empty(len(ranges), width, in_features))
        self.bias = nn.Parameter(torch.empty(len(ranges), width))
        self.shared = nn.Linear(in_features, out_features) if shared else None
        if shared:
            nn.init.zeros_(self.weight)
            nn.init.zeros_(self.bias)
        else:  # each category's layer starts like its own nn.Linear
            bound = 1 / math.sqrt(in_features)
            nn.init.uniform_(self.weight, -bound, bound)
            nn.init.uniform_(self.bias, -bound, bound)
        self.alpha = alpha
        self.beta = beta

    def forward(self, h: Tensor, routes: Tensor, hint: Tensor | None, silent: Tensor) -> Tensor:
        slots = nn.functional.linear(h, self.weight.flatten(0, 1), self.bias.flatten())
        # index_select, not advanced indexing: the latter is several times slower on CPU.
        logits = self._merge(slots.masked_fill(~routes.index_select(1, self.slot_category), DEACTIVATED))
        shared = self.shared(h) if self.shared is not None else 0
        # Shared rows and boosts depend only on the output, so they are added after the merge
        # (max(a + c) = max(a) + c).
        allowed = (routes.to(h.dtype) @ self.range_mask.to(h.dtype)) > 0
        boost = self.beta if hint is None else self.beta + self.alpha * hint
        logits = _with_fallback(logits + shared, self.fallback, h, silent)
        logits = logits + boost * h.sum(dim=1, keepdim=True).detach()
        # The unrouted score of an output (every category's layer) orders the closed ones at inference.
        raw = None if self.training else _with_fallback(self._merge(slots) + shared, self.fallback, h, silent)
        return deactivate(logits, allowed, raw)

    def _merge(self, slots: Tensor) -> Tensor:
        """Per output, the max over its slots (the spare column never wins)."""
        slots = nn.functional.pad(slots, (0, 1), value=-math.inf)
        return slots.index_select(1, self.gather.flatten()).view(len(slots), *self.gather.shape).amax(dim=2)

    @torch.no_grad()
    def start_from(self, base: nn.Linear) -> None:
        """Begin as Base's dependent layer: the shared rows are Base's; without them, each category's layer
        starts as Base's rows of its range."""
        self.weight.zero_()
        self.bias.zero_()
        if self.shared is not None:
            self.shared.load_state_dict(base.state_dict())
            return
        width, spare = self.weight.shape[1], self.weight.shape[0] * self.weight.shape[1]
        for output, slots in enumerate(self.gather.tolist()):
            for slot in (s for s in slots if s != spare):
                self.weight[slot // width, slot % width] = base.weight[output]
                self.bias[slot // width, slot % width] = base.bias[output]


class _Plain(nn.Module):
    """A linear level that ignores routes and hints (Base, fusion)."""

    def __init__(self, in_features: int, ranges: list[list[int]], out_features: int, *, alpha: float, beta: float,
                 fallback: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, h: Tensor, routes: Tensor, hint: Tensor | None, silent: Tensor) -> Tensor:
        return self.linear(h)


class _Head(nn.Module):
    """Trunk (two FC layers) + category layer + one module per dependent level."""

    level_type: type[nn.Module] | partial = _Plain
    #: Whether the hint vectors are concatenated to the output layers' input (late fusion).
    fuses_hints = False

    def __init__(
        self,
        in_features: int,
        *,
        ranges: tuple[list[list[int]], list[list[int]]],
        sizes: tuple[int, int, int],
        multi: bool,
        hidden: int = 256,
        dropout: float = 0.2,
        alpha: float = 0.1,
        beta: float = 0.01,
        route_threshold: float = ROUTE_THRESHOLD,
        silent_fallback: bool = False,
    ) -> None:
        super().__init__()
        num_categories, num_subcategories, num_attributes = sizes
        self.multi = multi
        self.route_threshold = route_threshold
        self.trunk = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
        )
        if self.fuses_hints:
            hidden += sum(sizes)
        self.categories = nn.Linear(hidden, num_categories)
        parent = torch.zeros(num_subcategories, dtype=torch.long)
        for k, indices in enumerate(ranges[0]):
            parent[indices] = k
        #: Category index of every sub-category (for coherent single-class labels).
        self.register_buffer("subcategory_parent", parent, persistent=False)
        level = partial(self.level_type, alpha=alpha, beta=beta, fallback=silent_fallback)
        self.subcategories = level(hidden, ranges[0], num_subcategories)
        self.attributes = level(hidden, ranges[1], num_attributes)

    def forward(self, features: Tensor, hint_categories: Tensor, hint_attributes: Tensor | None = None,
                hint_subcategories: Tensor | None = None) -> ModelOutput:
        h = self.trunk(features)
        if self.fuses_hints:
            def zeros(layer: nn.Module) -> Tensor:
                return h.new_zeros(len(h), layer.linear.out_features)

            h = torch.cat([h, hint_categories,
                           zeros(self.subcategories) if hint_subcategories is None else hint_subcategories,
                           zeros(self.attributes) if hint_attributes is None else hint_attributes], dim=1)
        categories = self.categories(h)
        routes = route_categories(hint_categories, categories.detach(), multi=self.multi, threshold=self.route_threshold)
        silent = ~(hint_categories > 0).any(1)
        for hint in (hint_subcategories, hint_attributes):
            if hint is not None:
                silent &= ~(hint > 0).any(1)
        return ModelOutput(
            categories,
            self.subcategories(h, routes, hint_subcategories, silent),
            self.attributes(h, routes, hint_attributes, silent),
            routes,
        )

    @torch.no_grad()
    def start_from(self, base: _Head) -> None:
        """Continue a trained Base: :meth:`keep_base`, and the dependent layers seeded from Base's.
        Training then learns only what the hints add."""
        self.keep_base(base)
        self.subcategories.start_from(base.subcategories.linear)
        self.attributes.start_from(base.attributes.linear)

    @torch.no_grad()
    def keep_base(self, base: _Head) -> None:
        """Take a trained Base's trunk and category layer (the category level stays Base's) and its dependent
        layers as the silent-text fallbacks, all frozen; the dynamic layers are left as they are.

        A checkpoint does not keep ``requires_grad``, so a warm start calls this again (with the Base it
        retrained) before the dynamic layers continue: without it a retrain would train the kept Base too.
        """
        self.trunk.load_state_dict(base.trunk.state_dict())
        self.categories.load_state_dict(base.categories.state_dict())
        for module in (self.trunk, self.categories):
            module.requires_grad_(False)
        _freeze_copy(getattr(self.subcategories, "fallback", None), base.subcategories.linear)
        _freeze_copy(getattr(self.attributes, "fallback", None), base.attributes.linear)

    def kept_base(self) -> dict[str, Tensor]:
        """The state dict of the Base this head keeps (trunk, category layer, silent-text fallbacks), for a
        :class:`BaseHead` of the same sizes.

        Raises:
            ValueError: the head keeps no fallbacks (not dynamic, or built without ``silent_fallback``).
        """
        fallbacks = {name: getattr(getattr(self, name), "fallback", None) for name in ("subcategories", "attributes")}
        if any(f is None for f in fallbacks.values()):
            raise ValueError(f"{type(self).__name__} keeps no Base (no silent-text fallbacks)")
        state = {f"trunk.{k}": v for k, v in self.trunk.state_dict().items()}
        state.update({f"categories.{k}": v for k, v in self.categories.state_dict().items()})
        for name, fallback in fallbacks.items():
            state.update({f"{name}.linear.{k}": v for k, v in fallback.state_dict().items()})
        return state


class BaseHead(_Head):
    """The paper's Base model: backbone → 2 FC → category / sub-category / attribute layers."""


class FusionHead(_Head):
    """Late-fusion baseline: Base whose output layers also read the hint vectors (categories, sub-categories, attributes)."""

    fuses_hints = True

    @torch.no_grad()
    def add_hint_weight(self, weight: float, level: str = "categories") -> None:
        """Add ``weight`` x each hint of ``level`` (``categories`` or ``subcategories``) to its own term's logit,
        folded into that level's layer."""
        # forward: [trunk out, category hints, sub-category hints, attribute hints]
        start, k = self.trunk[-2].out_features, self.categories.out_features
        levels = {"categories": (self.categories, start), "subcategories": (self.subcategories.linear, start + k)}
        if level not in levels:
            raise ValueError(f"hint weights fold into {sorted(levels)}, not {level!r}")
        layer, start = levels[level]
        layer.weight[:, start:start + layer.out_features] += weight * torch.eye(layer.out_features, device=layer.weight.device)


class DynamicPruningHead(_Head):
    """Algorithm 1, batched: per-sample masks and boosts over one dependent layer per level."""

    level_type = PrunedLinear


class DynamicLayersHead(_Head):
    """Algorithm 2, batched: per-category dependent layers (plus shared rows), scattered into the unified tensor."""

    level_type = RoutedLinear


class DynamicLayersPureHead(_Head):
    """Algorithm 2 as the paper states it: fully separate per-category layers, no shared rows."""

    level_type = partial(RoutedLinear, shared=False)


HEADS: dict[str, type[_Head]] = {
    "base": BaseHead,
    "fusion": FusionHead,
    "dynamic_pruning": DynamicPruningHead,
    "dynamic_layers": DynamicLayersHead,
    "dynamic_layers_pure": DynamicLayersPureHead,
}
#: Heads whose dependent levels read the hints through routes and boosts.
DYNAMIC_HEADS = ("dynamic_pruning", "dynamic_layers", "dynamic_layers_pure")
