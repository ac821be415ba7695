"""The image embedding a model serves next to its labels: pooled trunk features, whole photo and body bands.

The backbone's last feature map (``[B, C, H, W]``, 9 x 9 for EfficientNet-Lite0 at 288 px) is already
computed for the labels; average-pooling it over horizontal bands as well as the whole map gives, at the
cost of four means, one embedding for the whole photo and one each for the upper body, the lower body
and the feet of a standing person (the layout of an outfit photo). A bag has no fixed place in a photo,
so it gets no band: the label's ``bags`` probabilities carry it.

Each row is L2-normalised, so a dot product is a cosine, and halved to float16 for storage.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Rows of an embedding: the whole photo, then the bands below (fractions of the image height).
REGIONS = ("global", "upper", "lower", "feet")
BANDS = {"upper": (0.15, 0.55), "lower": (0.45, 0.85), "feet": (0.8, 1.0)}


def band_rows(height: int, band: tuple[float, float]) -> tuple[int, int]:
    """Feature-map rows ``[start, stop)`` covering a band; at least one row."""
    start = min(height - 1, math.floor(band[0] * height))
    stop = max(start + 1, math.ceil(band[1] * height))
    return start, min(stop, height)


def region_embeddings(feature_map: Tensor) -> Tensor:
    """``[B, C, H, W]`` features → ``[B, len(REGIONS), C]`` L2-normalised float32 embeddings."""
    fmap = feature_map.float()
    rows = [fmap.mean(dim=(2, 3))]
    for name in REGIONS[1:]:
        start, stop = band_rows(fmap.shape[2], BANDS[name])
        rows.append(fmap[:, :, start:stop, :].mean(dim=(2, 3)))
    out = torch.stack(rows, dim=1)
    return torch.nn.functional.normalize(out, dim=2)
