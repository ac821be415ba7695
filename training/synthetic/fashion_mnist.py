"""Fashion-MNIST (Debian ``dataset-fashion-mnist``) and its mapping onto the ontology."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")

#: Fashion-MNIST class → (ontology category, sub-category).
CLASS_MAP = (
    ("tops_and_tshirts", "t_shirt"),
    ("trouser_and_shorts", "trousers"),
    ("jumpers_and_cardigans", "jumper"),
    ("dresses", "casual_dress"),
    ("coats", "overcoat"),
    ("shoes", "sandal"),
    ("blouses_and_tunics", "shirt"),
    ("shoes", "sneaker"),
    ("bags", "handbag"),
    ("shoes", "ankle_boot"),
)


def load_split(split: str, root: Path = DEFAULT_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """``(images [N, 28, 28] uint8, labels [N] uint8)`` of ``split`` (``"train"`` or ``"test"``).

    Raises:
        ValueError: unknown split.
        FileNotFoundError: the dataset is not installed under ``root``.
    """
    prefixes = {"train": "train", "test": "t10k"}
    if split not in prefixes:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    with gzip.open(root / f"{prefixes[split]}-images-idx3-ubyte.gz") as fh:
        images = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(root / f"{prefixes[split]}-labels-idx1-ubyte.gz") as fh:
        labels = np.frombuffer(fh.read(), np.uint8, offset=8)
    return images, labels


def resize_grey(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of ``[N, 28, 28]`` uint8 to ``[N, size, size]`` float32 in 0..1."""
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[:, 0].clamp(0, 1).numpy()
