"""A checkpoint directory: ``model.safetensors`` + ``config.json`` + ``metrics.json``.

Weights are stored as safetensors, so loading never unpickles anything.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from serving.models import DynamicCNN, ModelConfig, build_model
from serving.ontology import Ontology, load_ontology

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"


def save_checkpoint(model: DynamicCNN, directory: Path | str, *, config: dict, metrics: dict) -> Path:
    """Write ``model`` into ``directory`` (created if needed).

    Args:
        config: training settings to keep alongside the model's own config (epochs, lr, data, ...).
        metrics: evaluation numbers of this checkpoint.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    payload = {"model": model.config.to_dict(), "training": config}
    (directory / CONFIG_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True), encoding="utf-8")
    (directory / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True), encoding="utf-8")
    return directory


def load_config(directory: Path | str) -> ModelConfig:
    """The model config stored in a checkpoint directory."""
    data = json.loads((Path(directory) / CONFIG_FILE).read_text(encoding="utf-8"))
    return ModelConfig.from_dict(data["model"])


def load_checkpoint(directory: Path | str, *, device: str | torch.device = "cpu", ontology: Ontology | None = None) -> DynamicCNN:
    """Rebuild the model saved in ``directory`` in eval mode on ``device``.

    Raises:
        ValueError: the checkpoint was trained on another ontology version than ``ontology``.
    """
    config = load_config(directory)
    ontology = ontology or load_ontology()
    if ontology.version != config.ontology_version:
        raise ValueError(f"checkpoint ontology {config.ontology_version!r} != loaded ontology {ontology.version!r}")
    model = build_model(
        backbone=config.backbone,
        head=config.head,
        ontology=ontology,
        multi=config.multi,
        weights="random",  # the checkpoint holds every weight; skip loading pretrained ones first
        alpha=config.alpha,
        beta=config.beta,
        hidden=config.hidden,
        image_size=config.preprocess.image_size,
        route_threshold=config.route_threshold,
        silent_fallback=config.silent_fallback,
    )
    model.load_state_dict(load_file(str(Path(directory) / WEIGHTS_FILE)))
    # Serving settings chosen after training (the label floor, the abstain bar) live only in the config.
    model.config = dataclasses.replace(model.config, abstain_below=config.abstain_below, label_floor=config.label_floor)
    return model.to(device).eval()
