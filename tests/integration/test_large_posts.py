"""Large posts: the topics the project creates take records up to the post limit (a standard Kafka refuses
anything over ~1 MiB by default), topics made too small by an operator are reported, and a 5 MB post from a
foreign client (plain kafka-python, no stylestream code) is labelled."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from PIL import Image
from typer.testing import CliRunner

from streamcore.client import StylestreamClient
from streamcore.kafka import topic_max_bytes, undersized_topics
from streamcore.settings import TOPICS
from workers.cli import app

pytestmark = pytest.mark.integration


def _limits(settings) -> dict[str, str]:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, settings.kafka.topic(name))
                                            for name in TOPICS], config_filter="all")
    finally:
        admin.close()
    return {topic: configs["max.message.bytes"]["value"] for topic, configs in described["topic"].items()}


def test_created_topics_take_records_up_to_the_post_limit(make_settings) -> None:
    settings = make_settings(max_message_bytes=12 * 1024 * 1024)  # make_settings created the topics
    assert topic_max_bytes(settings.limits) > settings.limits.max_message_bytes
    assert _limits(settings) == {settings.kafka.topic(name): str(topic_max_bytes(settings.limits)) for name in TOPICS}
    assert undersized_topics(settings) == {}


def test_an_operators_topic_below_the_limit_is_reported(make_settings) -> None:
    settings = make_settings()
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
    admin.delete_topics([settings.kafka.topic("posts")])
    admin.create_topics([NewTopic(settings.kafka.topic("posts"), settings.kafka.partitions, 1,
                                  topic_configs={"max.message.bytes": "1048588"})])  # Kafka's default
    admin.close()
    assert undersized_topics(settings) == {settings.kafka.topic("posts"): 1048588}
    result = CliRunner().invoke(app, ["topics"], env={"STYLESTREAM_KAFKA": settings.kafka.bootstrap,
                                                      "STYLESTREAM_TOPIC_PREFIX": settings.kafka.topic_prefix})
    assert result.exit_code == 0, result.output
    assert f"warning: {settings.kafka.topic('posts')} takes records up to 1048588 bytes" in result.stderr


def _photo_of(size: int) -> bytes:
    """A JPEG of at least ``size`` bytes (noise does not compress)."""
    side = int((size / 1.8) ** 0.5)  # ~2 bytes per pixel at quality 100
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=100)
    assert out.tell() >= size, out.tell()
    return out.getvalue()


def test_a_5_mb_post_from_a_foreign_client_is_labelled(make_settings, workers) -> None:
    settings = make_settings()
    group = workers(settings)
    group.start("classify")
    group.wait_ready()
    post = json.dumps({"schema": "post/v1", "post_id": "big-1", "created_at": "2026-06-07T10:15:00Z", "user": "u",
                       "caption": "a very detailed photo", "image": {"b64": base64.b64encode(_photo_of(3_800_000)).decode()}})
    assert len(post) > 5_000_000
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all", max_request_size=6 * 1024 * 1024)
    producer.send(settings.kafka.topic("posts"), key=b"big-1", value=post.encode()).get(timeout=60)
    producer.close()
    with StylestreamClient(settings) as client:
        label = client.wait_label("big-1", timeout=180)
    assert label.post_id == "big-1" and label.model_version == "tiny-test"
    assert group.alive()
