"""Serving-side inference: images + mined hints → ``label/v1`` JSON, batched, on CPU or CUDA.

The batch path is split in three steps so a worker can overlap them across batches:

1. :meth:`Predictor.stage` (a prep thread): images to one uint8 batch on the device. JPEG bytes are
   decoded there by nvJPEG and resized on the GPU; images decoded on the CPU (:meth:`prepare`) are
   copied through pinned memory, without blocking the model thread.
2. :meth:`Predictor.infer` (the model thread): AMP forward in channels_last, top-k of every level for the
   whole batch on the device, and ONE device→host copy of a packed score table. On a CPU the forward
   runs in chunks of ``cpu_forward_batch`` images, the size a CPU's caches keep fastest per image. Where
   the version carries its exported backbone (:mod:`serving.onnx_backbone`), ONNX Runtime runs the backbone
   and the head stays in PyTorch (the ``runtime`` setting).
3. :meth:`Predictor.label_json`: label JSON straight from that table, no per-item model validation (the
   tests check the output validates against :class:`Label`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from serving.images import (
    EncodedJpeg,
    decode_on_device,
    decode_scaled,
    is_complete_jpeg,
    open_checked,
    orientation,
    resize,
    to_chw,
)
from serving.models import DynamicCNN
from serving.models.build import hint_tensors
from serving.models.heads import DYNAMIC_HEADS, coherent_subcategories
from serving.onnx_backbone import OnnxBackbone, load_backbone
from serving.ontology import Ontology, load_ontology
from serving.registry import Entry, Registry, default_entry
from streamcore.exceptions import BadInput
from streamcore.schemas import Hints, Label, utcnow
from streamcore.settings import Settings

log = logging.getLogger(__name__)

_TOP = 5


def resolve_device(setting: str) -> torch.device:
    """``auto`` picks CUDA when present; anything else is taken literally."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


#: What :meth:`Predictor.prepare` hands to :meth:`Predictor.stage`.
Prepared = torch.Tensor | EncodedJpeg


@dataclass
class Staged:
    """A batch on the device; ``rows`` maps batch rows to the caller's items, ``refused`` the rest."""

    images: torch.Tensor
    hint_categories: torch.Tensor
    hint_attributes: torch.Tensor
    hint_subcategories: torch.Tensor
    rows: list[int]
    refused: dict[int, BadInput]


@dataclass
class Scores:
    """Host copy of one batch's top-k per level, its routes and whether hints steered it."""

    table: np.ndarray
    rows: list[int]
    refused: dict[int, BadInput]
    #: ``[len(rows), C]`` float16 image embeddings (L2-normalised pooled trunk features), when asked for.
    embeddings: np.ndarray | None = None


