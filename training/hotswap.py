"""Hot-swapping the serving model: load in the background, verify, swap between two batches.

A version is loaded on its own thread (serving continues on the old model), its weights checksum is
verified, it is rebuilt from safetensors (never unpickled) with strict shapes, and a smoke inference must
give finite outputs of the right shape. Only then does the reference change; a batch already in the
model finishes on the old one. A version that fails any check is refused once, reported, and not retried.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from concurrent.futures import ThreadPoolExecutor

import torch

from streamcore.metrics import StageMetrics
from streamcore.settings import Settings
from training.predict import Predictor

log = logging.getLogger(__name__)


def smoke_test(predictor: Predictor) -> None:
    """One inference on a blank image, with and without a hint.

    Raises:
        ValueError: outputs are not finite or do not match the ontology's index spaces.
    """
    size = predictor.model.preprocess.image_size
    image = torch.full((3, size, size), 128, dtype=torch.uint8)
    labels = predictor.predict([image, image], [None, None], ["smoke-0", "smoke-1"], [0, 0])
    for label in labels:
        scores = [t.score for t in (*label.categories, *label.subcategories, *label.attributes)]
        if not label.categories or not all(0.0 <= s <= 1.0 for s in scores):
            raise ValueError(f"smoke inference gave invalid scores: {scores[:5]}")


class ModelSlot:
    """Holds the serving :class:`Predictor` and replaces it when the registry pointer moves."""

    def __init__(self, settings: Settings, predictor: Predictor, metrics: StageMetrics) -> None:
        self.settings = settings
        self.current = predictor
        self.metrics = metrics
        self.refused: set[str] = set()
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")
        self._loading: asyncio.Task | None = None
        metrics.model.info({"version": predictor.version, "head": predictor.head, "runtime": predictor.runtime})

    def offer(self, version: str | None) -> asyncio.Task | None:
        """Start loading ``version`` in the background if it is new; returns the loading task."""
        if (not version or version == self.current.version or version in self.refused
                or (self._loading is not None and not self._loading.done())):
            return None
        self._loading = asyncio.get_running_loop().create_task(self.swap_to(version))
        return self._loading

    async def swap_to(self, version: str) -> bool:
        """Load, verify and swap to ``version``; False (and the old model keeps serving) if it fails."""
        try:
            candidate = await asyncio.get_running_loop().run_in_executor(self._loader, self._load_verified, version)
        except Exception as exc:  # noqa: BLE001 - any failure refuses the checkpoint, never the worker
            self.refused.add(version)
            self.metrics.swaps.labels("failure").inc()
            log.error("model %s refused, still serving %s: %s: %s", version, self.current.version,
                      type(exc).__name__, exc)
            return False
        old, self.current = self.current, candidate
        self.metrics.swaps.labels("success").inc()
        self.metrics.model.info({"version": candidate.version, "head": candidate.head, "runtime": candidate.runtime})
        log.info("model swapped %s -> %s", old.version, candidate.version)
        del old
        self._release()
        return True

    def _load_verified(self, version: str) -> Predictor:
        predictor = Predictor.load(self.settings, version)
        if predictor.version != version:
            raise ValueError(f"registry has no version {version!r}")
        smoke_test(predictor)
        return predictor

    def _release(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def close(self) -> None:
        """Stop the loader thread."""
        self._loader.shutdown(wait=False, cancel_futures=True)
