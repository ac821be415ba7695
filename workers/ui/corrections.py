"""Corrections made on the page: checked against the ontology, published as one ``feedback/v1`` record.

The record is acknowledged by every in-sync replica before the page is told it was received; the page
then also keeps it beside the label (``{label}:correction``, with the label's expiry) so the card shows
the correction and the "has corrections" filter finds it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from serving.ontology import Ontology
from streamcore.kafka import make_producer
from streamcore.schemas import Feedback, utcnow
from streamcore.serde import encode
from streamcore.settings import Settings
from training.continued import learns_multi
from training.feedback import stray_subcategories

log = logging.getLogger(__name__)


class Refused(ValueError):
    """A correction the page will not send (the message says why, for the person who made it)."""


async def corrections_multi(settings: Settings, redis: Redis) -> bool:
    """Whether a correction may name several categories: the kind of model the trainer's next run continues
    (:func:`training.continued.learns_multi`); with Redis away, what serves while nothing is promoted."""
    try:
        version = await redis.get(settings.redis.keys.model_current)
    except RedisError:
        version = None
    return await asyncio.to_thread(learns_multi, settings, version.decode() if version is not None else None)


def terms(ontology: Ontology) -> dict[str, Any]:
    """The choices the correction form searches: categories, sub-categories (with their category), attributes.

    Whether a post may have several categories is not among them: it follows the serving model
    (:func:`corrections_multi`), so it is asked per request."""
    return {
        "categories": ontology.category_names,
        "subcategories": [[s.name, c.name] for c in ontology.categories for s in c.subcategories],
        "attributes": ontology.attribute_names,
    }


def check(body: Any, ontology: Ontology, *, multi: bool) -> Feedback:
    """A :class:`Feedback` from the form's JSON, every term known to the ontology, one category unless ``multi``
    (the trainer dead-letters anything else).

    Raises:
        Refused: anything else.
    """
    if not isinstance(body, dict):
        raise Refused("expected a JSON object")
    fields = {k: body.get(k) for k in ("post_id", "categories", "subcategories", "attributes", "sent_by")}
    sent_by = fields["sent_by"]
    fields["sent_by"] = (sent_by.strip() or "review page") if isinstance(sent_by, str) else sent_by or "review page"
    try:
        feedback = Feedback(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise Refused("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])) from None
    if not multi and len(feedback.categories) != 1:
        raise Refused("choose exactly one category: the model names one garment per post")
    known = {"categories": set(ontology.category_names), "subcategories": set(ontology.subcategory_names),
             "attributes": set(ontology.attribute_names)}
    for name, allowed in known.items():
        chosen = getattr(feedback, name)
        unknown = [t for t in chosen if t not in allowed]
        if unknown:
            raise Refused(f"{name}: not in the ontology: {', '.join(unknown[:5])}")
        if len(set(chosen)) != len(chosen):
            raise Refused(f"{name}: a term is chosen twice")
    stray = stray_subcategories(feedback, ontology)
    if stray:
        raise Refused(f"subcategories: {', '.join(stray[:5])} belong to no category chosen")
    return feedback


class Publisher:
    """Sends corrections to ``feedback``; the producer starts with the first one (the page reads without Kafka)."""

    def __init__(self, settings: Settings, client: Redis) -> None:
        self._settings = settings
        self._redis = client
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = make_producer(self._settings, linger_ms=0)
                await producer.start()
                self._producer = producer
        return self._producer

    async def send(self, feedback: Feedback) -> dict[str, Any]:
        """Publish and remember ``feedback``; returns where the record landed, and whether the copy beside the
        label was kept.

        Once the broker has the record it is received, whatever happens to that copy: answering "try again"
        then would make a second record of one correction.
        """
        producer = await self._started()
        sent = await producer.send_and_wait(self._settings.kafka.topic("feedback"), encode(feedback),
                                            key=feedback.post_id.encode())
        kept = {**json.loads(encode(feedback)), "at": utcnow().isoformat()}
        ttl = self._settings.redis.label_ttl_s
        try:
            await self._redis.set(self._settings.redis.keys.correction(feedback.post_id), json.dumps(kept), ex=ttl)
            shown = True
        except RedisError as exc:
            log.warning("review page: correction of %s sent, not kept beside its label: %s", feedback.post_id, exc)
            shown = False
        return {"topic": sent.topic, "partition": sent.partition, "offset": sent.offset, "feedback": kept,
                "kept": shown}

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