class Predictor:
    """A loaded model plus everything needed to turn its outputs into labels."""

    def __init__(self, model: DynamicCNN, ontology: Ontology, *, version: str, device: torch.device,
                 cpu_forward_batch: int | None = None, backbone: OnnxBackbone | None = None) -> None:
        self.device = device
        #: The backbone through ONNX Runtime (the head stays in PyTorch); None: the model runs eager.
        self.backbone = backbone
        self.runtime = "torch" if backbone is None else backbone.kind
        self.cuda = device.type == "cuda"
        # channels_last: the layout cuDNN's fastest convolution kernels (and oneDNN's) want.
        self.model = model.to(device, memory_format=torch.channels_last).eval()
        self.ontology = ontology
        self.version = version
        self.head = model.config.head
        self._size = model.preprocess.image_size
        self._names = (ontology.category_names, ontology.subcategory_names, ontology.attribute_names)
        config = model.config
        # A multi-label model lists every category above its floor, so all of them come back from the device.
        listed = len(self._names[0]) if config.multi and config.label_floor > 0 else _TOP
        self._k = (min(listed, len(self._names[0])), *(min(_TOP, len(n)) for n in self._names[1:]))
        self._floor = config.label_floor if config.multi else 0.0
        self._abstain_below = config.abstain_below if config.multi else 0.0
        self._parent = [ontology.category_names[int(k)] for k in model.head.subcategory_parent.tolist()]
        self._sub_ids = ontology.subcategory_ids
        self._copy_stream = torch.cuda.Stream(device) if self.cuda else None
        # Forward chunk: the whole batch on a GPU; on a CPU at most ``cpu_forward_batch`` (None: no limit).
        self._chunk = None if self.cuda else cpu_forward_batch

    @classmethod
    def load(cls, settings: Settings, version: str | None = None, *, entry: Entry | None = None) -> Predictor:
        """``entry``, else ``version`` (or the registry's newest) loaded; the packaged default model when the
        registry is empty."""
        ontology = load_ontology()
        device = resolve_device(settings.serving.device)
        registry = Registry(settings.serving.model_dir)
        found = entry or (registry.get(version) if version else registry.newest())
        if found is None:
            found = default_entry()
            log.warning("no checkpoint in %s: serving the packaged default model %s", settings.serving.model_dir, found.version)
        model = found.load(device=device)
        backbone = load_backbone(found.path, settings.serving.runtime, device,
                                 parallelism=settings.serving.cpu_parallelism)
        if model.config.head != settings.trainer.head:  # the head is the checkpoint's; the setting is what the trainer trains
            log.warning("serving %s with head %s; STYLESTREAM_HEAD=%s applies to the models the trainer trains next",
                        found.version, model.config.head, settings.trainer.head)
        log.info("serving %s on %s (%s)", found.version, device, "PyTorch eager" if backbone is None else
                 f"ONNX Runtime {backbone.kind} backbone, {backbone.providers[0]}")
        return cls(model, ontology, version=found.version, device=device, cpu_forward_batch=settings.serving.cpu_forward_batch,
                   backbone=backbone)

    @property
    def image_size(self) -> int:
        """Side of the square input the model takes."""
        return self._size

    # -- 0. per image (decode threads) ------------------------------------------------------------
    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """Resize to the model's input size; uint8 ``[3, S, S]`` (normalisation happens on the device)."""
        return torch.from_numpy(to_chw(image, self._size))

    def prepare(self, data: bytes, *, max_pixels: int) -> Prepared:
        """Check an image and make it ready for :meth:`stage`: complete RGB/grey JPEGs stay encoded when
        the model is on CUDA (nvJPEG decodes them in batches); the rest is decoded here, DCT-downscaled.

        Raises:
            BadInput: the image is refused (see :mod:`serving.images`).
        """
        if self.cuda:
            img = open_checked(data, max_pixels=max_pixels)
            if img.format == "JPEG" and img.mode in ("RGB", "L") and is_complete_jpeg(data):
                return EncodedJpeg(data, orientation(img))
        return torch.from_numpy(decode_scaled(data, self._size, max_pixels=max_pixels))

    # -- 1. batch to device (prep thread) ---------------------------------------------------------
    @torch.inference_mode()
    def stage(self, images: Sequence[Prepared], hints: Sequence[Hints | None]) -> Staged:
        """Put a batch of prepared images and their hints on the device (see the module docstring)."""
        if self._copy_stream is None:
            return self._stage(images, hints)
        with torch.cuda.stream(self._copy_stream):
            staged = self._stage(images, hints)
        self._copy_stream.synchronize()  # the model thread then reads finished tensors
        return staged

    def _stage(self, images: Sequence[Prepared], hints: Sequence[Hints | None]) -> Staged:
        placed: dict[int, torch.Tensor] = {}
        refused: dict[int, BadInput] = {}
        decoded = [i for i, img in enumerate(images) if isinstance(img, torch.Tensor)]
        if decoded:
            host = torch.stack([self._fit(images[i]) for i in decoded])
            if self.cuda:
                host = host.pin_memory()
            for i, row in zip(decoded, host.to(self.device, non_blocking=self.cuda)):
                placed[i] = row
        encoded = [i for i, img in enumerate(images) if isinstance(img, EncodedJpeg)]
        if encoded:
            for i, out in zip(encoded, decode_on_device([images[i] for i in encoded], self._size, self.device)):
                if isinstance(out, BadInput):
                    refused[i] = out
                else:
                    placed[i] = out
        rows = sorted(placed)
        size = (0, 3, self._size, self._size)
        batch = torch.stack([placed[i] for i in rows]) if rows else torch.empty(size, dtype=torch.uint8, device=self.device)
        cat, sub, att = (t.pin_memory() if self.cuda else t for t in hint_tensors([hints[i] for i in rows], self.ontology))
        cat, sub, att = (t.to(self.device, non_blocking=self.cuda) for t in (cat, sub, att))
        return Staged(batch, cat, att, sub, rows, refused)

    def _fit(self, image: torch.Tensor) -> torch.Tensor:
        # Images prepared for a previous model (a swap between decode and batch) may have another size.
        if image.shape[-1] == self._size and image.shape[-2] == self._size:
            return image
        return resize(image[None], self._size)[0]


    # -- 2. forward + top-k (model thread) --------------------------------------------------------
    @torch.inference_mode()
    def infer(self, staged: Staged, *, embeddings: bool = False) -> Scores:
        """Run the model on a staged batch; top-k on the device, one copy of the results to the host (and
        one of the image embeddings with ``embeddings``)."""
        if not staged.rows:
            return Scores(np.zeros((0, 0), dtype=np.float32), [], staged.refused)
        tensors = (staged.images, staged.hint_categories, staged.hint_attributes, staged.hint_subcategories)
        if self.cuda:  # allocated on the copy stream, used on this one
            for tensor in tensors:
                tensor.record_stream(torch.cuda.current_stream(self.device))
        chunk = self._chunk or len(staged.rows)
        outs = [self._forward(*(t[i: i + chunk] for t in tensors)) for i in range(0, len(staged.rows), chunk)]
        table, features = (outs[0][n] if len(outs) == 1 else torch.cat([o[n] for o in outs]) for n in (0, 1))
        return Scores(table.cpu().numpy(), staged.rows, staged.refused,
                      F.normalize(features.float(), dim=1).half().cpu().numpy() if embeddings else None)

    def _forward(self, images: torch.Tensor, hint_cat: torch.Tensor, hint_att: torch.Tensor,
                 hint_sub: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward; the packed table ``[top-k values, indices per level | routes | hinted categories |
        any hint]`` and the pooled trunk features, on the device."""
        if self.backbone is not None:  # the exported graph normalises the uint8 batch itself
            features = self.backbone(images)
        else:
            x = self.model.preprocess(images).contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, enabled=self.cuda):
                features = self.model.backbone(x)
        with torch.autocast(self.device.type, enabled=self.cuda):
            out = self.model.classify(features, hint_cat, hint_att, hint_sub)
        cat, sub = out.categories.float(), out.subcategories.float()
        multi = self.model.config.multi
        if not multi:  # the top sub-category lies under the top category
            sub = coherent_subcategories(cat, sub, self.model.head.subcategory_parent)
        probs = (torch.sigmoid(cat) if multi else torch.softmax(cat, 1), torch.sigmoid(sub),
                 torch.sigmoid(out.attributes.float()))
        parts = []
        for p, k in zip(probs, self._k):
            values, indices = p.topk(k, dim=1)
            parts += [values, indices.float()]
        any_hint = (hint_cat.abs().sum(1) + hint_sub.abs().sum(1) + hint_att.abs().sum(1) > 0)[:, None]
        return torch.cat([*parts, out.routes.float(), (hint_cat > 0).float(), any_hint.float()], 1), features

    # -- 3. label JSON ----------------------------------------------------------------------------
    def label_json(self, scores: Scores, post_ids: Sequence[str], timestamps_ms: Sequence[int]) -> list[bytes | BadInput]:
        """Per item, its ``label/v1`` JSON, or the :class:`BadInput` its image was refused with."""
        results: list[bytes | BadInput] = [scores.refused.get(i) for i in range(len(post_ids))]
        if not scores.rows:
            return results
        table = scores.table
        cuts = np.cumsum([0, *(k for k in self._k for _ in range(2))])
        terms = []
        for level, names in enumerate(self._names):
            values = np.round(table[:, cuts[2 * level]: cuts[2 * level + 1]].astype(np.float64), 6).tolist()
            indices = table[:, cuts[2 * level + 1]: cuts[2 * level + 2]].astype(np.int64).tolist()
            terms.append([[{"term": names[j], "score": v} for v, j in zip(vs, js)] for vs, js in zip(values, indices)])
        n_cat = len(self._names[0])
        routes = table[:, cuts[-1]: cuts[-1] + n_cat] > 0.5
        hinted_categories = table[:, cuts[-1] + n_cat: cuts[-1] + 2 * n_cat] > 0.5
        any_hint = table[:, -1] > 0.5
        categories = self._names[0]
        labeled_at = utcnow().isoformat()
        for row, i in enumerate(scores.rows):
            label = {
                "schema": "label/v1", "post_id": post_ids[i], "model_version": self.version, "head": self.head,
                **self._listed(terms[0][row], terms[1][row], terms[2][row]),
                "hints_used": _hints_used(self.head, routes[row], hinted_categories[row], bool(any_hint[row]),
                                          categories),
                "received_at": datetime.fromtimestamp(timestamps_ms[i] / 1000, UTC).isoformat(),
                "labeled_at": labeled_at,
            }
            if not label["categories"] and self._abstain_below > 0:
                label["abstain"] = "no_garment"
            results[i] = json.dumps(label, separators=(",", ":")).encode()
        return results

    def _listed(self, categories: list[dict], subcategories: list[dict], attributes: list[dict]) -> dict:
        """One label's ranked terms: every category at or above the floor, and sub-categories under them; none
        at all when the top category is below the abstain bar (the photo shows no garment)."""
        if self._floor <= 0 and self._abstain_below <= 0:
            return {"categories": categories, "subcategories": subcategories, "attributes": attributes}
        if not categories or categories[0]["score"] < self._abstain_below:
            return {"categories": [], "subcategories": [], "attributes": []}
        shown = [t for t in categories if t["score"] >= self._floor] or categories[:1]
        names = {t["term"] for t in shown}
        subs = [t for t in subcategories if t["score"] >= self._floor and self._parent[self._sub_ids[t["term"]]] in names]
        return {"categories": shown, "subcategories": subs,
                "attributes": [t for t in attributes if t["score"] >= self._floor]}

    def predict(self, images: Sequence[Prepared], hints: Sequence[Hints | None], post_ids: Sequence[str],
                timestamps_ms: Sequence[int]) -> list[Label]:
        """All three steps in one call, as validated :class:`Label` objects (tests, smoke checks, tools).

        Raises:
            BadInput: an image was refused on the device.
        """
        out = self.label_json(self.infer(self.stage(images, hints)), post_ids, timestamps_ms)
        for result in out:
            if isinstance(result, BadInput):
                raise result
        return [Label.model_validate_json(raw) for raw in out]


def _hints_used(head: str, route: np.ndarray, hinted: np.ndarray, any_hint: bool, categories: Sequence[str]) -> dict:
    """What steered one label: nothing (Base), the text (any hint), or the image's own prediction (a dynamic
    head whose text was silent)."""
    if head in DYNAMIC_HEADS:
        steered = route
    elif any_hint and head != "base":  # late fusion reads every hint, routes nothing
        steered = hinted
    else:
        return {"source": "none", "categories": []}
    return {"source": "mined" if any_hint else "predicted", "categories": [categories[k] for k in np.flatnonzero(steered)]}
