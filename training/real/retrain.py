"""The trainer's run on a real-photo model: its head continues on users' corrections, gated on real photos.

A model trained on real photos (one with an abstain bar) is never retrained on the synthetic benchmark: a
candidate that learnt drawn garments would be at chance on photos. Instead:

* **Data.** Every stored correction, its photo as the trainer kept it. One in five (by a hash of the post id,
  so a replayed or revised correction lands on the same side) is held out for the gate.
* **Training.** The trunk stays frozen; the head continues from the head the model serves, on the trunk's
  pooled features, with hints dropped at the rate Table II chose for this model (its checkpoint records it).
  Each step's loss adds a pull back toward the head it started from (L2-SP): corrections move the model where
  they disagree with it without undoing what thousands of photos taught it. Continued on half the validation
  photos without that pull, it lost up to 0.08 street-photo mAP; with it, every score gained a little
  (``reports/trainer_corrections.json``, :mod:`training.real.corrections_probe`).
* **Gate.** Category mAP on the packaged fixture's real photos and on the operator's held-out photos when
  configured, and how often garment photos are answered and no-garment images refused (text silent;
  :mod:`training.real.gate`); on the held-out corrections with their mined hints, as served, category mAP
  and how often the photos corrected as showing no garment are refused, once there are :data:`MIN_HELD_OUT`
  of either (:func:`held_out_scores`; fewer: the gate records the check as skipped and why); each at least
  the replaced model's, and the fixed reference's (:mod:`training.gate_run`), minus the margin.
* **No garment.** A correction naming no category says the photo shows none: every target 0, which teaches
  the head to put that photo below its abstain bar.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from serving.checkpoint import CONFIG_FILE
from serving.models import DynamicCNN
from serving.models.build import HintTensors
from training.feedback import Example, to_split
from training.gating import Rule
from training.real.gate import ABSTAIN_MARGIN, answered_share
from training.train import Batchable, StepHook, compute_loss, drop_hints, evaluate_model, extract_features, predict

#: One correction in this many is held out for the gate.
HOLDOUT_EVERY = 5
#: Corrections decoded at once to compute their features.
_CHUNK = 256
#: Held-out corrections below this count are too few to judge a candidate by; the fixture alone gates.
MIN_HELD_OUT = 10


def is_real_photo_model(model: DynamicCNN) -> bool:
    """Whether ``model`` was trained on real photos (``training.real``): only those set an abstain bar."""
    return model.config.abstain_below > 0


def held_out(example: Example) -> bool:
    """Whether a correction is kept for the gate rather than trained on (the same answer for every correction of
    a post; by photo and caption for a correction stored without its post id)."""
    key = example.post_id.encode() if example.post_id else example.pixels.tobytes() + example.caption.encode()
    digest = hashlib.sha256(key).digest()
    return int.from_bytes(digest[:4], "big") % HOLDOUT_EVERY == 0


def table2_hint_dropout(checkpoint: Path) -> float:
    """The hint-dropout rate Table II chose for the checkpoint's head (0 when it records none)."""
    training = json.loads((Path(checkpoint) / CONFIG_FILE).read_text()).get("training", {})
    chosen = training.get("table2_settings") or training.get("config") or {}
    return float(chosen.get("hint_dropout", 0.0))


@dataclass(frozen=True)
class RetrainConfig:
    """How a real-photo head continues on corrections."""

    epochs: int = 10
    lr: float = 0.003
    #: Weight of the squared distance to the starting head's parameters, added to each step's loss.
    anchor: float = 1.0
    batch_size: int = 32
    hint_dropout: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class Corrections:
    """The corrections of one run: those trained on and those held out for the gate."""

    train: list[Example]
    held: list[Example]

    @classmethod
    def of(cls, examples: Sequence[Example]) -> Corrections:
        held = [held_out(e) for e in examples]
        return cls([e for e, h in zip(examples, held) if not h], [e for e, h in zip(examples, held) if h])


def trunk_features(model: DynamicCNN, examples: Sequence[Example], *, device: str,
                   on_step: StepHook | None = None) -> torch.Tensor:
    """Pooled trunk features ``[N, F]`` of the examples' photos, preprocessed as the model serves them."""
    size, feats = model.config.preprocess.image_size, []
    for start in range(0, len(examples), _CHUNK):  # decoded a chunk at a time: JPEGs in memory, not pixels
        images = to_split(examples[start: start + _CHUNK], size=size).images
        feats.append(extract_features(model, torch.from_numpy(images), device=device, batch_size=32, on_step=on_step))
    return torch.cat(feats)


