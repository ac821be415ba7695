"""The trainer's real-photo check: a candidate must be as right as the model it replaces on real photos.

A candidate can pass the benchmark's gate and still be at chance on photos (a model that only ever saw drawn
garments is), and one that learnt from a few corrections can forget what it knew. So the candidate and the
model it would replace (the serving one, or the packaged default when nothing serves yet) are both scored
by category mAP on the committed fixture's real photos, which no model was trained on, and on the operator's
own held-out photos when a manifest of them is configured (``STYLESTREAM_TRAINER_GATE_DATA``: street photos
of their own customers, say, which the fixture of single garments does not show). The same scores of a
reference that does not move (the version last promoted by hand, else the packaged default) gate the candidate too (:mod:`training.gate_run`).

mAP ranks each category's photos and so cannot see a head that moved every category's logits together: a
candidate that labels noise with a garment, or refuses real garments, keeps its mAP. So a model that
abstains is also held to the model it replaces on how many of the fixture's garment photos it answers and
how many drawn no-garment images (flat colours, noise, gradients, blurred noise; another seed than
training's) it refuses, and on its category probabilities' calibration error on the fixture's photos: a head
that squashed every probability towards one half (a higher temperature) keeps its ranking and its answers,
and then lists categories the photo does not show (:func:`real_photo_checks`).
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
from training.gating import SERVING, GateCheck, Rule, compare
from training.metrics import mean_average_precision
from training.real.data import targets
from training.real.fixture import fixture_records
from training.real.images import MAX_PIXELS, load_records, no_garment_images
from training.real.manifest import ManifestError, read_manifest
from training.real.scores import calibration_error

log = logging.getLogger(__name__)

#: The fixture's photos are decoded once at this side; each model's own preprocessing resizes from it.
_SIDE = 320
#: Drawn no-garment images a candidate must refuse as often as the model it replaces, and their seed.
NO_GARMENT_IMAGES, _NO_GARMENT_SEED = 80, 20261204
#: How much the shares of garment photos answered and no-garment images refused may fall, at least: one
#: image of the 80 drawn is 0.0125, so a tighter ``gate_margin`` would refuse a candidate for one image.
ABSTAIN_MARGIN = 0.03
#: How much the calibration error on the fixture's photos may grow, at least (the packaged model's is ~0.01).
CALIBRATION_MARGIN = 0.02


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
def category_scores(model: DynamicCNN, images: torch.Tensor, *, batch_size: int = 32) -> torch.Tensor:
    """``model``'s category probabilities ``[N, K]`` for uint8 images, text silent."""
    model.eval()
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(images), batch_size):
        out = model(model.preprocess(images[start: start + batch_size].to(device))).categories.float()
        scores.append((torch.sigmoid(out) if model.config.multi else torch.softmax(out, 1)).cpu())
    return torch.cat(scores)


def real_photo_map(model: DynamicCNN, ontology: Ontology, *, photos: tuple[torch.Tensor, torch.Tensor] | None = None,
                   batch_size: int = 32) -> float:
    """Category mAP of ``model`` on real photos, text silent: ``photos`` (images, multi-hot categories), by default
    the fixture's."""
    images, truth = photos if photos is not None else fixture_photos(ontology)
    return mean_average_precision(category_scores(model, images, batch_size=batch_size), truth)


@lru_cache(maxsize=1)
def no_garment_photos() -> torch.Tensor:
    """uint8 ``[N, 3, 320, 320]`` drawn images that show no garment."""
    return torch.from_numpy(no_garment_images(NO_GARMENT_IMAGES, _SIDE, seed=_NO_GARMENT_SEED))


def answered_share(scores: torch.Tensor, bar: float) -> float:
    """The share of photos whose top category probability (``scores``: ``[N, K]``) reaches the abstain ``bar``."""
    return float((scores.max(1).values >= bar).float().mean())


#: The real-photo scores and how each is gated. The shares of garment photos answered and no-garment images
#: refused move one image at a time, so their margin is never under :data:`ABSTAIN_MARGIN`.
REAL_RULES = {"real_category_map": Rule(), "real_garment_answered": Rule(min_margin=ABSTAIN_MARGIN),
              "no_garment_refused": Rule(min_margin=ABSTAIN_MARGIN),
              "real_calibration_error": Rule(higher_is_better=False, min_margin=CALIBRATION_MARGIN),
              "gate_data_category_map": Rule()}
#: What a model that never abstains answers and refuses, without evaluating it.
_NEVER_ABSTAINS = {"real_garment_answered": 1.0, "no_garment_refused": 0.0}


def real_photo_scores(model: DynamicCNN, ontology: Ontology, *,
                      photos: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
    """``model``'s scores on the fixture's real photos, text silent: category mAP and calibration error; when it
    abstains, the share of garment photos answered and of drawn no-garment images refused; and category mAP on
    the operator's ``photos`` (``gate_data_category_map``) when given."""
    images, truth = fixture_photos(ontology)
    probs = category_scores(model, images)
    scores = {"real_category_map": mean_average_precision(probs, truth),
              "real_calibration_error": calibration_error(probs.numpy(), truth.numpy())}
    bar = model.config.abstain_below
    if bar > 0:
        scores["real_garment_answered"] = answered_share(probs[truth.any(1)], bar)
        scores["no_garment_refused"] = 1 - answered_share(category_scores(model, no_garment_photos()), bar)
    if photos is not None:
        scores["gate_data_category_map"] = real_photo_map(model, ontology, photos=photos)
    return scores


def compare_real(candidate: dict[str, float], baseline: dict[str, float], *, margin: float,
                 against: str = SERVING) -> tuple[GateCheck, ...]:
    """Checks of :func:`real_photo_scores` results. The shares answered and refused and the calibration error
    only when either model abstains: a model that never does keeps every probability it had, and no bar."""
    abstains = any("no_garment_refused" in s for s in (candidate, baseline))
    if abstains:
        candidate, baseline = ({**_NEVER_ABSTAINS, **s} for s in (candidate, baseline))
    rules = REAL_RULES if abstains else {k: r for k, r in REAL_RULES.items() if k != "real_calibration_error"}
    return compare(candidate, baseline, rules, margin=margin, against=against)


def real_photo_checks(candidate: DynamicCNN, reference: DynamicCNN, ontology: Ontology, *,
                      margin: float) -> tuple[GateCheck, ...]:
    """The candidate against ``reference`` on the fixture's real photos: category mAP within ``margin``; and,
    when either model abstains (a calibrated real-photo model does), the share of garment photos answered and
    of drawn no-garment images refused (``abstain: "no_garment"``), each within ``margin`` or
    :data:`ABSTAIN_MARGIN`, and the category calibration error, within ``margin`` or :data:`CALIBRATION_MARGIN`,
    whichever is wider."""
    return compare_real(*(real_photo_scores(m, ontology) for m in (candidate, reference)), margin=margin)
