"""Which model the trainer's next run continues, and so what a correction may say.

A run continues the model that serves: the version the serving pointer names, or while nothing is promoted
what a classifier then serves (the registry's newest version, else the packaged real-photo model), unless
``start_from="benchmark"`` asks for a model trained from scratch on the synthetic benchmark. A correction of a
multi-label model (the packaged one: a street photo shows several garments) may name several categories; one
of a single-label model names exactly one. The trainer, when it joins a correction, and the review page, when
it takes one, ask the same question here.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from serving.checkpoint import load_config
from serving.registry import Entry, Registry
from streamcore.settings import Settings

log = logging.getLogger(__name__)


def continued_entry(settings: Settings, version: str | None) -> Entry | None:
    """The checkpoint a run continues; ``None`` for a cold start on the benchmark.

    Args:
        version: the serving pointer's value (``None`` while nothing is promoted).
    """
    registry = Registry(settings.serving.model_dir)
    if version is not None:
        try:
            return registry.get(version)
        except (KeyError, ValueError) as exc:  # a bad pointer must not stop corrections being taken
            log.warning("the serving pointer %r names no published version (%s)", version, exc)
    if settings.trainer.start_from != "packaged":
        return None
    return registry.unpromoted()


def learns_multi(settings: Settings, version: str | None) -> bool:
    """Whether the model a run continues takes several categories per photo (so may a correction). A version
    whose config cannot be read (damaged on disk) is answered for as a bad pointer is: by what serves unpromoted."""
    for candidate in dict.fromkeys([version, None]):
        entry = continued_entry(settings, candidate)
        if entry is None:
            break
        try:
            return _multi(entry.path)
        except (OSError, ValueError) as exc:  # a bad checkpoint must not turn corrections into dead letters
            log.warning("the config of %s cannot be read (%s: %s)", entry.version, type(exc).__name__, exc)
    return settings.trainer.multi


@lru_cache(maxsize=64)
def _multi(checkpoint: Path) -> bool:
    # A published checkpoint never changes: asked per correction, its config is read once.
    return load_config(checkpoint).multi
