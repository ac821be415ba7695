"""Training on real photos, end to end: manifest → photos → fine-tuned trunk → served head → calibrated,
abstaining model, and its scores on held-out photos.

1. Photos are decoded as the classifier decodes posts; no-garment images are added (background regions
   from the manifest, plus drawn flat colours, noise and gradients). Photos that fail to load are logged and
   counted; a split where none loaded, or more than ``max_missing`` of them failed, refuses the run.
2. The trunk is fine-tuned with a Base head on the photos (:mod:`training.real.finetune`), text silent.
3. The served head trains on the fine-tuned trunk's cached features, with captions generated from each
   photo's labels and mined (:mod:`training.real.data`), dropping hints at the configured rate.
4. On validation: a temperature makes the category probabilities calibrated (folded into the category
   layer), and the abstain bar is set from garment photos against no-garment images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn.functional import binary_cross_entropy_with_logits

from serving.checkpoint import load_checkpoint
from serving.models import DynamicCNN, build_model
from serving.models.heads import DYNAMIC_HEADS, FusionHead
from serving.ontology import Ontology
from training.data.benchmark import Split
from training.real.data import build_split, split_records, with_condition
from training.real.finetune import Fronts, TuneConfig, cache_fronts, finetune, pooled
from training.real.images import load_records, no_garment_images
from training.real.manifest import ManifestError, Record
from training.real.scores import abstain_threshold, subcategory_summary, summary
from training.train import Batchable, FitConfig, predict, train_head

#: Sources whose photos show one garment; ``co_parsing`` photos are street photos of people.
STREET = ("co_parsing",)
NEGATIVE = ("co_parsing_background", "synthetic_negative")
#: Failed photos named in the log, per split (the rest are counted).
SHOWN_FAILURES = 5

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RealConfig:
    """Everything that decides a real-photo model (stored with its checkpoint)."""

    backbone: str = "efficientnet_lite0"
    image_size: int = 224
    head: str = "fusion"
    hint_dropout: float = 0.5
    route_threshold: float = 0.1
    negatives: int = 400
    label_floor: float = 0.05
    max_garment_abstain: float = 0.02
    #: The largest share of a split's manifest photos that may fail to load before the run is refused.
    max_missing: float = 0.05
    #: Street photos drawn this many times per epoch when the served head trains (as in fine-tuning).
    head_street_repeat: int = 1
    tune: TuneConfig = field(default_factory=TuneConfig)
    fit: FitConfig = field(default_factory=lambda: FitConfig(epochs=40, lr=0.02, patience=5, batch_size=64))
    seed: int = 0
    #: Where the trunk is fine-tuned and its features computed (``cuda`` when there is one); the heads, fitted
    #: on those features, train on the CPU.
    device: str = "cpu"
    #: Where the frozen front's activations are kept between runs on the same photos (``None``: not kept).
    cache_dir: Path | None = None


@dataclass
class Prepared:
    """Photos, their splits under the main text condition, and the fine-tuned trunk's features."""

    records: dict[str, list[Record]]
    splits: dict[str, Split]
    sources: dict[str, np.ndarray]
    base: DynamicCNN
    features: dict[str, Tensor]
    history: dict
    #: Per split, the manifest photos that failed to load and were left out.
    dropped: dict[str, int] = field(default_factory=dict)


def _drawn_negatives(count: int) -> list[Record]:
    return [Record(image=f"drawn:no_garment/{i}", categories=[], source="synthetic_negative",
                   split="train" if i % 20 < 14 else "val" if i % 20 < 17 else "test") for i in range(count)]


