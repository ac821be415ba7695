"""Kafka plumbing shared by every stage: client options, topic admin, producer/consumer factories."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.helpers import create_ssl_context
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import TopicAlreadyExistsError

from streamcore.assignor import CopartitionedAssignor
from streamcore.exceptions import InfrastructureError
from streamcore.faults import INFRA_ERRORS
from streamcore.kafka_options import blamed_on_options, options_for
from streamcore.sections import KafkaSettings, LimitsSettings, SecuritySettings
from streamcore.settings import TOPICS, Settings

log = logging.getLogger(__name__)


def bootstrap(kafka: KafkaSettings) -> str:
    """Bootstrap servers; embedded stacks set ``kafka`` before any stage starts."""
    if not kafka.bootstrap:
        raise InfrastructureError("STYLESTREAM_KAFKA is not set and no embedded broker was started")
    return kafka.bootstrap


def ensure_topics(settings: Settings, names: tuple[str, ...] = TOPICS) -> list[str]:
    """Create the contract topics with the configured partition count, each taking records of
    :func:`topic_max_bytes`; existing ones are left alone (:func:`undersized_topics` finds those too small).

    Returns the topics that were created by this call.
    """
    admin = _admin(settings)
    try:
        existing = set(admin.list_topics())
        wanted = []
        for name in names:
            full = settings.kafka.topic(name)
            if full in existing:
                continue
            configs = {"max.message.bytes": str(topic_max_bytes(settings.limits))}  # brokers default to ~1 MiB
            if name in ("model-updates", "catalogue"):  # the latest record per key is what counts
                configs["cleanup.policy"] = "compact"
            wanted.append(NewTopic(full, settings.kafka.partitions, settings.kafka.replication_factor, topic_configs=configs))
        created = []
        for topic in wanted:
            try:
                admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()


async def missing_topics(consumer: AIOKafkaConsumer, kafka: KafkaSettings, names: tuple[str, ...]) -> list[str]:
    """Those of the logical topics ``names`` the broker does not list (one metadata request for all
    topics: unlike a request naming them, it never makes a broker auto-create one)."""
    listed = await consumer.topics()
    return [name for name in names if kafka.topic(name) not in listed]


class TopicWatch:
    """Checks every ``topic_check_s`` that a stage's topics exist (a broker restarted on empty storage
    comes back without them); creates missing ones again when ``recreate_topics`` allows, else holds
    the reason in :attr:`problem` (the stage is then unready).

    Args:
        names: the stage's logical input and output topics.
        on_created: called with the number of topics created.
        owner: the stage's name, for the log.
    """

    def __init__(self, settings: Settings, names: tuple[str, ...], on_created: Callable[[int], None], *,
                 owner: str) -> None:
        self.settings, self.names, self.owner = settings, names, owner
        self.problem: str | None = None
        self._on_created = on_created
        self._next = 0.0

    async def check(self, consumer: AIOKafkaConsumer, *, force: bool = False) -> None:
        """Check now if due (or ``force``). Never raises: a broker that cannot answer is the fetch's and
        the writes' problem, reported by them."""
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + self.settings.faults.topic_check_s
        try:
            missing = await missing_topics(consumer, self.settings.kafka, self.names)
            if missing and self.settings.faults.recreate_topics:
                created = await asyncio.get_running_loop().run_in_executor(None, ensure_topics, self.settings,
                                                                           tuple(missing))
                self._on_created(len(created))
                log.error("%s: topics %s were missing; created them again with %d partitions", self.owner,
                          ", ".join(self.settings.kafka.topic(t) for t in missing), self.settings.kafka.partitions)
                missing = await missing_topics(consumer, self.settings.kafka, self.names)
        except INFRA_ERRORS as exc:
            log.warning("%s: cannot check the topics (%s: %s)", self.owner, type(exc).__name__, exc)
            return
        problem = (f"topics missing: {', '.join(self.settings.kafka.topic(t) for t in missing)} (create them with "
                   "`stylestream topics`, or set STYLESTREAM_RECREATE_TOPICS=true)") if missing else None
        if problem is not None and problem != self.problem:
            log.error("%s: %s", self.owner, problem)
        self.problem = problem


def request_limit(producer: AIOKafkaProducer, limits: LimitsSettings) -> int:
    """The largest record ``producer`` will send: its ``max_request_size`` (which aiokafka keeps on the
    instance only), or what :func:`make_producer` configures when the producer does not say."""
    limit = getattr(producer, "_max_request_size", None)
    return limit if isinstance(limit, int) and limit > 0 else limits.max_message_bytes + 64 * 1024


def delete_topics(settings: Settings, names: tuple[str, ...] = TOPICS) -> None:
    """Delete the contract topics of ``settings`` that exist (their records with them)."""
    admin = _admin(settings)
    try:
        existing = set(admin.list_topics())
        doomed = [settings.kafka.topic(name) for name in names if settings.kafka.topic(name) in existing]
        if doomed:
            admin.delete_topics(doomed)
    finally:
        admin.close()


def _admin(settings: Settings) -> KafkaAdminClient:
    given = options_for(KafkaAdminClient, settings.kafka.options)
    with blamed_on_options(KafkaAdminClient, given):
        return KafkaAdminClient(**{"bootstrap_servers": bootstrap(settings.kafka), "client_id": "stylestream-admin",
                                   **given, **kafka_python_security(settings.security)})


