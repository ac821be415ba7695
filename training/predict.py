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
from training.default_model import default_entry
from training.models import DynamicCNN
from training.models.build import hint_tensors
from training.models.heads import DYNAMIC_HEADS, coherent_subcategories
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
        """``version`` (or the registry's newest) loaded; the packaged default model when the registry is empty."""
        ontology = load_ontology()
        device = resolve_device(settings.device)
        registry = Registry(settings.model_dir)
        found = registry.get(version) if version else registry.newest()
        if found is None:
            found = default_entry()
            log.warning("no checkpoint in %s: serving the packaged default model %s", settings.model_dir, found.version)
        return cls(found.load(device=device), ontology, version=found.version, device=device)

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
        tensors = hint_tensors(list(hints), self.ontology)
        hint_cat, hint_sub, hint_att = (t.to(self.device, non_blocking=cuda) for t in tensors)
        with torch.autocast(self.device.type, enabled=cuda):
            out = self.model(x, hint_cat, hint_att, hint_sub)
        multi = self.model.config.multi
        cat_p = (torch.sigmoid(out.categories) if multi else torch.softmax(out.categories.float(), 1)).float().cpu()
        sub_logits = out.subcategories.float()
        if not multi:  # the top sub-category lies under the top category
            sub_logits = coherent_subcategories(out.categories.float(), sub_logits, self.model.head.subcategory_parent)
        sub_p = torch.sigmoid(sub_logits).cpu()
        att_p = torch.sigmoid(out.attributes.float()).cpu()
        used = [_hints_used(self.head, *row, self.ontology)
                for row in zip(out.routes.cpu(), *(t.abs().sum(1) > 0 for t in tensors), tensors.categories > 0, strict=True)]
        now = utcnow()
        return [
            Label(
                post_id=post_ids[i], model_version=self.version, head=self.head,
                categories=_top(cat_p[i], self.ontology.category_names),
                subcategories=_top(sub_p[i], self.ontology.subcategory_names),
                attributes=_top(att_p[i], self.ontology.attribute_names),
                hints_used=used[i],
                received_at=datetime.fromtimestamp(timestamps_ms[i] / 1000, timezone.utc), labeled_at=now,
            )
            for i in range(len(post_ids))
        ]


def _hints_used(head: str, route: torch.Tensor, has_cat: torch.Tensor, has_sub: torch.Tensor, has_att: torch.Tensor,
                hinted: torch.Tensor, ontology: Ontology) -> HintsUsed:
    """What steered one label: nothing (Base), the text (any hint), or the image's own prediction (dynamic, silent text)."""
    any_hint = bool(has_cat or has_sub or has_att)
    if head in DYNAMIC_HEADS:
        steered = route
    elif any_hint and head != "base":  # late fusion reads every hint, routes nothing
        steered = hinted
    else:
        return HintsUsed(source="none")
    return HintsUsed(source="mined" if any_hint else "predicted",
                     categories=[ontology.category_names[k] for k in steered.nonzero().flatten().tolist()])


def _top(scores: torch.Tensor, names: list[str]) -> list[ScoredTerm]:
    values, indices = scores.topk(min(_TOP, len(names)))
    return [ScoredTerm(term=names[j], score=round(float(v), 6)) for v, j in zip(values.tolist(), indices.tolist())]