def load_photos(records: list[Record], config: RealConfig,
                ) -> tuple[dict[str, tuple[list[Record], np.ndarray]], dict[str, int]]:
    """Per split, the records that loaded and their images (drawn negatives included), and how many manifest
    photos failed to load and were left out (the first few of each split are logged).

    Raises:
        ManifestError: in some split no manifest photo loaded, or more than ``config.max_missing`` failed.
    """
    records = records + _drawn_negatives(config.negatives)
    drawn = no_garment_images(config.negatives, config.image_size, seed=config.seed)
    out, failures = {}, {}
    for name, chosen in split_records(records).items():
        real = [r for r in chosen if r.source != "synthetic_negative"]
        images, errors = load_records(real, config.image_size, desc=f"{name} photos")
        keep = [i for i, e in enumerate(errors) if not e]
        failures[name] = ([e for e in errors if e], len(real))
        negatives = [int(r.image.rsplit("/", 1)[1]) for r in chosen if r.source == "synthetic_negative"]
        out[name] = ([real[i] for i in keep] + [r for r in chosen if r.source == "synthetic_negative"],
                     np.concatenate([images[keep], drawn[negatives]]))
    return out, _check_failures(failures, config.max_missing)


def _check_failures(failures: dict[str, tuple[list[str], int]], max_missing: float) -> dict[str, int]:
    """Log each split's failed photos and return their counts; refuse splits that lost too many."""
    refused = []
    for name, (failed, total) in failures.items():
        if not failed:
            continue
        # Each line its own kind: the CLI's repeat filter would hold back lines of one template.
        log.warning("%s split: %d of %d photos did not load and are left out", name, len(failed), total,
                    extra={"repeat_key": f"{name} failed"})
        for error in failed[:SHOWN_FAILURES]:
            log.warning("  %s", error, extra={"repeat_key": f"{name} {error}"})
        if len(failed) > SHOWN_FAILURES:
            log.warning("  and %d more", len(failed) - SHOWN_FAILURES, extra={"repeat_key": f"{name} more"})
        if len(failed) == total or len(failed) > max_missing * total:
            refused.append(name)
    if refused:
        counts = ", ".join(f"{name} {len(failures[name][0])} of {failures[name][1]}" for name in refused)
        raise ManifestError(f"photos that did not load: {counts} (all of a split, or more than --max-missing "
                            f"{max_missing:g}); the first: {failures[refused[0]][0][0]}")
    return {name: len(failed) for name, (failed, _) in failures.items()}


def prepare(records: list[Record], ontology: Ontology, config: RealConfig, *, trunk_from: Path | None = None) -> Prepared:
    """Load the photos, fine-tune the trunk with a Base head, and cache every split's features.

    ``trunk_from``: a checkpoint whose already fine-tuned trunk is reused instead (same backbone, input size
    and cut): retraining heads, on the same or new photos, then costs minutes instead of the fine-tuning.
    """
    photos, dropped = load_photos(records, config)
    splits = {name: build_split(recs, images, ontology, condition="main", seed=config.seed, heldout=name == "test")
              for name, (recs, images) in photos.items()}
    torch.manual_seed(config.seed)
    base = build_model(backbone=config.backbone, head="base", ontology=ontology, multi=True,
                       image_size=config.image_size).to(config.device)
    fronts = {name: _fronts(base, split, photos[name][0], name, config) for name, split in splits.items()}
    street = np.isin([r.source for r in photos["train"][0]], STREET)
    fronts["train"] = dataclasses.replace(fronts["train"], repeats=np.where(street, config.tune.street_repeat, 1),
                                          images=splits["train"].images if config.tune.augment else None)
    if trunk_from is None:
        history = finetune(base, fronts["train"], fronts["val"], dataclasses.replace(config.tune, seed=config.seed))
    else:
        history = {"trunk_from": str(trunk_from)}
        base.backbone.load_state_dict(load_checkpoint(trunk_from, ontology=ontology).backbone.state_dict())
    features = {name: pooled(base, f.plain, config.tune.cut) for name, f in fronts.items()}
    base.cpu().backbone.requires_grad_(False)
    return Prepared({n: p[0] for n, p in photos.items()}, splits,
                    {n: np.array([r.source for r in p[0]]) for n, p in photos.items()}, base, features, history,
                    dropped)


