"""Photo augmentation for fine-tuning: each epoch a photo is seen a little differently.

Fine-tuning on cached activations can only mirror a photo, and on a few hundred street photos the trunk
starts to learn the photos themselves after four or five epochs. Redrawing each photo per step (a slightly
tighter frame, another aspect, light and colour) costs a forward of the frozen front per step instead, and is
what a whole-trunk fine-tune (``--cut 0``) needs. The frame keeps most of the photo: a street photo's labels
are every garment it shows, and a crop that loses the shoes would teach the model that they are absent.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.transforms import v2

#: Least share of a photo's area a training frame keeps, and the range of its aspect ratio.
MIN_AREA = 0.8
ASPECT = (0.85, 1.18)


def photo_augmenter(size: int) -> v2.Compose:
    """The transform one uint8 ``[3, size, size]`` photo goes through (random each call)."""
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(MIN_AREA, 1.0), ratio=ASPECT, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.02),
    ])


def augment(images: Tensor, transform: v2.Compose) -> Tensor:
    """Each photo of a uint8 batch ``[B, 3, S, S]`` drawn afresh (each with its own frame and colours)."""
    return torch.stack([transform(image) for image in images])
