"""Fine-tune a pretrained EfficientNet-Lite trunk on real photos, affordably on a CPU.

The trunk is cut at a block: the part before it stays frozen (ImageNet's edges, textures and parts) and
its outputs are computed once per photo, flipped and unflipped; the part after it (where a garment's
identity is decided) trains together with a Base head, on those cached activations. Every epoch then
costs only the tail's forward and backward, a fraction of the whole network's. With ``augment`` each step
redraws its photos instead (:mod:`training.real.augment`) and runs the frozen front on them.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms import v2
from tqdm import tqdm

from serving.models import DynamicCNN
from training.data.benchmark import Split
from training.real.augment import augment, photo_augmenter
from training.train import compute_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneConfig:
    """Fine-tuning settings: where to cut the trunk, and AdamW with a one-cycle schedule."""

    #: Blocks 2-15 are fine-tuned: on the photos this beat cutting at 11 on every validation score
    #: (docs/real-photos.md); blocks 0-1 stay as ImageNet left them.
    cut: int = 2
    epochs: int = 6
    batch_size: int = 64
    lr: float = 3e-4
    head_lr: float = 3e-3
    weight_decay: float = 1e-4
    drop_connect: float = 0.1
    #: Street photos (several garments, small items) are few next to single-garment photos: each is seen
    #: this many times per epoch.
    street_repeat: int = 3
    #: Redraw each training photo per step (frame, aspect, light) instead of reading its cached activations.
    augment: bool = True
    seed: int = 0


@dataclass(frozen=True)
class Fronts:
    """Cached activations of the frozen front for one split, as photographed and mirrored, plus targets."""

    plain: Tensor
    mirrored: Tensor
    targets: dict[str, Tensor]
    #: Times each row is drawn per epoch (``None``: once).
    repeats: np.ndarray | None = None
    #: The photos themselves (uint8 ``[N, 3, S, S]``), for fine-tuning with augmentation.
    images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.plain)


def _device(model: DynamicCNN) -> torch.device:
    return next(model.parameters()).device


def _front(model: DynamicCNN, images: Tensor, cut: int) -> Tensor:
    """The trunk's blocks before ``cut`` on a uint8 batch (normalised here, as the classifier does), on the
    model's device."""
    x = model.preprocess(images.to(_device(model))).contiguous(memory_format=torch.channels_last)
    return model.backbone.features.front(x, cut)


def cache_fronts(model: DynamicCNN, split: Split, cut: int, *, batch_size: int = 64, mirrored: bool = True,
                 desc: str = "front") -> Fronts:
    """Run the frozen front over a split's images once, on the model's device (kept in float16 on the host:
    half the memory)."""
    trunk = model.backbone.features
    trunk.eval()
    plain, flipped = [], []
    with torch.inference_mode():
        for start in tqdm(range(0, len(split), batch_size), desc=desc, leave=False, disable=None):
            x = torch.from_numpy(split.images[start: start + batch_size])
            plain.append(_front(model, x, cut).half().cpu())
            if mirrored:
                flipped.append(_front(model, x.flip(3), cut).half().cpu())
    plain_t = torch.cat(plain)
    return Fronts(plain_t, torch.cat(flipped) if mirrored else plain_t, split.targets(multi=True))


def pooled(model: DynamicCNN, fronts: Tensor, cut: int, *, batch_size: int = 128) -> Tensor:
    """Backbone features ``[N, F]`` on the host from cached front activations (what ``model.backbone`` would
    give), computed on the model's device."""
    model.eval()
    device, out = _device(model), []
    with torch.inference_mode():
        for start in range(0, len(fronts), batch_size):
            x = model.backbone.features.tail(fronts[start: start + batch_size].float().to(device), cut)
            out.append(torch.flatten(model.backbone.pool(x), 1).cpu())
    return torch.cat(out)


def _forward(model: DynamicCNN, x: Tensor, config: TuneConfig):
    features = torch.flatten(model.backbone.pool(model.backbone.features.tail(x, config.cut,
                                                                            drop_connect_rate=config.drop_connect)), 1)
    return model.classify(features)


def _augmented_front(model: DynamicCNN, images: np.ndarray, transform: v2.Compose, cut: int) -> Tensor:
    """The frozen front (its batch norms as trained on ImageNet) on freshly drawn versions of ``images``."""
    trunk = model.backbone.features
    trunk.eval()
    with torch.no_grad():
        out = _front(model, augment(torch.from_numpy(images), transform), cut)
    trunk.train()
    return out


def _batch(model: DynamicCNN, train: Fronts, idx: Tensor, config: TuneConfig, rng: np.random.Generator,
           transform: v2.Compose | None) -> Tensor:
    if transform is not None:
        return _augmented_front(model, train.images[idx.numpy()], transform, config.cut)
    mirror = torch.from_numpy(rng.random(len(idx)) < 0.5)[:, None, None, None]
    return torch.where(mirror, train.mirrored[idx], train.plain[idx]).float()


def _loss(model: DynamicCNN, data: Fronts, config: TuneConfig) -> float:
    model.eval()
    device, total = _device(model), 0.0
    with torch.inference_mode():
        for start in range(0, len(data), 128):
            idx = slice(start, start + 128)
            out = _forward(model, data.plain[idx].float().to(device), config)
            targets = {k: v[idx].to(device) for k, v in data.targets.items()}
            total += float(compute_loss(out, targets, multi=True)) * len(out[0])
    return total / len(data)


def finetune(model: DynamicCNN, train: Fronts, val: Fronts, config: TuneConfig) -> dict:
    """Train the trunk's tail and the head on cached fronts, on the model's device; keeps the epoch with the
    best validation loss."""
    torch.manual_seed(config.seed)
    trunk = model.backbone.features
    model.requires_grad_(False)
    tail = [p for m in trunk.tail_modules(config.cut) for p in m.parameters()]
    head = list(model.head.parameters())
    for p in (*tail, *head):
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW([{"params": tail, "lr": config.lr}, {"params": head, "lr": config.head_lr}],
                                  weight_decay=config.weight_decay)
    rows = np.repeat(np.arange(len(train)), train.repeats) if train.repeats is not None else np.arange(len(train))
    steps_per_epoch = -(-len(rows) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[config.lr, config.head_lr], pct_start=0.15,
                                                   total_steps=config.epochs * steps_per_epoch)
    rng = np.random.default_rng(config.seed)
    if config.augment and train.images is None:
        raise ValueError("fine-tuning with augment needs the photos themselves (Fronts.images)")
    transform = photo_augmenter(train.images.shape[-1]) if config.augment else None
    history, best, best_state, device = [], float("inf"), None, _device(model)
    for epoch in range(config.epochs):
        model.train()
        total = 0.0
        order = torch.from_numpy(rng.permutation(rows))
        for start in tqdm(range(0, len(order), config.batch_size), desc=f"fine-tune {epoch}", leave=False, disable=None):
            idx = order[start: start + config.batch_size]
            x = _batch(model, train, idx, config, rng, transform).to(device)
            targets = {k: v[idx].to(device) for k, v in train.targets.items()}
            loss = compute_loss(_forward(model, x, config), targets, multi=True)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        val_loss = _loss(model, val, config)
        history.append({"epoch": epoch, "train_loss": total / len(rows), "val_loss": val_loss})
        log.info("fine-tune epoch %d/%d: train loss %.3f, validation loss %.3f", epoch + 1, config.epochs,
                 total / len(rows), val_loss)
        if val_loss < best:
            best, best_state = val_loss, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.requires_grad_(True)
    return {"best_val_loss": best, "epochs_run": len(history), "history": history}
