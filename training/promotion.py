"""Promotion and rollback: move the Redis serving pointer and announce it on ``model-updates``."""

from __future__ import annotations

import json
from pathlib import Path

import redis
from kafka import KafkaProducer

from streamcore.exceptions import StylestreamError
from streamcore import redisconn
from streamcore.kafka import bootstrap, kafka_python_security
from streamcore.schemas import ModelUpdate, utcnow
from streamcore.serde import encode
from streamcore.settings import Settings
from training.checkpoint import METRICS_FILE
from training.registry import Entry, Registry

MODEL_NAME = b"stylestream"
_HISTORY_LENGTH = 100


def _flat_metrics(entry: Entry) -> dict[str, float]:
    """Numeric leaves of the checkpoint's metrics.json as ``a.b.c`` keys."""
    path = entry.path / METRICS_FILE
    flat: dict[str, float] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[prefix] = float(value)

    walk("", json.loads(path.read_text()) if path.exists() else {})
    return flat


def _announce(settings: Settings, entry: Entry) -> ModelUpdate:
    update = ModelUpdate(version=entry.version, path=str(entry.path), metrics=_flat_metrics(entry), promoted_at=utcnow())
    producer = KafkaProducer(bootstrap_servers=bootstrap(settings), acks="all", **settings.kafka_options,
                             **kafka_python_security(settings))
    try:
        producer.send(settings.topic("model-updates"), key=MODEL_NAME, value=encode(update)).get(timeout=30)
    finally:
        producer.close()
    return update


def _redis(settings: Settings) -> redis.Redis:
    if not settings.redis_url:
        raise StylestreamError("STYLESTREAM_REDIS_URL is not set: promotion moves the pointer in Redis")
    return redisconn.connect(settings)


def promote(settings: Settings, version: str) -> ModelUpdate:
    """Point ``<prefix>:model:current`` at a published ``version`` and announce it."""
    entry = Registry(settings.model_dir).get(version)
    store, keys = _redis(settings), settings.keys
    with store.pipeline() as pipe:
        pipe.set(keys.model_current, entry.version).lpush(keys.model_history, entry.version)
        pipe.ltrim(keys.model_history, 0, _HISTORY_LENGTH - 1)
        pipe.execute()
    return _announce(settings, entry)


def rollback(settings: Settings) -> ModelUpdate:
    """Serve the previously promoted version again.

    Raises:
        StylestreamError: there is no earlier promotion to go back to.
    """
    store, keys = _redis(settings), settings.keys
    history = [v.decode() for v in store.lrange(keys.model_history, 0, 1)]
    if len(history) < 2:
        raise StylestreamError("nothing to roll back to: fewer than two promotions recorded")
    entry = Registry(settings.model_dir).get(history[1])
    with store.pipeline() as pipe:
        pipe.lpop(keys.model_history).set(keys.model_current, entry.version)
        pipe.execute()
    return _announce(settings, entry)


def promote_path_or_version(settings: Settings, ckpt: str) -> ModelUpdate:
    """``stylestream promote``: a checkpoint directory is published first; anything else is a version."""
    if Path(ckpt).is_dir():
        ckpt = Registry(settings.model_dir).publish(Path(ckpt)).version
    return promote(settings, ckpt)