def continue_head(model: DynamicCNN, examples: Sequence[Example], config: RetrainConfig, *, device: str,
                  on_step: StepHook | None = None) -> tuple[DynamicCNN, dict]:
    """A candidate sharing ``model``'s frozen trunk whose head continued on ``examples``; and its history."""
    feats = trunk_features(model, examples, device=device, on_step=on_step)
    data = Batchable.from_split(to_split(examples, images=False), multi=model.config.multi, inputs=feats)
    candidate = DynamicCNN(model.backbone, copy.deepcopy(model.head), model.config).to(device)
    start = {name: p.detach().clone() for name, p in candidate.head.named_parameters()}
    optimizer = torch.optim.SGD([p for p in candidate.head.parameters() if p.requires_grad], lr=config.lr, momentum=0.9)
    torch.manual_seed(config.seed)
    order, hint_order = (torch.Generator().manual_seed(config.seed + k) for k in (0, 1))
    history, step = [], 0
    for epoch in range(config.epochs):
        candidate.train()
        candidate.backbone.eval()
        total = 0.0
        for x, hints, y in data.batches(config.batch_size, order):
            hints = HintTensors(*(t.to(device) for t in drop_hints(hints, config.hint_dropout, hint_order)))
            out = candidate.classify(x.to(device), hints.categories, hints.attributes, hints.subcategories)
            loss = compute_loss(out, {k: v.to(device) for k, v in y.items()}, multi=model.config.multi)
            pull = sum(((p - start[name]) ** 2).sum() for name, p in candidate.head.named_parameters() if p.requires_grad)
            optimizer.zero_grad(set_to_none=True)
            (loss + config.anchor * pull).backward()
            optimizer.step()
            total += loss.item() * len(x)
            step += 1
            if on_step is not None:
                on_step(step, loss.item())
        history.append({"epoch": epoch, "train_loss": total / len(data.inputs)})
    candidate.eval()
    return candidate, {"history": history, "examples": len(examples), "config": dataclasses.asdict(config)}


def _refused(model: DynamicCNN, data: Batchable, *, device: str) -> float:
    """The share of ``data``'s photos whose top category falls below ``model``'s abstain bar."""
    probs = torch.sigmoid(predict(model, data, features=True, device=device).categories.float())
    return 1 - answered_share(probs, model.config.abstain_below)


#: The held-out corrections' scores and how each is gated (a share refused as on the fixture: see
#: :data:`~training.real.gate.ABSTAIN_MARGIN`).
CORRECTIONS_RULES = {"corrections_category_map": Rule(),
                     "corrections_no_garment_refused": Rule(min_margin=ABSTAIN_MARGIN)}


def _same_trunk(a: DynamicCNN, b: DynamicCNN) -> bool:
    """Whether ``a`` and ``b`` compute the same trunk features: one trunk, or equal weights and preprocessing (a
    model continued from the packaged one keeps its trunk frozen, so the packaged model's features are its own)."""
    if a.backbone is b.backbone:
        return True
    if a.config.backbone != b.config.backbone or a.config.preprocess != b.config.preprocess:
        return False
    mine, theirs = a.backbone.state_dict(), b.backbone.state_dict()
    return mine.keys() == theirs.keys() and all(torch.equal(v, theirs[k].to(v.device)) for k, v in mine.items())


def _features(models: Sequence[DynamicCNN], examples: Sequence[Example], *, device: str) -> list[torch.Tensor]:
    """Each model's trunk features of ``examples``, computed once per distinct trunk."""
    feats: list[tuple[DynamicCNN, torch.Tensor]] = []
    out = []
    for model in models:
        known = next((f for m, f in feats if _same_trunk(model, m)), None)
        if known is None:
            known = trunk_features(model, examples, device=device)
            feats.append((model, known))
        out.append(known)
    return out


def held_out_scores(models: Sequence[DynamicCNN], held: Sequence[Example], *,
                    device: str) -> tuple[list[dict[str, float]], tuple[str, ...]]:
    """Each model's scores on held-out corrections, with the hints mined from their text (as served): category
    mAP on those naming garments (``corrections_category_map``), and the share refused (``abstain:
    "no_garment"``) of those saying the photo shows none (``corrections_no_garment_refused``), each once there
    are :data:`MIN_HELD_OUT` of them; and a note for each score left out for lack of corrections."""
    garment = [e for e in held if e.categories.any()]
    none = [e for e in held if not e.categories.any()]
    scores: list[dict[str, float]] = [{} for _ in models]
    skipped = [f"{name}: skipped ({len(group)} held out, need {MIN_HELD_OUT})"
               for name, group in zip(CORRECTIONS_RULES, (garment, none)) if len(group) < MIN_HELD_OUT]
    if len(garment) >= MIN_HELD_OUT:
        split = to_split(garment, images=False)
        for score, model, feats in zip(scores, models, _features(models, garment, device=device)):
            result = evaluate_model(model, split, features=feats, hints=True, device=device)
            score["corrections_category_map"] = result["category"]["mAP"]
    if len(none) >= MIN_HELD_OUT:
        labels = to_split(none, images=False)
        for score, model, feats in zip(scores, models, _features(models, none, device=device)):
            data = Batchable.from_split(labels, multi=True, inputs=feats)
            score["corrections_no_garment_refused"] = _refused(model, data, device=device)
    return scores, tuple(skipped)

