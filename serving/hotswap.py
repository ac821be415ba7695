"""Hot-swapping the serving model: load in the background, verify, swap between two batches.

A version is loaded on its own thread (serving continues on the old model), its weights checksum is
verified, it is rebuilt from safetensors (never unpickled) with strict shapes, and a smoke inference must
give finite outputs of the right shape. Only then does the reference change; a batch already in the
model finishes on the old one. A version that fails any check is refused once, reported, and not retried.

At start-up there is no old model to keep: :func:`load_last_good` serves the wanted version if it passes
the same checks, else the last good one (the registry's verified list, most recent first), else the
newest valid version, and ultimately the packaged default. Every version that passes is recorded as
verified, so the next start knows the last good one.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from serving.predict import Predictor
from serving.registry import Registry, default_entry
from streamcore.metrics import StageMetrics
from streamcore.settings import Settings

log = logging.getLogger(__name__)


def smoke_test(predictor: Predictor) -> None:
    """One inference on a blank image, with and without a hint.

    A model may abstain on a blank image (a multi-label model with a "no garment" threshold): empty
    categories pass, scores that are not finite or outside [0, 1] do not.

    Raises:
        ValueError: outputs are not finite or do not match the ontology's index spaces.
    """
    size = predictor.model.preprocess.image_size
    image = torch.full((3, size, size), 128, dtype=torch.uint8)
    scores = predictor.infer(predictor.stage([image, image], [None, None]))
    if scores.table.shape[0] != 2 or not np.isfinite(scores.table).all():
        raise ValueError(f"smoke inference gave {scores.table.shape[0]} rows or non-finite outputs")
    labels = predictor.predict([image, image], [None, None], ["smoke-0", "smoke-1"], [0, 0])
    for label in labels:
        values = [t.score for t in (*label.categories, *label.subcategories, *label.attributes)]
        if not all(0.0 <= s <= 1.0 for s in values):
            raise ValueError(f"smoke inference gave invalid scores: {values[:5]}")


def _load_checked(settings: Settings, version: str | None) -> Predictor:
    """``version`` (None: the packaged default) loaded, verified and smoke-tested."""
    predictor = Predictor.load(settings, entry=default_entry()) if version is None else Predictor.load(settings, version)
    if version is not None and predictor.version != version:
        raise ValueError(f"registry has no version {version!r}")
    smoke_test(predictor)
    return predictor


def load_last_good(settings: Settings, wanted: str | None, metrics: StageMetrics) -> tuple[Predictor, set[str]]:
    """The model to start serving, and the versions that failed their checks on the way.

    ``wanted`` is the serving pointer (None: none set, then the newest version is wanted). A pointer
    naming a version that fails is logged once and counted (``stylestream_model_bad_pointer_total``).

    Raises:
        Exception: no version, nor the packaged default, passes its checks (the last failure).
    """
    registry = Registry(settings.serving.model_dir)
    newest = registry.versions()[::-1]
    candidates = list(dict.fromkeys([wanted or (newest[0] if newest else None), *registry.verified()[::-1], *newest]))
    failed: set[str] = set()
    for version in [c for c in candidates if c is not None] + [None]:
        try:
            predictor = _load_checked(settings, version)
        except Exception as exc:
            if version is None:
                raise
            failed.add(version)
            if version == wanted:
                metrics.bad_model.inc()
                log.error("serving pointer names %s, which fails its checks (%s: %s); serving the last good version",
                          version, type(exc).__name__, exc)
            else:
                log.error("model %s fails its checks (%s: %s); trying an older one", version, type(exc).__name__, exc)
            continue
        if version is not None:
            registry.mark_verified(version)
        if failed:
            log.warning("serving %s instead of %s", predictor.version, ", ".join(sorted(failed)))
        return predictor, failed
    raise AssertionError("unreachable: the packaged default is the last candidate")


class ModelSlot:
    """Holds the serving :class:`Predictor` and replaces it when the registry pointer moves."""

    def __init__(self, settings: Settings, predictor: Predictor, metrics: StageMetrics, *,
                 refused: set[str] | None = None) -> None:
        self.settings = settings
        self.current = predictor
        self.metrics = metrics
        self.refused: set[str] = set(refused or ())  # versions that failed their checks: not tried again
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")
        self._loading: asyncio.Task | None = None
        self._wanted: str | None = None  # the newest version offered: a load that finishes late swaps only to it
        metrics.model.info({"version": predictor.version, "head": predictor.head, "runtime": predictor.runtime})

    def offer(self, version: str | None) -> asyncio.Task | None:
        """Start loading ``version`` in the background if it is new; returns the loading task."""
        if version:
            self._wanted = version
        if (not version or version == self.current.version or version in self.refused
                or (self._loading is not None and not self._loading.done())):
            return None
        self._loading = asyncio.get_running_loop().create_task(self._swap(version))
        return self._loading

    async def swap_to(self, version: str) -> bool:
        """Load, verify and swap to ``version``; False (and the old model keeps serving) if it fails, or if
        another version was offered while it loaded (a rollback during the load must not serve what it undid)."""
        self._wanted = version
        return await self._swap(version)

    async def _swap(self, version: str) -> bool:
        try:
            candidate = await asyncio.get_running_loop().run_in_executor(self._loader, self._load_verified, version)
        except Exception as exc:  # noqa: BLE001 - any failure refuses the checkpoint, never the worker
            self.refused.add(version)
            self.metrics.swaps.labels("failure").inc()
            log.error("model %s refused, still serving %s: %s: %s", version, self.current.version,
                      type(exc).__name__, exc)
            return False
        if self._wanted != version:
            log.info("model %s loaded, but %s was offered since: not swapping", version, self._wanted)
            del candidate
            self._release()
            return False
        old, self.current = self.current, candidate
        self.metrics.swaps.labels("success").inc()
        self.metrics.model.info({"version": candidate.version, "head": candidate.head, "runtime": candidate.runtime})
        log.info("model swapped %s -> %s", old.version, candidate.version)
        del old
        self._release()
        return True

    def _load_verified(self, version: str) -> Predictor:
        predictor = _load_checked(self.settings, version)
        Registry(self.settings.serving.model_dir).mark_verified(version)
        return predictor

    def _release(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def close(self) -> None:
        """Stop the loader thread."""
        self._loader.shutdown(wait=False, cancel_futures=True)
