"""Classification heads: Base, DynamicPruning (Algorithm 1) and DynamicLayers (Algorithm 2).

All heads share a trunk (two FC layers) and a category layer. They differ in the *dependent* levels
(sub-categories and attributes):

* :class:`BaseHead` — plain linear layers; hints are ignored.
* :class:`DynamicPruningHead` — one linear layer per level; per sample, outputs outside the range of the
  routed categories are deactivated, the allowed range is boosted by ``beta`` and directly hinted
  attributes by ``alpha``. Masks are per sample, so a batch mixes hints; learned weights are never
  modified (the authors' code overwrote ``weight.data`` in ``forward`` and so never learned).
* :class:`DynamicLayersHead` — one small layer per category, sized to its range (shared rows plus a
  per-category part); each sample uses only its routed categories' layers, merged into the unified
  tensor for the loss, with the same boosts as DynamicPruning.

"Boosting a connection by v" follows the paper literally: v is added to every incoming weight of that
output, i.e. ``v * sum(h)`` is added to its logit, computed without materialising per-sample weights.
``sum(h)`` is detached there: the boost is a prior from the text, and letting the trunk learn through
it teaches the trunk to scale its activations to the (noisy) hints, which hurts every other output.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

#: Logit of a deactivated output: sigmoid ~ 1e-13 and finite, so BCE/CE stay finite and pass no gradient.
DEACTIVATED = -30.0


class ModelOutput(NamedTuple):
    """Logits per level plus the category route each sample used (``[B, K]`` bool)."""

    categories: Tensor
    subcategories: Tensor
    attributes: Tensor
    routes: Tensor


def route_categories(hint_categories: Tensor, category_logits: Tensor, *, multi: bool, threshold: float = 0.05) -> Tensor:
    """Per sample, the categories whose dependent ranges are opened (``[B, K]`` bool).

    With hints: single-class, the top hinted category; multi-class, the hinted categories scoring at
    least half the top hint (the miner always ranks four, the tail is mostly noise). Without (silent
    text), the model's own prediction: its top category plus every category with probability at least
    ``threshold`` (softmax for single-class, sigmoid for multi-class). The bar is low on purpose:
    opening a wrong range costs a few candidates, closing a right one loses its labels outright.
    """
    top_hint = hint_categories.max(dim=1, keepdim=True).values
    hinted = (hint_categories > 0) & (hint_categories >= 0.5 * top_hint)
    has_hint = hinted.any(dim=1, keepdim=True)
    predicted_top = nn.functional.one_hot(category_logits.argmax(1), category_logits.shape[1]).bool()
    if multi:
        from_hints = hinted
        probabilities = torch.sigmoid(category_logits)
    else:
        from_hints = nn.functional.one_hot(hint_categories.argmax(1), hint_categories.shape[1]).bool()
        probabilities = torch.softmax(category_logits, dim=1)
    return torch.where(has_hint, from_hints, predicted_top | (probabilities >= threshold))


def _range_mask(ranges: list[list[int]], size: int) -> Tensor:
    mask = torch.zeros(len(ranges), size, dtype=torch.bool)
    for k, indices in enumerate(ranges):
        mask[k, indices] = True
    return mask


class PrunedLinear(nn.Module):
    """One dependent layer whose outputs are masked and boosted per sample (DynamicPruning)."""

    def __init__(self, in_features: int, ranges: list[list[int]], out_features: int, *, alpha: float, beta: float) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.register_buffer("range_mask", _range_mask(ranges, out_features), persistent=False)
        self.alpha = alpha
        self.beta = beta

    def forward(self, h: Tensor, routes: Tensor, hint: Tensor | None) -> Tensor:
        allowed = (routes.to(h.dtype) @ self.range_mask.to(h.dtype)) > 0
        boost = self.beta * allowed.to(h.dtype)
        if hint is not None:
            boost = boost + self.alpha * hint * allowed
        logits = self.linear(h) + boost * h.sum(dim=1, keepdim=True).detach()
        return logits.masked_fill(~allowed, DEACTIVATED)


class RoutedLinear(nn.Module):
    """One layer per category sized to its range, stored padded as ``[K, R, in]`` (DynamicLayers).

    Every category's layer is evaluated at once as one ``linear`` over the ``K * R`` slots; slots of
    layers a sample is not routed to are deactivated, so no gradient reaches them. Each output then
    gathers its slots (one per category whose range holds it) and keeps their max, which merges
    overlapping ranges when a sample is routed to several categories. The gather index is built once:
    a gather + max is cheaper than a ``scatter_reduce`` and allocates nothing per call but the outputs.
    """

    def __init__(self, in_features: int, ranges: list[list[int]], out_features: int, *, alpha: float, beta: float) -> None:
        super().__init__()
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
        # Category k's layer is ``shared[range_k] + (weight[k], bias[k])``: the shared rows learn from
        # every sample whose route holds an output, the per-category part (starting at zero) from that
        # category's samples only. Fully separate layers each see ~1/K of the data and stay undertrained.
        self.shared = nn.Linear(in_features, out_features)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)
        self.alpha = alpha
        self.beta = beta

    def forward(self, h: Tensor, routes: Tensor, hint: Tensor | None) -> Tensor:
        slots = nn.functional.linear(h, self.weight.flatten(0, 1), self.bias.flatten())
        # index_select, not advanced indexing: the latter is several times slower on CPU.
        slots = slots.masked_fill(~routes.index_select(1, self.slot_category), DEACTIVATED)
        slots = nn.functional.pad(slots, (0, 1), value=DEACTIVATED)
        logits = slots.index_select(1, self.gather.flatten()).view(len(h), *self.gather.shape).amax(dim=2)
        logits = logits + self.shared(h)
        # Shared rows and boosts depend only on the output, so they are added after the merge
        # (max(a + c) = max(a) + c).
        allowed = (routes.to(h.dtype) @ self.range_mask.to(h.dtype)) > 0
        boost = self.beta if hint is None else self.beta + self.alpha * hint
        logits = logits + boost * h.sum(dim=1, keepdim=True).detach()
        return logits.masked_fill(~allowed, DEACTIVATED)


class _Head(nn.Module):
    """Trunk (two FC layers) + category layer + one module per dependent level."""

    level_type: type[nn.Module] | None = None

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
    ) -> None:
        super().__init__()
        num_categories, num_subcategories, num_attributes = sizes
        self.multi = multi
        self.trunk = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
        )
        self.categories = nn.Linear(hidden, num_categories)
        self.subcategories = self.level_type(hidden, ranges[0], num_subcategories, alpha=alpha, beta=beta)
        self.attributes = self.level_type(hidden, ranges[1], num_attributes, alpha=alpha, beta=beta)

    def forward(self, features: Tensor, hint_categories: Tensor, hint_attributes: Tensor | None = None) -> ModelOutput:
        h = self.trunk(features)
        categories = self.categories(h)
        routes = route_categories(hint_categories, categories.detach(), multi=self.multi)
        return ModelOutput(
            categories,
            self.subcategories(h, routes, None),
            self.attributes(h, routes, hint_attributes),
            routes,
        )


class _Plain(nn.Module):
    """A linear level that ignores routes and hints (Base)."""

    def __init__(self, in_features: int, ranges: list[list[int]], out_features: int, *, alpha: float, beta: float) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, h: Tensor, routes: Tensor, hint: Tensor | None) -> Tensor:
        return self.linear(h)


class BaseHead(_Head):
    """The paper's Base model: backbone → 2 FC → category / sub-category / attribute layers."""

    level_type = _Plain


class DynamicPruningHead(_Head):
    """Algorithm 1, batched: per-sample masks and boosts over one dependent layer per level."""

    level_type = PrunedLinear


class DynamicLayersHead(_Head):
    """Algorithm 2, batched: per-category dependent layers, scattered into the unified tensor."""

    level_type = RoutedLinear


HEADS: dict[str, type[_Head]] = {
    "base": BaseHead,
    "dynamic_pruning": DynamicPruningHead,
    "dynamic_layers": DynamicLayersHead,
}
