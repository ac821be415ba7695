"""Serving-side inference: PIL images + mined hints → ``label/v1`` messages, batched, on CPU or CUDA."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone

import torch
from PIL import Image

from streamcore.images import to_chw
from streamcore.schemas import Hints, HintsUsed, Label, ScoredTerm, utcnow
from streamcore.settings import Settings
from training.models import DynamicCNN, build_model, hints_to_tensors
from training.ontology import Ontology, load_ontology
from training.registry import Registry

log = logging.getLogger(__name__)

_TOP = 5


def resolve_device(setting: str) -> torch.device:
    """``auto`` picks CUDA when present; anything else is taken literally."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


class Predictor:
    """A loaded model plus everything needed to turn its outputs into labels."""

    def __init__(self, model: DynamicCNN, ontology: Ontology, *, version: str, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.ontology = ontology
        self.version = version
        self.device = device
        self.head = model.config.head
        self._size = model.preprocess.image_size

    @classmethod
    def load(cls, settings: Settings, version: str | None = None) -> Predictor:
        """``version`` (or the registry's serving one) loaded, or an untrained model when there is none."""
        ontology = load_ontology()
        device = resolve_device(settings.device)
        registry = Registry(settings.model_dir)
        found = registry.get(version) if version else registry.newest()
        if found is not None:
            version, model = found.version, found.load(device=device)
        else:
            log.warning("no checkpoint in %s: serving an untrained %s/%s model", settings.model_dir,
                        settings.backbone, settings.head)
            torch.manual_seed(0)
            model = build_model(backbone=settings.backbone, head=settings.head, ontology=ontology, weights="random")
            version = f"untrained-{settings.backbone}-{settings.head}"
        return cls(model, ontology, version=version, device=device)

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """Resize to the model's input size; uint8 ``[3, S, S]`` (normalisation happens on the device)."""
        return torch.from_numpy(to_chw(image, self._size))

    def _resize(self, image: torch.Tensor) -> torch.Tensor:
        resized = torch.nn.functional.interpolate(image[None].float(), size=(self._size, self._size), mode="bilinear",
                                                  antialias=True, align_corners=False)
        return resized[0].round().clamp(0, 255).to(torch.uint8)

    @torch.inference_mode()
    def predict(self, images: Sequence[torch.Tensor], hints: Sequence[Hints | None], post_ids: Sequence[str],
                timestamps_ms: Sequence[int]) -> list[Label]:
        """Classify a batch of :meth:`to_tensor` images; hints may mix present and absent rows."""
        # Images prepared for a previous model (a swap between decode and batch) may have another size.
        batch = torch.stack([img if img.shape[-1] == self._size else self._resize(img) for img in images])
        cuda = self.device.type == "cuda"
        if cuda:
            batch = batch.pin_memory()
        x = self.model.preprocess(batch.to(self.device, non_blocking=cuda))
        hint_cat, hint_att = (t.to(self.device, non_blocking=cuda) for t in hints_to_tensors(list(hints), self.ontology))
        with torch.autocast(self.device.type, enabled=cuda):
            out = self.model(x, hint_cat, hint_att)
        multi = self.model.config.multi
        cat_p = (torch.sigmoid(out.categories) if multi else torch.softmax(out.categories.float(), 1)).float().cpu()
        sub_p = torch.sigmoid(out.subcategories.float()).cpu()
        att_p = torch.sigmoid(out.attributes.float()).cpu()
        routes = out.routes.cpu()
        hinted = hint_cat.abs().sum(1).cpu() > 0
        now = utcnow()
        return [
            Label(
                post_id=post_ids[i], model_version=self.version, head=self.head,
                categories=_top(cat_p[i], self.ontology.category_names),
                subcategories=_top(sub_p[i], self.ontology.subcategory_names),
                attributes=_top(att_p[i], self.ontology.attribute_names),
                hints_used=HintsUsed(source="mined" if hinted[i] else "predicted",
                                     categories=[self.ontology.category_names[k] for k in routes[i].nonzero().flatten().tolist()]),
                received_at=datetime.fromtimestamp(timestamps_ms[i] / 1000, timezone.utc), labeled_at=now,
            )
            for i in range(len(post_ids))
        ]


def _top(scores: torch.Tensor, names: list[str]) -> list[ScoredTerm]:
    values, indices = scores.topk(min(_TOP, len(names)))
    return [ScoredTerm(term=names[j], score=round(float(v), 6)) for v, j in zip(values.tolist(), indices.tolist())]