def _fronts(base: DynamicCNN, split: Split, records: list[Record], name: str, config: RealConfig) -> Fronts:
    """The frozen front's activations of a split, from ``config.cache_dir`` when the same photos were seen before."""
    if config.cache_dir is None:
        return cache_fronts(base, split, config.tune.cut, mirrored=name == "train", desc=f"{name} front")
    key = hashlib.sha256(json.dumps([config.backbone, config.image_size, config.tune.cut, config.negatives,
                                     config.seed, name, [(r.image, r.box) for r in records]]).encode()).hexdigest()[:16]
    path = Path(config.cache_dir) / f"fronts-{name}-{key}.pt"
    if path.exists():
        plain, mirrored = torch.load(path, weights_only=True)
        return Fronts(plain, mirrored, split.targets(multi=True))
    fronts = cache_fronts(base, split, config.tune.cut, mirrored=name == "train", desc=f"{name} front")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save((fronts.plain, fronts.mirrored), path)
    return fronts


def train_served(prepared: Prepared, ontology: Ontology, config: RealConfig, *, head: str | None = None,
                 seed: int | None = None) -> tuple[DynamicCNN, dict]:
    """The served head on the fine-tuned trunk, calibrated, its hints weighed on validation, and with its abstain
    bar and label floor set."""
    head = head or config.head
    seed = config.seed if seed is None else seed
    fit = dataclasses.replace(config.fit, seed=seed, hint_dropout=0.0 if head == "base" else config.hint_dropout)
    extra = {"route_threshold": config.route_threshold} if head in DYNAMIC_HEADS else {}
    splits, features = prepared.splits, prepared.features
    if config.head_street_repeat > 1:
        street = np.isin(prepared.sources["train"], STREET)
        rows = np.repeat(np.arange(len(street)), np.where(street, config.head_street_repeat, 1))
        splits = {**splits, "train": _rows(splits["train"], rows)}
        features = {**features, "train": features["train"][torch.from_numpy(rows)]}
    model, history = train_head(head, prepared.base.backbone, features, splits,
                                name=config.backbone, ontology=ontology, multi=True, config=fit,
                                image_size=config.image_size, **extra)
    temperature = calibrate(model, prepared.splits["val"], prepared.features["val"])
    weights = weigh_hints(model, prepared.splits["val"], prepared.features["val"])
    history = {**history, "temperature": temperature, "hint_weight": weights["categories"],
               "subcategory_hint_weight": weights["subcategories"]}
    top = category_probs(model, prepared.splits["val"], prepared.features["val"], hints=False).max(1)
    garment = prepared.splits["val"].categories.any(1)
    bar = abstain_threshold(top[garment], top[~garment], max_garment_abstain=config.max_garment_abstain,
                            garment_targets=prepared.splits["val"].categories[garment])
    model.config = dataclasses.replace(model.config, abstain_below=bar, label_floor=config.label_floor)
    return model, history


def _rows(split: Split, rows: np.ndarray) -> Split:
    """``split`` with its rows taken in the order (and multiplicity) of ``rows``."""
    n = len(split)
    return Split(**{f.name: (v[rows] if isinstance(v, np.ndarray) and len(v) == n else v)
                    for f in dataclasses.fields(split) for v in [getattr(split, f.name)]})


def category_probs(model: DynamicCNN, split: Split, features: Tensor, *, hints: bool) -> np.ndarray:
    """Sigmoid category probabilities ``[N, K]`` for a split's cached features, with its hints or silent."""
    return level_probs(model, split, features, hints=hints)[0]


def level_probs(model: DynamicCNN, split: Split, features: Tensor, *, hints: bool) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid category ``[N, K]`` and sub-category ``[N, M]`` probabilities for a split's cached features."""
    out = predict(model, Batchable.from_split(split, multi=True, inputs=features, hints=hints), features=True)
    return torch.sigmoid(out.categories.float()).numpy(), torch.sigmoid(out.subcategories.float()).numpy()


