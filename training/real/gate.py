"""The trainer's real-photo check: a candidate must be as right as the model it replaces on real photos.

The benchmark the trainer learns from is synthetic; a candidate can pass the benchmark's gate and still be
at chance on photos (a model that only ever saw drawn garments is). So the candidate and the model it would
replace (the serving one, or the packaged default when nothing serves yet) are both scored on the
committed fixture's real photos, which no model was trained on, by category mAP.
"""

from __future__ import annotations

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
from training.real.images import MAX_PIXELS

#: The fixture's photos are decoded once at this side; each model's own preprocessing resizes from it.
_SIDE = 320


@lru_cache(maxsize=1)
def fixture_photos(ontology: Ontology) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``[N, 3, 320, 320]`` fixture photos and their multi-hot categories."""
    records = fixture_records(ontology)
    images = np.stack([decode_scaled(Path(r.image).read_bytes(), _SIDE, max_pixels=MAX_PIXELS) for r in records])
    return torch.from_numpy(images), torch.from_numpy(targets(records, ontology)[0])


@torch.inference_mode()
def real_photo_map(model: DynamicCNN, ontology: Ontology, *, batch_size: int = 32) -> float:
    """Category mAP of ``model`` on the fixture's real photos, text silent."""
    images, truth = fixture_photos(ontology)
    model.eval()
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(images), batch_size):
        out = model(model.preprocess(images[start: start + batch_size].to(device))).categories.float()
        scores.append((torch.sigmoid(out) if model.config.multi else torch.softmax(out, 1)).cpu())
    return mean_average_precision(torch.cat(scores), truth)
