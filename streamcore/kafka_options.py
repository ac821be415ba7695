"""Which Kafka client takes which of the pass-through options (``STYLESTREAM_KAFKA_OPTIONS``).

One dict serves producers, consumers and the topic admin of two libraries, and each client refuses keys it
does not know (kafka-python raises, aiokafka takes no ``**kwargs``): each client is given the keys it
accepts, and a key that no client accepts is refused when the settings are read.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaConfigurationError

from streamcore.exceptions import StylestreamError

#: Every kind of client stylestream builds: kafka-python ones for the CLI, the Python client and the topic
#: admin, aiokafka ones for the stages.
CLIENTS: dict[str, tuple[type, ...]] = {"producer": (KafkaProducer, AIOKafkaProducer),
                                        "consumer": (KafkaConsumer, AIOKafkaConsumer),
                                        "admin": (KafkaAdminClient,)}
#: The ``acks`` both libraries take. kafka-python does not check it when built: a producer given another
#: value fails every send in its I/O thread, which reaches the user as posts not delivered.
_ACKS = (0, 1, -1, "all")
#: Keys stylestream sets itself: the broker address has its own setting, and the rest carry the delivery
#: guarantees (offsets committed only after outputs are written, one owner per partition number, bytes in
#: and out), which a pass-through option must not turn off.
RESERVED = frozenset({"bootstrap_servers", "group_id", "enable_auto_commit", "partition_assignment_strategy",
                      "key_serializer", "value_serializer", "key_deserializer", "value_deserializer"})


class KafkaOptionsError(StylestreamError):
    """A Kafka client refused a value of ``STYLESTREAM_KAFKA_OPTIONS`` when it was built."""


@cache
def accepted(client: type) -> frozenset[str]:
    """The option keys ``client`` takes: a kafka-python class's ``DEFAULT_CONFIG`` (it refuses any other
    key), an aiokafka class's keyword parameters."""
    config = getattr(client, "DEFAULT_CONFIG", None)
    if isinstance(config, Mapping):
        return frozenset(config)
    parameters = inspect.signature(client).parameters.values()
    return frozenset(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def options_for(client: type, options: Mapping[str, Any]) -> dict[str, Any]:
    """Those of ``options`` that ``client`` accepts; the others are meant for other clients."""
    keys = accepted(client)
    return {key: value for key, value in options.items() if key in keys}


def check_options(options: Mapping[str, Any]) -> None:
    """Refuses keys that stylestream sets itself or that no client accepts, and an ``acks`` neither library can
    send.

    Raises:
        ValueError: naming the keys.
    """
    reserved = sorted(key for key in options if key in RESERVED)
    if reserved:
        raise ValueError(f"Kafka client option{'s' if len(reserved) > 1 else ''} {', '.join(map(repr, reserved))} "
                         "cannot be set here: stylestream sets it (the broker address is STYLESTREAM_KAFKA)")
    known = frozenset().union(*(accepted(client) for clients in CLIENTS.values() for client in clients))
    unknown = sorted(key for key in options if key not in known)
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise ValueError(f"unknown Kafka client option{'s' if len(unknown) > 1 else ''} {names} (known to none "
                         f"of the {', '.join(list(CLIENTS)[:-1])} or {list(CLIENTS)[-1]} clients)")
    acks = options.get("acks", "all")
    if isinstance(acks, bool) or acks not in _ACKS:
        raise ValueError(f"acks must be 0, 1, -1 or 'all', got {acks!r}")


@contextmanager
def blamed_on_options(client: type, given: Mapping[str, Any]) -> Iterator[None]:
    """Turns what building ``client`` raises for a bad value into one :class:`KafkaOptionsError`, when it was
    given pass-through options; without them the error is stylestream's own and passes unchanged."""
    try:
        yield
    except (ValueError, TypeError, KafkaConfigurationError) as exc:
        if not given:
            raise
        raise KafkaOptionsError(f"invalid STYLESTREAM_KAFKA_OPTIONS: {client.__name__} given "
                                f"{', '.join(sorted(given))}: {type(exc).__name__}: {exc}") from None
