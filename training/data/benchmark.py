"""The Table II benchmark: Fashion-MNIST garments painted with ontology patterns/materials, captioned,
and hinted by the text miner — generated deterministically and cached as ``.npz``.

Single-class: one garment per image. Multi-class: outfits of 2–4 garments of distinct categories in a
2×2 grid; labels are the union. Splits: ``train``/``val`` = 80/20 of a subset of Fashion-MNIST train,
``test`` = a subset of the Fashion-MNIST test set (held out).

Images and text draw from separate random streams: configs that differ only in their text settings
(mention rate, distractors, slang, injected wrong hints) share the same images and labels, so their
results are paired and a frozen backbone's features can be reused across them.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from serving.models.build import hint_tensors
from serving.ontology import Ontology
from training.data.captions import caption_item, mine
from training.synthetic.captions import CAPTIONS_VERSION
from training.synthetic.fashion_mnist import CLASS_MAP, load_split, resize_grey
from training.synthetic.textures import paint
from training.text.miner import MINER_VERSION

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class BenchmarkConfig:
    """What determines the generated data; its hash names the cache file."""

    multi: bool = False
    n_train: int = 10_000
    n_test: int = 2_000
    size: int = 64
    mention_prob: float = 0.8
    seed: int = 0
    #: Probability that a caption also names another category's garment ("with my black boots").
    distractor_prob: float = 0.0
    #: Probability that the garment / an attribute is named by slang outside the ontology's keywords.
    slang_prob: float = 0.0
    #: Fraction of images whose category hints are replaced by a wrong category (known hint error rate).
    wrong_hint_rate: float = 0.0
    #: Paint a per-material signature, so materials are distinguishable in the image (ablation).
    visible_materials: bool = False

    def key(self, ontology: Ontology) -> str:
        """Cache name: the config plus every generator version the data depends on."""
        # The miner's version names its code; the ontology's is already here. No need to load its vectors.
        versions = {"ontology": ontology.version, "miner": MINER_VERSION,
                    "captions": CAPTIONS_VERSION, "v": 3}
        blob = json.dumps({**asdict(self), **versions}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def same_images(self, other: BenchmarkConfig) -> bool:
        """Whether ``other`` differs only in text settings (then images and labels are identical)."""
        image_fields = ("multi", "n_train", "n_test", "size", "seed", "visible_materials")
        return all(getattr(self, f) == getattr(other, f) for f in image_fields)


@dataclass(frozen=True)
class Split:
    """One split as arrays: images uint8 ``[N, 3, S, S]``, multi-hot targets, mined hint scores."""

    images: np.ndarray
    categories: np.ndarray
    subcategories: np.ndarray
    attributes: np.ndarray
    hint_categories: np.ndarray
    hint_attributes: np.ndarray
    captions: np.ndarray
    hint_subcategories: np.ndarray
    #: Which sub-category / attribute targets are known (1) or unknown (0, no loss): real photos are
    #: often labelled with a category only. ``None``: every target is known.
    subcategory_known: np.ndarray | None = None
    attribute_known: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    def targets(self, *, multi: bool) -> dict[str, torch.Tensor]:
        """Loss targets: class indices for single-class categories, multi-hot everywhere else."""
        cats = torch.from_numpy(self.categories)
        targets = {
            "categories": cats if multi else cats.argmax(1),
            "subcategories": torch.from_numpy(self.subcategories),
            "attributes": torch.from_numpy(self.attributes),
        }
        for level, known in (("subcategories", self.subcategory_known), ("attributes", self.attribute_known)):
            if known is not None:
                targets[f"{level}_known"] = torch.from_numpy(known)
        return targets


def _draw_item(rng: random.Random, ontology: Ontology, label: int) -> tuple[int, int, str, str]:
    category, subcategory = CLASS_MAP[label]
    k = ontology.category_index(category)
    spec = ontology.categories[k]
    return k, ontology.subcategory_ids[subcategory], rng.choice(spec.materials), rng.choice(spec.patterns)


def _pick_outfit(rng: random.Random, labels: np.ndarray, multi: bool) -> list[int]:
    """Indices of the garments of one image (distinct categories for outfits)."""
    if not multi:
        return [rng.randrange(len(labels))]
    chosen, seen = [], set()
    for _ in range(rng.randint(2, 4)):
        while True:
            i = rng.randrange(len(labels))
            category = CLASS_MAP[labels[i]][0]
            if category not in seen:
                break
        seen.add(category)
        chosen.append(i)
    return chosen


def _render(greys: list[np.ndarray], items: list[tuple], size: int, np_rng: np.random.Generator, visible: bool) -> np.ndarray:
    if len(greys) == 1:
        return paint(greys[0], items[0][3], items[0][2], size, np_rng, visible_materials=visible)
    tile = size // 2
    canvas = np.full((3, size, size), 235, np.uint8)
    for slot, (grey, item) in enumerate(zip(greys, items, strict=True)):
        y, x = (slot // 2) * tile, (slot % 2) * tile
        canvas[:, y : y + tile, x : x + tile] = paint(grey, item[3], item[2], tile, np_rng, visible_materials=visible)
    return canvas


def _generate(ontology: Ontology, config: BenchmarkConfig, split: str, pool: tuple[np.ndarray, np.ndarray], count: int) -> Split:
    images_28, labels = pool
    K, M, P = len(ontology.category_names), len(ontology.subcategory_names), len(ontology.attribute_names)
    seed = config.seed * 1000 + SPLITS.index(split)
    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    text_rng = random.Random(f"text-{seed}")
    tile = config.size // 2 if config.multi else config.size
    attribute_index = ontology.attribute_ids
    images = np.empty((count, 3, config.size, config.size), np.uint8)
    targets = [np.zeros((count, n), np.float32) for n in (K, M, P)]
    captions, hints = [], []
    for n in range(count):
        chosen = _pick_outfit(rng, labels, config.multi)
        items = [_draw_item(rng, ontology, int(labels[i])) for i in chosen]
        images[n] = _render(list(resize_grey(images_28[chosen], tile)), items, config.size, np_rng, config.visible_materials)
        for k, sub, material, pattern in items:
            targets[0][n, k] = targets[1][n, sub] = 1
            targets[2][n, [attribute_index[material], attribute_index[pattern]]] = 1
        texts = [caption_item(text_rng, ontology, item, mention_prob=config.mention_prob, heldout=split == "test",
                              distractor_prob=config.distractor_prob, slang_prob=config.slang_prob) for item in items]
        text, hint = mine(ontology, texts)
        captions.append(text)
        hints.append(hint)
    tensors = [t.numpy() for t in hint_tensors(hints, ontology)]
    _inject_wrong_hints(tensors, targets[0], config.wrong_hint_rate, np.random.default_rng([seed, 7]))
    hint_categories, hint_subcategories, hint_attributes = tensors
    return Split(images, *targets, hint_categories, hint_attributes, np.array(captions), hint_subcategories)


def _inject_wrong_hints(tensors: list[np.ndarray], categories: np.ndarray, rate: float, rng: np.random.Generator) -> None:
    """For a ``rate`` fraction of images, hint one category the image does not show (in place).

    The category hint row becomes that wrong category alone (score 1) and the sub-category hints are
    cleared, so the text points entirely elsewhere; attribute hints are kept.
    """
    if rate <= 0:
        return
    hint_categories, hint_subcategories, _ = tensors
    for n in np.flatnonzero(rng.random(len(categories)) < rate):
        hint_categories[n] = 0
        hint_categories[n, rng.choice(np.flatnonzero(categories[n] == 0))] = 1
        hint_subcategories[n] = 0


def _split_pools(config: BenchmarkConfig, root: Path | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    kwargs = {"root": root} if root else {}
    train_images, train_labels = load_split("train", **kwargs)
    test_images, test_labels = load_split("test", **kwargs)
    order = np.random.default_rng(config.seed).permutation(len(train_labels))
    cut = int(len(order) * 0.8)
    return {
        "train": (train_images[order[:cut]], train_labels[order[:cut]]),
        "val": (train_images[order[cut:]], train_labels[order[cut:]]),
        "test": (test_images, test_labels),
    }


def load_benchmark(ontology: Ontology, config: BenchmarkConfig, *, cache_dir: Path | None = None, root: Path | None = None) -> dict[str, Split]:
    """The three splits for ``config``; generated on first use and cached under ``cache_dir``.

    ``n_train`` images are split 80/20 into train/val (drawn from disjoint Fashion-MNIST pools);
    ``test`` has ``n_test`` images drawn from the Fashion-MNIST test set.
    """
    path = cache_dir / f"benchmark-{'multi' if config.multi else 'single'}-{config.key(ontology)}.npz" if cache_dir else None
    if path is not None and path.exists():
        with np.load(path) as data:
            return {s: Split(**{f.name: data[f"{s}/{f.name}"] for f in fields(Split) if f"{s}/{f.name}" in data.files})
                    for s in SPLITS}
    pools = _split_pools(config, root)
    counts = {"train": int(config.n_train * 0.8), "val": config.n_train - int(config.n_train * 0.8), "test": config.n_test}
    splits = {s: _generate(ontology, config, s, pools[s], counts[s]) for s in SPLITS}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"{s}/{f.name}": getattr(splits[s], f.name) for s in SPLITS for f in fields(Split)
                  if getattr(splits[s], f.name) is not None}
        np.savez_compressed(path, **arrays)
    return splits
