"""Hot-swapping the serving model: load in the background, verify, swap between two batches.

A version is loaded on its own thread (serving continues on the old model), its weights checksum is
verified, it is rebuilt from safetensors (never unpickled) with strict shapes, and a smoke inference must
give finite outputs of the right shape. Only then does the reference change; a batch already in the
model finishes on the old one. A version that fails any check is refused, reported, and not loaded again
while its files stay as they were: once they change on disk (a repair), the next offer loads it again.

At start-up there is no old model to keep: :func:`load_last_good` serves the wanted version if it passes
the same checks, else the last good one (the registry's verified list, most recent first), else the
newest valid version, and ultimately the packaged default. Every version that passes is recorded as
verified, so the next start knows the last good one.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from serving.predict import Predictor
from serving.registry import Registry, check_version_name, default_entry
from streamcore.metrics import StageMetrics
from streamcore.settings import Settings

log = logging.getLogger(__name__)

#: A version directory as :func:`fingerprint` sees it (None: no such directory, or not a version name).
Fingerprint = frozenset[tuple[str, int, int, int, int]] | None


def fingerprint(directory: Path) -> Fingerprint:
    """Each entry of ``directory`` as (name, size, mtime_ns, ctime_ns, inode), from ``stat`` alone.

    What tells a refused version repaired from one left as it was, polled each time the refused version is
    offered: a handful of ``stat`` calls and no file read, where loading it again hashes every listed file and
    rebuilds the model. Name, size and mtime see an edit or a rewrite; ctime and inode see what they miss, a
    restore that keeps the size and sets the mtime back (``cp -p``, ``rsync -a``, ``mv`` of a backup): the
    kernel sets ctime on every write, rename or chmod and no call sets it back, and a file replaced by a
    rename is a new inode. Hashing would be exact but costs what the load costs, each poll. A change that
    alters nothing of the content (``touch``, a chmod) costs one more load, refused and counted again; only a
    rewrite in place within the clock tick of the refused load, of the same size, goes unseen (publishing
    or touching the version again then retries it). Entries that vanish while read are skipped.
    """
    seen = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                seen.append((entry.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    except OSError:
        return None
    return frozenset(seen)


def version_fingerprint(settings: Settings, version: str) -> Fingerprint:
    """:func:`fingerprint` of a version's directory in the registry."""
    try:
        return fingerprint(Path(settings.serving.model_dir) / check_version_name(version))
    except ValueError:  # not a version name: it never becomes one
        return None


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
                 refused: Iterable[str] | None = None) -> None:
        self.settings = settings
        self.current = predictor
        self.metrics = metrics
        #: Versions that failed their checks, with their files as they were when loaded: not tried again until
        #: those change (a repair). Those that failed at start-up are taken as they are now.
        self.refused: dict[str, Fingerprint] = {v: self._fingerprint(v) for v in refused or ()}
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")
        self._loading: asyncio.Task | None = None
        self._wanted: str | None = None  # the newest version offered: a load that finishes late swaps only to it
        metrics.model.info({"version": predictor.version, "head": predictor.head, "runtime": predictor.runtime})

    def offer(self, version: str | None) -> asyncio.Task | None:
        """Start loading ``version`` in the background if it is new, and not refused with its files unchanged
        since; returns the loading task."""
        if version:
            self._wanted = version
        if (not version or version == self.current.version
                or (self._loading is not None and not self._loading.done())):
            return None
        if version in self.refused:
            if self._fingerprint(version) == self.refused[version]:
                return None
            log.warning("model %s was refused and its files changed since: loading it again", version)
        self._loading = asyncio.get_running_loop().create_task(self._swap(version))
        return self._loading

    async def swap_to(self, version: str) -> bool:
        """Load, verify and swap to ``version``; False (and the old model keeps serving) if it fails, or if
        another version was offered while it loaded (a rollback during the load must not serve what it undid)."""
        self._wanted = version
        return await self._swap(version)

    async def _swap(self, version: str) -> bool:
        # Taken before the load: files repaired while a load fails are a change the next offer sees.
        before = self._fingerprint(version)
        try:
            candidate = await asyncio.get_running_loop().run_in_executor(self._loader, self._load_verified, version)
        except Exception as exc:  # noqa: BLE001 - any failure refuses the checkpoint, never the worker
            self.refused[version] = before
            self.metrics.swaps.labels("failure").inc()
            log.error("model %s refused, still serving %s (not tried again until its files change): %s: %s",
                      version, self.current.version, type(exc).__name__, exc)
            return False
        self.refused.pop(version, None)  # it passed: repaired, if it was refused
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

    def _fingerprint(self, version: str) -> Fingerprint:
        return version_fingerprint(self.settings, version)

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
