"""Promotion and rollback: move the Redis serving pointer and announce it on ``model-updates``."""

from __future__ import annotations

import json
import logging

import redis
from kafka import KafkaProducer
from kafka.errors import KafkaError

from serving.checkpoint import METRICS_FILE
from serving.registry import Entry, Registry
from streamcore import redisconn
from streamcore.exceptions import StylestreamError
from streamcore.kafka import bootstrap, kafka_python_security
from streamcore.kafka_options import KafkaOptionsError, blamed_on_options, options_for
from streamcore.lease import Lease, LeaseLost
from streamcore.schemas import ModelUpdate, utcnow
from streamcore.serde import encode
from streamcore.settings import Settings

log = logging.getLogger(__name__)

MODEL_NAME = b"stylestream"
_HISTORY_LENGTH = 100

# Move the pointer and record it (history, and the event ARGV[4] in the log KEYS[3]). KEYS[4] is the trainer's
# lease (ARGV[5] 'lease': only while it holds the token ARGV[3], and only if the pointer still names ARGV[6], the
# version the run was gated against, '' for none: an operator's promotion meanwhile wins) or, for a promotion by
# hand (ARGV[5] 'chosen'), the operator's choice, which the trainer's gate keeps as its floor (training.gate_run).
_PROMOTE = """
if ARGV[5] == 'lease' and redis.call('GET', KEYS[4]) ~= ARGV[3] then return 0 end
if ARGV[5] == 'lease' and ARGV[6] ~= '*' and (redis.call('GET', KEYS[1]) or '') ~= ARGV[6] then return -1 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
redis.call('LPUSH', KEYS[3], ARGV[4])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[2]) - 1)
if ARGV[5] == 'chosen' then redis.call('SET', KEYS[4], ARGV[1]) end
return 1
"""

# Roll back only from the expected current version (ARGV[1], '' = any) to the expected previous one; log
# the event ARGV[3] in KEYS[3] (kept as long as the history). The operator's choice KEYS[4] becomes the version
# rolled back to when an operator rolls back (ARGV[5] 'hand'), or when the version rolled back from was the choice:
# a version taken out of service is no floor for the trainer's gate or the live guard.
_ROLLBACK = """
local was = redis.call('GET', KEYS[1])
if ARGV[1] ~= '' and was ~= ARGV[1] then return 0 end
if redis.call('LINDEX', KEYS[2], 1) ~= ARGV[2] then return 0 end
if ARGV[5] == 'hand' or (was and redis.call('GET', KEYS[4]) == was) then redis.call('SET', KEYS[4], ARGV[2]) end
redis.call('LPOP', KEYS[2])
redis.call('SET', KEYS[1], ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[3])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[4]) - 1)
return 1
"""


def _event(kind: str, version: str, reason: str) -> str:
    """One entry of the promotion log (``RedisKeys.model_events``): what moved the pointer, when, and why."""
    return json.dumps({"kind": kind, "version": version, "at": utcnow().isoformat(), "reason": reason})


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
    """Tell ``model-updates`` that ``entry`` serves. Best effort: the pointer has already moved, and classifiers
    follow the pointer (every ``model_poll_s``), so a broker that is away delays nothing and undoes nothing."""
    update = ModelUpdate(version=entry.version, path=str(entry.path), metrics=_flat_metrics(entry), promoted_at=utcnow())
    try:
        given = options_for(KafkaProducer, settings.kafka.options)
        with blamed_on_options(KafkaProducer, given):
            producer = KafkaProducer(**{"bootstrap_servers": bootstrap(settings.kafka), "acks": "all", **given,
                                        **kafka_python_security(settings.security)})
        try:
            producer.send(settings.kafka.topic("model-updates"), key=MODEL_NAME, value=encode(update)).get(timeout=30)
        finally:
            producer.close()
    except (KafkaError, KafkaOptionsError) as exc:
        log.warning("%s serves (the pointer moved); announcing it on model-updates failed: %s: %s", entry.version,
                    type(exc).__name__, exc)
    return update


def _redis(settings: Settings) -> redis.Redis:
    if not settings.redis.url:
        raise StylestreamError("STYLESTREAM_REDIS_URL is not set: promotion moves the pointer in Redis")
    return redisconn.connect(settings.redis)


