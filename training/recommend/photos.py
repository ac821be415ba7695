"""Held-out real photos through the packaged model: labels, label vectors and embeddings, cached.

Only held-out splits are read: the validation split (to choose a ranking and its parameters) and the test
split (to report it) of the clothing dataset and of Clothing Co-Parsing photos 0001-1004 (whole photos, not
the background boxes), as the manifests under ``/work/data`` define them. Photos past 1004 are refused here
too, whatever a manifest says.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from serving.models.embedding import region_embeddings
from serving.ontology import Ontology
from serving.predict import Predictor
from serving.registry import default_entry
from streamcore.settings import Settings
from training.real.images import load_records
from training.real.manifest import Record, read_manifest
from training.recommend.vectors import Layout

_CCP_PHOTO = re.compile(r"photos/(\d{4})\.\w+$")
_LAST_ALLOWED_CCP = 1004


HELD_OUT = ("val", "test")


def held_out_records(manifests: list[Path], ontology: Ontology, split: str = "test") -> list[Record]:
    """Whole photos of one held-out split with at least one garment; Co-Parsing photos past 1004 raise."""
    if split not in HELD_OUT:
        raise ValueError(f"split must be one of {HELD_OUT}, got {split!r}")
    out = []
    for manifest in manifests:
        for record in read_manifest(manifest, ontology):
            number = _CCP_PHOTO.search(record.image)
            if number and int(number.group(1)) > _LAST_ALLOWED_CCP:
                raise ValueError(f"{record.image}: Co-Parsing photos past {_LAST_ALLOWED_CCP} are held out")
            if record.split_of() == split and record.box is None and record.categories:
                out.append(record)
    return out


@dataclass
class Embedded:
    """Per photo: ground-truth categories, the served label's vector, and embeddings ``[N, 4, C]``."""

    images: list[str]
    sources: list[str]
    truth: list[list[str]]
    labels: np.ndarray
    embeddings: np.ndarray
    version: str
    seconds_per_image: dict[str, float]
    #: Per photo, the region of it shown (left, top, right, bottom), or None for the whole photo.
    boxes: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.boxes = list(self.boxes) or [None] * len(self.images)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"images": self.images, "sources": self.sources, "truth": self.truth, "version": self.version,
                "seconds_per_image": self.seconds_per_image, "boxes": self.boxes}
        np.savez_compressed(path, labels=self.labels, embeddings=self.embeddings, meta=json.dumps(meta))

    def joined(self, other: Embedded) -> Embedded:
        """These photos and then ``other``'s, embedded by the same model."""
        if other.version != self.version:
            raise ValueError(f"embedded by {self.version} and by {other.version}: not one embedding space")
        return Embedded(self.images + other.images, self.sources + other.sources, self.truth + other.truth,
                        np.concatenate([self.labels, other.labels]),
                        np.concatenate([self.embeddings, other.embeddings]), self.version, self.seconds_per_image,
                        self.boxes + other.boxes)

    def subset(self, rows: list[int]) -> Embedded:
        """These photos' ``rows``, in that order."""
        return Embedded([self.images[i] for i in rows], [self.sources[i] for i in rows], [self.truth[i] for i in rows],
                        self.labels[rows], self.embeddings[rows], self.version, self.seconds_per_image,
                        [self.boxes[i] for i in rows])

    @classmethod
    def load(cls, path: Path) -> Embedded:
        data = np.load(path)
        meta = json.loads(str(data["meta"]))
        return cls(meta["images"], meta["sources"], meta["truth"], data["labels"], data["embeddings"],
                   meta["version"], meta["seconds_per_image"], [tuple(b) if b else None for b in meta.get("boxes", [])])


def embed_records(records: list[Record], predictor: Predictor, layout: Layout, *, batch: int = 32) -> Embedded:
    """Label vectors as served (the label JSON's terms), the served embedding, and band embeddings.

    Also times the served batch path with and without the embedding output (what it costs the classifier).
    """
    images, errors = load_records(records, predictor.image_size, desc="photos")
    keep = [i for i, e in enumerate(errors) if not e]
    labels, rows, timing = [], [], {"infer": 0.0, "infer_with_embeddings": 0.0}
    for start in range(0, len(keep), batch):
        chunk = keep[start: start + batch]
        staged = predictor.stage([torch.from_numpy(images[i]) for i in chunk], [None] * len(chunk))
        t0 = time.perf_counter()
        predictor.infer(staged)
        t1 = time.perf_counter()
        scores = predictor.infer(staged, embeddings=True)
        timing["infer_with_embeddings"] += time.perf_counter() - t1
        timing["infer"] += t1 - t0
        for raw in predictor.label_json(scores, [str(i) for i in chunk], [0] * len(chunk)):
            labels.append(layout.label_vector(json.loads(raw)))
        bands = _bands(predictor, staged.images)
        # The served embedding is the band pooling's whole-photo row: keep the served one.
        bands[:, 0] = scores.embeddings.astype(np.float32)
        rows.append(bands)
    per_image = {k: round(v / max(1, len(keep)), 5) for k, v in timing.items()}
    per_image["best_of_5_one_batch"] = embedding_cost(predictor, images[keep[:batch]])
    return Embedded([records[i].image for i in keep], [records[i].source for i in keep],
                    [list(records[i].categories or []) for i in keep], np.stack(labels), np.concatenate(rows),
                    predictor.version, per_image, [records[i].box for i in keep])


def embedding_cost(predictor: Predictor, images: np.ndarray, *, repeats: int = 5) -> dict:
    """What the embedding output adds to the served forward, in seconds per batch: the forward (fastest of
    ``repeats``: the run a busy machine disturbed least) against the added step alone (normalise, halve,
    copy to the host; fastest of 100). The forward itself is the same either way: the pooled features it
    returns were computed for the head already."""
    staged = predictor.stage([torch.from_numpy(i) for i in images], [None] * len(images))
    forward = min(_timed(lambda: predictor.infer(staged)) for _ in range(repeats))
    features = torch.randn(len(images), predictor.model.backbone.out_features)
    added = min(_timed(lambda: torch.nn.functional.normalize(features, dim=1).half().cpu().numpy())
                for _ in range(100))
    return {"forward_s": round(forward, 4), "added_s": round(added, 6), "batch": len(images),
            "added_fraction": round(added / forward, 6)}


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


@torch.inference_mode()
def _bands(predictor: Predictor, images: torch.Tensor) -> np.ndarray:
    model = predictor.model
    fmap = model.backbone.features(model.preprocess(images).contiguous(memory_format=torch.channels_last))
    return region_embeddings(fmap).numpy()


def embedded_photos(manifests: list[Path], cache: Path, ontology: Ontology, split: str = "test") -> Embedded:
    """One held-out split's photos embedded by the packaged model on the CPU (cached at ``cache``, used only
    while the packaged model is the one that embedded them)."""
    return cached_embedding(cache, lambda: held_out_records(manifests, ontology, split), ontology)


def cached_embedding(cache: Path, records: Callable[[], list[Record]], ontology: Ontology) -> Embedded:
    """``records()`` embedded by the packaged model on the CPU, or the copy at ``cache`` that model made."""
    if cache.exists():
        cached = Embedded.load(cache)
        if cached.version == default_entry().version:
            return cached
    predictor = Predictor.load(Settings.named(device="cpu", model_dir=Path("/nonexistent-registry")))
    embedded = embed_records(records(), predictor, Layout(ontology))
    embedded.save(cache)
    return embedded