def calibrate(model: DynamicCNN, val: Split, features: Tensor) -> float:
    """Fit one temperature on validation category logits (silent text: the hardest case) and fold it into the
    category layer; returns it."""
    out = predict(model, Batchable.from_split(val, multi=True, inputs=features, hints=False), features=True)
    logits, target = out.categories.float(), torch.from_numpy(val.categories)
    grid = torch.linspace(0.5, 3.0, 51)
    losses = [float(binary_cross_entropy_with_logits(logits / t, target)) for t in grid]
    temperature = float(grid[int(np.argmin(losses))])
    with torch.no_grad():
        model.head.categories.weight.div_(temperature)
        model.head.categories.bias.div_(temperature)
    return temperature


#: Evidence weights tried for a mined category hint (added to its category's logit by a fusion head).
HINT_WEIGHTS = tuple(float(w) for w in np.arange(0.0, 6.01, 0.25))


def weigh_hints(model: DynamicCNN, val: Split, features: Tensor) -> dict[str, float]:
    """Fit how much a mined category hint adds to its category's logit, and a mined sub-category hint to its
    sub-category's, on validation photos with their captions (the main text condition), and fold both into a
    fusion head's layers; returns them (zeros for a head whose layers do not read the hints).

    A fusion head learns its hint weights on the photos its trunk was fine-tuned on, whose image logits are
    already confident and right, so there the text seems to add little; on photos the model has not seen it
    adds more. One weight per level, chosen by the loss on photos neither was trained on (sub-categories: only
    where a photo's sub-category is known): stacking, as the temperature is (docs/real-photos.md has the
    measurements).
    """
    if not isinstance(model.head, FusionHead):
        return {"categories": 0.0, "subcategories": 0.0}
    out = predict(model, Batchable.from_split(val, multi=True, inputs=features, hints=True), features=True)
    known = val.subcategory_known if val.subcategory_known is not None else np.ones_like(val.subcategories)
    levels = {"categories": (out.categories, val.categories, val.hint_categories, np.ones_like(val.categories)),
              "subcategories": (out.subcategories, val.subcategories, val.hint_subcategories, known)}
    weights = {}
    for level, (logits, target, hints, mask) in levels.items():
        logits, target = logits.float(), torch.from_numpy(target).float()
        hints, mask = torch.from_numpy(hints).float(), torch.from_numpy(mask).float()
        losses = [float((binary_cross_entropy_with_logits(logits + w * hints, target, reduction="none") * mask).sum()
                        / mask.sum().clamp(min=1)) for w in HINT_WEIGHTS]
        weights[level] = HINT_WEIGHTS[int(np.argmin(losses))]
        model.head.add_hint_weight(weights[level], level)
    return weights


def scores(model: DynamicCNN, prepared: Prepared, ontology: Ontology, *, split: str = "test",
           conditions: tuple[str, ...] = ("silent", "mention", "main"), seed: int = 0) -> dict:
    """Per text condition and photo kind (street, single garment), every real-photo score of ``split``."""
    base = prepared.splits[split]
    sources = prepared.sources[split]
    kinds = {"street": np.isin(sources, STREET), "single_garment": ~np.isin(sources, (*STREET, *NEGATIVE))}
    negative = np.isin(sources, NEGATIVE)
    out = {}
    for condition in conditions:
        data = base if condition == "main" else with_condition(base, prepared.records[split], ontology, condition,
                                                                 seed=seed, heldout=split == "test")
        probs, sub = level_probs(model, data, prepared.features[split], hints=condition != "silent")
        known = data.subcategory_known
        out[condition] = {kind: {**summary(probs[rows | negative], data.categories[rows | negative],
                                           ontology.category_names, abstain_below=model.config.abstain_below),
                                 "subcategory": subcategory_summary(sub[rows], data.subcategories[rows],
                                                                    None if known is None else known[rows])}
                          for kind, rows in kinds.items() if rows.any()}
    return out

