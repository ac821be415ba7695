"""The trainer's real-photo check: a candidate must be as right as the model it replaces on real photos.

A candidate can pass the benchmark's gate and still be at chance on photos (a model that only ever saw drawn
garments is), and one that learnt from a few corrections can forget what it knew. So the candidate and the
model it would replace (the serving one, or the packaged default when nothing serves yet) are both scored
by category mAP on the committed fixture's real photos, which no model was trained on, and on the operator's
own held-out photos when a manifest of them is configured (``STYLESTREAM_TRAINER_GATE_DATA``: street photos
of their own customers, say, which the fixture of single garments does not show).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from serving.images import decode_scaled
from serving.models import DynamicCNN
from serving.ontology import Ontology
from training.metrics import mean_average_precision
from training.real.data import targets
from training.real.fixture import fixture_records
from training.real.images import MAX_PIXELS, load_records
from training.real.manifest import ManifestError, read_manifest

log = logging.getLogger(__name__)

#: The fixture's photos are decoded once at this side; each model's own preprocessing resizes from it.
_SIDE = 320


@lru_cache(maxsize=1)
def fixture_photos(ontology: Ontology) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``[N, 3, 320, 320]`` fixture photos and their multi-hot categories."""
    records = fixture_records(ontology)
    images = np.stack([decode_scaled(Path(r.image).read_bytes(), _SIDE, max_pixels=MAX_PIXELS) for r in records])
    return torch.from_numpy(images), torch.from_numpy(targets(records, ontology)[0])


@lru_cache(maxsize=2)
def manifest_photos(path: Path, ontology: Ontology) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``[N, 3, 320, 320]`` photos of a manifest (every split: the operator holds them out) and their
    multi-hot categories; a photo that does not load is left out and logged.

    Raises:
        ManifestError: the manifest cannot be read or holds no photo.
    """
    records = read_manifest(path, ontology)
    images, errors = load_records(records, _SIDE, desc="gate photos")
    for error in filter(None, errors):
        log.warning("gate photo left out: %s", error)
    keep = [i for i, e in enumerate(errors) if not e]
    if not keep:
        raise ManifestError(f"{path}: no gate photo could be loaded")
    kept = [records[i] for i in keep]
    return torch.from_numpy(images[keep]), torch.from_numpy(targets(kept, ontology)[0])


@torch.inference_mode()
def real_photo_map(model: DynamicCNN, ontology: Ontology, *, photos: tuple[torch.Tensor, torch.Tensor] | None = None,
                   batch_size: int = 32) -> float:
    """Category mAP of ``model`` on real photos, text silent: ``photos`` (images, multi-hot categories), by default
    the fixture's."""
    images, truth = photos if photos is not None else fixture_photos(ontology)
    model.eval()
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(images), batch_size):
        out = model(model.preprocess(images[start: start + batch_size].to(device))).categories.float()
        scores.append((torch.sigmoid(out) if model.config.multi else torch.softmax(out, 1)).cpu())
    return mean_average_precision(torch.cat(scores), truth)