class PointerMoved(StylestreamError):
    """The serving pointer no longer names the version a trainer run was gated against (an operator promoted or
    rolled back meanwhile); the run must not replace their choice."""


def _loads(entry: Entry, refused: str) -> None:
    """Raise :class:`StylestreamError` (``refused``: what was not done) unless ``entry`` loads: a pointer at a version
    that does not would leave every classifier on its old model while the pointer names another."""
    try:
        entry.load()
    except Exception as exc:  # checksum, safetensors, torch and json each raise their own kind
        raise StylestreamError(f"{refused}: {entry.version} does not load: {type(exc).__name__}: "
                               f"{str(exc)[:300]}") from exc


def promote(settings: Settings, version: str, *, lease: Lease | None = None, reason: str | None = None,
            replaces: str | None = None) -> ModelUpdate:
    """Point ``<prefix>:model:current`` at a published ``version`` and announce it; ``reason`` goes to the log.

    Args:
        replaces: with ``lease``, promote only if the pointer still names this version (``""``: is unset).

    Raises:
        LeaseLost: ``lease`` was given and no longer holds its token; nothing moved.
        PointerMoved: the pointer no longer names ``replaces``; nothing moved.
        StylestreamError: the version does not load (its weights fail their checksum, or are truncated or of
            other shapes); nothing moved.
    """
    registry = Registry(settings.serving.model_dir)
    entry = registry.get(version)
    _loads(entry, "not promoted")
    keys = [settings.redis.keys.model_current, settings.redis.keys.model_history, settings.redis.keys.model_events]
    reason = reason or ("a trainer run passed the gate" if lease is not None else "promoted by hand")
    args = [entry.version, _HISTORY_LENGTH, (lease.token or "") if lease is not None else "",
            _event("promotion", entry.version, reason), "lease" if lease is not None else "chosen",
            "*" if replaces is None else replaces]
    keys.append(lease.key if lease is not None else settings.redis.keys.model_chosen)
    moved = _redis(settings).eval(_PROMOTE, len(keys), *keys, *args)
    if moved == 0:
        raise LeaseLost(f"lost the run lease before promoting {version}; another trainer holds it")
    if moved < 0:
        raise PointerMoved(f"not promoted: {version} was gated against {replaces or 'the unpromoted model'}, and the "
                           f"serving pointer moved since")
    # Classifiers may mount the registry read-only: the promoter records the version it loaded too.
    registry.mark_verified(entry.version)
    return _announce(settings, entry)


def rollback(settings: Settings, *, expected: str | None = None, reason: str | None = None,
             by_hand: bool = True) -> ModelUpdate:
    """Serve the previously promoted version again.

    Args:
        expected: roll back only if this version is the one serving (several guards may decide at once;
            only the first one moves the pointer).
        reason: why, for the promotion log.
        by_hand: an operator's rollback, which makes the version rolled back to their choice (the floor of the
            trainer's gate and the live guard); the guard's makes it so only when it replaces the choice.

    Raises:
        StylestreamError: there is no earlier promotion to go back to, it does not load, or ``expected`` no
            longer serves.
    """
    store, keys = _redis(settings), settings.redis.keys
    history = [v.decode() for v in store.lrange(keys.model_history, 0, 1)]
    if len(history) < 2:
        raise StylestreamError("nothing to roll back to: " + ("no promotion is recorded" if not history else
                               f"{history[0]} is the only promotion recorded; the packaged model served before "
                               "it: stylestream promote default"))
    registry = Registry(settings.serving.model_dir)
    entry = registry.get(history[1])
    _loads(entry, "not rolled back")
    event = _event("rollback", entry.version, reason or "rolled back by hand")
    if not store.eval(_ROLLBACK, 4, keys.model_current, keys.model_history, keys.model_events, keys.model_chosen,
                      expected or "", entry.version, event, _HISTORY_LENGTH, "hand" if by_hand else "guard"):
        raise StylestreamError(f"not rolled back: {expected or 'the serving version'} no longer serves "
                               f"or the promotion history changed")
    registry.mark_verified(entry.version)  # as a promotion does: classifiers may mount the registry read-only
    return _announce(settings, entry)
