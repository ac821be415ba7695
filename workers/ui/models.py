"""The model page's facts, all from Redis and the registry: which version serves, how it came to serve
(the promotion log), and how often each version's labels agree with people's corrections (the live
guard's tallies, the numbers it rolls back on)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from serving.checkpoint import METRICS_FILE
from serving.registry import Registry
from streamcore.settings import Settings

#: The figure the page shows per version: the first of these its checkpoint's metrics hold.
_FIGURES = (("mined.P@1", "P@1, held-out posts with hints"), ("test.P@1", "P@1, held-out posts"),
            ("main.single_garment.mAP", "mAP, real single-garment photos"))


def _figure(metrics: dict, dotted: str) -> float | None:
    value: Any = metrics
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _registry_figures(model_dir: Path, versions: list[str]) -> dict[str, dict[str, Any]]:
    """Per version found in the registry, its headline figure: ``{"name", "value"}``."""
    registry = Registry(model_dir)
    known = set(registry.versions())
    out: dict[str, dict[str, Any]] = {}
    for version in versions:
        path = registry.get(version).path / METRICS_FILE if version in known else None
        if path is None or not path.exists():
            continue
        try:
            metrics = json.loads(path.read_text())
        except ValueError:
            continue
        for key, name in _FIGURES:
            if (value := _figure(metrics, key)) is not None:
                out[version] = {"name": name, "value": value}
                break
    return out


async def model_facts(settings: Settings, client: Redis) -> dict[str, Any]:
    """What ``/api/model`` answers: serving version, promotion log, per-version agreement and figures."""
    keys = settings.redis.keys
    async with client.pipeline(transaction=False) as pipe:
        pipe.get(keys.model_current)
        pipe.lrange(keys.model_history, 0, -1)
        pipe.lrange(keys.model_events, 0, -1)
        current, history, events = await pipe.execute()
    serving = current.decode() if current else None
    history = [v.decode() for v in history]
    log = []
    for raw in events:
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        if isinstance(event, dict):
            log.append({k: str(event.get(k, "")) for k in ("kind", "version", "at", "reason")})
    versions = list(dict.fromkeys([*([serving] if serving else []), *history, *(e["version"] for e in log)]))
    async with client.pipeline(transaction=False) as pipe:
        for version in versions:
            pipe.hmget(keys.guard(version), ["agree", "total"])
        tallies = await pipe.execute()
    figures = await asyncio.get_running_loop().run_in_executor(None, _registry_figures, settings.serving.model_dir, versions)
    rows = []
    for version, (agree, total) in zip(versions, tallies):
        agree, total = int(agree or 0), int(total or 0)
        rows.append({"version": version, "serving": version == serving, "agree": agree, "corrections": total,
                     "agreement": agree / total if total else None, "figure": figures.get(version)})
    return {"serving": serving, "history": history, "events": log, "versions": rows,
            "guard": {"margin": settings.trainer.guard_margin, "min_corrections": settings.trainer.guard_min_corrections}}
