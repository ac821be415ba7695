"""The assembled model (:class:`DynamicCNN`), its builder and the hints → tensors bridge."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from serving.models.backbones import BACKBONES, Backbone, Preprocess
from serving.models.heads import DYNAMIC_HEADS, HEADS, ROUTE_THRESHOLD, ModelOutput
from serving.ontology import Ontology
from streamcore.schemas import Hints


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model: stored as ``config.json`` in a checkpoint."""

    backbone: str
    head: str
    multi: bool
    alpha: float
    beta: float
    hidden: int
    ontology_version: str
    preprocess: Preprocess
    #: Image-confidence bar for opening a category's range (chosen on validation; older checkpoints: default).
    route_threshold: float = ROUTE_THRESHOLD
    #: Dynamic heads: silent-text samples use a frozen copy of Base's dependent layers (older checkpoints: no).
    silent_fallback: bool = False
    #: Multi-label models: a photo whose top category probability is below this shows no garment and the
    #: label abstains (chosen on validation with no-garment negatives; 0 = never abstain).
    abstain_below: float = 0.0
    #: Multi-label models: a label lists every category (and sub-category, attribute) at or above this
    #: probability, ranked (0 = the top five of each level, as single-class models do).
    label_floor: float = 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "preprocess": self.preprocess.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        fields = {k: data[k] for k in ("backbone", "head", "multi", "alpha", "beta", "hidden", "ontology_version")}
        return cls(**fields, preprocess=Preprocess.from_dict(data["preprocess"]),
                   route_threshold=data.get("route_threshold", ROUTE_THRESHOLD),
                   silent_fallback=data.get("silent_fallback", False),
                   abstain_below=data.get("abstain_below", 0.0), label_floor=data.get("label_floor", 0.0))


class DynamicCNN(nn.Module):
    """Backbone + head. ``forward`` takes normalised images; :meth:`classify` takes backbone features."""

    def __init__(self, backbone: Backbone, head: nn.Module, config: ModelConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = config

    @property
    def preprocess(self) -> Preprocess:
        """Resize/normalise transform the serving side applies to raw images before ``forward``."""
        return self.config.preprocess

    def forward(self, images: Tensor, hint_categories: Tensor | None = None, hint_attributes: Tensor | None = None,
                hint_subcategories: Tensor | None = None) -> ModelOutput:
        return self.classify(self.backbone(images), hint_categories, hint_attributes, hint_subcategories)

    def classify(self, features: Tensor, hint_categories: Tensor | None = None, hint_attributes: Tensor | None = None,
                 hint_subcategories: Tensor | None = None) -> ModelOutput:
        """Run the head on pooled backbone features (the cached-feature fast path uses this)."""
        if hint_categories is None:
            hint_categories = features.new_zeros(features.shape[0], self.head.categories.out_features)
        return self.head(features, hint_categories, hint_attributes, hint_subcategories)


def build_model(
    *,
    backbone: str,
    head: str,
    ontology: Ontology,
    multi: bool = False,
    weights: Path | str | None = None,
    alpha: float = 0.1,
    beta: float = 0.01,
    hidden: int = 256,
    dropout: float = 0.2,
    image_size: int | None = None,
    route_threshold: float = ROUTE_THRESHOLD,
    silent_fallback: bool = True,
) -> DynamicCNN:
    """Build a model for ``ontology``.

    Args:
        backbone: one of ``tiny``, ``efficientnet_lite0``, ``efficientnet_lite2``, ``resnet18``, ``resnet50``, ``vgg16``.
        head: one of ``base``, ``dynamic_pruning``, ``dynamic_layers``.
        multi: multi-class outfits (multi-label categories) instead of one item per image.
        weights: backbone weights: ``None`` = the backbone's default (ImageNet for
            the EfficientNet-Lite trunks, random for the rest), ``"random"``, or a state-dict file.
        alpha: boost of directly hinted sub-categories/attributes; beta: boost of the routed categories' range.
        route_threshold: image probability at which a category's range opens besides the hinted ones.
        silent_fallback: dynamic heads only: samples whose text is silent use a frozen copy of Base's
            dependent layers (set by ``start_from``) instead of the dynamic ones.
        image_size: override the backbone's default input size.

    Raises:
        ValueError: unknown backbone/head, negative alpha/beta, bad sizes.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose from {sorted(BACKBONES)}")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose from {sorted(HEADS)}")
    if not (alpha >= 0 and beta >= 0):
        raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
    if not 0 < route_threshold <= 1:
        raise ValueError(f"route_threshold must be in (0, 1], got {route_threshold}")
    if hidden < 1:
        raise ValueError(f"hidden must be >= 1, got {hidden}")
    silent_fallback = silent_fallback and head in DYNAMIC_HEADS
    factory, preprocess = BACKBONES[backbone]
    if image_size is not None:
        if image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {image_size}")
        preprocess = Preprocess(image_size, preprocess.mean, preprocess.std)
    net = factory() if weights is None else factory(weights=None if weights == "random" else weights)
    config = ModelConfig(backbone, head, multi, alpha, beta, hidden, ontology.version, preprocess, route_threshold,
                         silent_fallback)
    return DynamicCNN(net, build_head(config, net.out_features, ontology, dropout=dropout), config)


def build_head(config: ModelConfig, in_features: int, ontology: Ontology, *, dropout: float = 0.2) -> nn.Module:
    """The head ``config`` names, freshly initialised, for a backbone with ``in_features`` outputs."""
    sizes = (len(ontology.category_names), len(ontology.subcategory_names), len(ontology.attribute_names))
    return HEADS[config.head](
        in_features,
        ranges=(ontology.subcategory_ranges, ontology.attribute_ranges),
        sizes=sizes,
        multi=config.multi,
        hidden=config.hidden,
        dropout=dropout,
        alpha=config.alpha,
        beta=config.beta,
        route_threshold=config.route_threshold,
        silent_fallback=config.silent_fallback,
    )


class HintTensors(NamedTuple):
    """Mined hint scores as model inputs: ``[B, K]``, ``[B, M]``, ``[B, P]``."""

    categories: Tensor
    subcategories: Tensor
    attributes: Tensor


def hint_tensors(hints: Sequence[Hints | None], ontology: Ontology) -> HintTensors:
    """Turn mined ``hints/v1`` into category, sub-category and attribute score tensors.

    ``None`` or empty hints give zero rows (the model then falls back to its own prediction). Terms the
    ontology does not know are skipped: hints only steer the model, so a miner on another ontology
    version must not stop labelling.
    """
    spaces = (
        (ontology.category_ids, lambda h: h.categories),
        (ontology.subcategory_ids, lambda h: h.subcategories),
        (ontology.attribute_ids, lambda h: (*h.materials, *h.patterns)),
    )
    out = []
    for ids, terms_of in spaces:
        scores = torch.zeros(len(hints), len(ids))
        for row, hint in enumerate(hints):
            for term in terms_of(hint) if hint is not None else ():
                if term.term in ids:
                    scores[row, ids[term.term]] = term.score
        out.append(scores)
    return HintTensors(*out)