def _sasl(security: SecuritySettings) -> dict[str, Any]:
    # Both libraries name SCRAM credentials sasl_plain_* too.
    if not security.protocol.startswith("SASL"):
        return {}
    return {"sasl_mechanism": security.sasl_mechanism, "sasl_plain_username": security.sasl_username,
            "sasl_plain_password": security.sasl_password.get_secret_value()}


def _uses_tls(security: SecuritySettings) -> bool:
    return security.protocol in ("SSL", "SASL_SSL")


def aiokafka_security(security: SecuritySettings) -> dict[str, Any]:
    """Security arguments for aiokafka clients: TLS goes in as one ``ssl_context`` object.

    The context trusts ``kafka_ssl_cafile`` (the system CAs when unset) and presents the client
    certificate when one is configured.
    """
    options: dict[str, Any] = {"security_protocol": security.protocol, **_sasl(security)}
    if _uses_tls(security):
        context = create_ssl_context(
            cafile=_path(security.ssl_cafile), certfile=_path(security.ssl_certfile),
            keyfile=_path(security.ssl_keyfile),
            password=security.ssl_key_password.get_secret_value() if security.ssl_key_password else None)
        context.check_hostname = security.ssl_check_hostname
        options["ssl_context"] = context
    return options


def kafka_python_security(security: SecuritySettings) -> dict[str, Any]:
    """Security arguments for kafka-python clients (admin, the sync client, promotion): file paths."""
    options: dict[str, Any] = {"security_protocol": security.protocol, **_sasl(security)}
    if _uses_tls(security):
        options["ssl_check_hostname"] = security.ssl_check_hostname
        tls = {"ssl_cafile": _path(security.ssl_cafile), "ssl_certfile": _path(security.ssl_certfile),
               "ssl_keyfile": _path(security.ssl_keyfile),
               "ssl_password": security.ssl_key_password.get_secret_value()
               if security.ssl_key_password else None}
        options.update({k: v for k, v in tls.items() if v is not None})
    return options


def _path(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def make_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """An idempotent-ish producer: acks from all replicas, large enough requests for inline images.

    Raises:
        KafkaOptionsError: the producer refused a value of ``STYLESTREAM_KAFKA_OPTIONS``.
    """
    given = options_for(AIOKafkaProducer, settings.kafka.options)
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap(settings.kafka),
        "acks": "all",
        "linger_ms": 5,
        "max_request_size": settings.limits.max_message_bytes + 64 * 1024,
        **given,
        **aiokafka_security(settings.security),
        **overrides,
    }
    with blamed_on_options(AIOKafkaProducer, given):
        return AIOKafkaProducer(**options)


def make_consumer(settings: Settings, *topics: str, group: str | None, **overrides: Any) -> AIOKafkaConsumer:
    """A manually committing consumer; offsets are committed by the stage after outputs are written.

    Partition ``i`` of every subscribed topic goes to one member (:mod:`streamcore.assignor`).

    Raises:
        KafkaOptionsError: the consumer refused a value of ``STYLESTREAM_KAFKA_OPTIONS``.
    """
    given = options_for(AIOKafkaConsumer, settings.kafka.options)
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap(settings.kafka),
        "group_id": group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": settings.kafka.session_timeout_ms,
        "heartbeat_interval_ms": settings.kafka.heartbeat_interval_ms,
        "max_poll_interval_ms": settings.kafka.max_poll_interval_ms,
        "fetch_max_wait_ms": settings.kafka.fetch_max_wait_ms,
        "max_partition_fetch_bytes": settings.limits.max_message_bytes + 64 * 1024,
        "fetch_max_bytes": max(52_428_800, settings.limits.max_message_bytes * 2),
        "partition_assignment_strategy": (CopartitionedAssignor,),
        **given,
        **aiokafka_security(settings.security),
        **overrides,
    }
    with blamed_on_options(AIOKafkaConsumer, given):
        return AIOKafkaConsumer(*[settings.kafka.topic(t) for t in topics], **options)


def topic_max_bytes(limits: LimitsSettings) -> int:
    """The ``max.message.bytes`` the contract topics need: a record of ``max_message_bytes`` with room for its key,
    headers and batch framing (the producers' ``max_request_size`` has the same room)."""
    return limits.max_message_bytes + 64 * 1024


def undersized_topics(settings: Settings, names: tuple[str, ...] = TOPICS) -> dict[str, int]:
    """``{topic: its max.message.bytes}`` of the existing contract topics that would refuse a post at the size
    limit (an operator's topics on a broker's ~1 MiB default); topics the broker reports no limit for are left out.
    """
    admin = _admin(settings)
    try:
        existing = set(admin.list_topics())
        resources = [ConfigResource(ConfigResourceType.TOPIC, settings.kafka.topic(name)) for name in names
                     if settings.kafka.topic(name) in existing]
        # "all": a limit inherited from the broker's default is the one that refuses records too.
        described = admin.describe_configs(resources, config_filter="all") if resources else {}
    finally:
        admin.close()
    limits = {topic: configs.get("max.message.bytes", {}).get("value")
              for topic, configs in described.get("topic", {}).items()}
    return {topic: int(value) for topic, value in limits.items()
            if value is not None and int(value) < topic_max_bytes(settings.limits)}
