"""Dynamic CNN models: backbones, heads (Base, DynamicPruning, DynamicLayers) and the builder."""

from serving.models.backbones import BACKBONES, Preprocess
from serving.models.build import (
    DynamicCNN,
    ModelConfig,
    build_head,
    build_model,
    hint_tensors,
)
from serving.models.heads import HEADS, ModelOutput, route_categories

__all__ = [
    "BACKBONES",
    "HEADS",
    "DynamicCNN",
    "ModelConfig",
    "ModelOutput",
    "Preprocess",
    "build_head",
    "build_model",
    "hint_tensors",
    "route_categories",
]
