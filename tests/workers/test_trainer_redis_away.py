"""The trainer stage while Redis is away: posts stay uncommitted and are retried, its timer logs one line."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from serving.ontology import load_ontology
from streamcore.exceptions import InfrastructureError
from streamcore.serde import encode
from streamcore.settings import Settings
from training.retrain import TrainerConfig
from training.synthetic.posts import generate_posts
from workers.trainer import TrainerStage


def test_an_offset_is_not_done_until_its_post_is_stored(tmp_path) -> None:
    settings = Settings.named(model_dir=tmp_path, redis_url="redis://127.0.0.1:1/0")  # nothing listens there
    stage = TrainerStage(settings, TrainerConfig.from_settings(settings))
    post, _ = next(iter(generate_posts(load_ontology(), 1, seed=2, prefix="nd")))
    value = encode(post)
    record = ConsumerRecord(settings.kafka.topic("posts"), 0, 7, int(time.time() * 1000), 0, post.post_id.encode(),
                            value, None, len(post.post_id), len(value), [])
    tp = TopicPartition(record.topic, 0)
    stage.offsets.add(tp, 7)
    failures = stage.metrics.infra_errors.labels("trainer", "post_store")

    async def handle_until_stopped() -> None:
        handling = asyncio.create_task(stage.handle([record]))
        deadline = time.monotonic() + 30
        while failures._value.get() < 2 and time.monotonic() < deadline:  # Redis away: retried, not dead-lettered
            await asyncio.sleep(0.05)
        stage.stop()
        with pytest.raises(InfrastructureError):  # still failing when asked to stop
            await handling

    asyncio.run(handle_until_stopped())
    assert failures._value.get() >= 2
    assert stage.offsets.pending() == 1 and stage.offsets.committable() == {tp: 7}  # offset 7 stays uncommitted


def test_a_tick_without_redis_logs_one_line_and_counts_it(tmp_path, caplog) -> None:
    settings = Settings.named(model_dir=tmp_path, redis_url="redis://127.0.0.1:1/0")  # nothing listens there
    stage = TrainerStage(settings, TrainerConfig.from_settings(settings))
    asyncio.run(stage.tick())  # must not raise: the loop goes on and asks again next round
    assert stage.metrics.infra_errors.labels("trainer", "tick")._value.get() == 1
    lines = [r for r in caplog.records if r.name == "workers.trainer"]
    assert len(lines) == 1 and "cannot check whether a run is due" in lines[0].getMessage()
    assert lines[0].exc_info is None  # no traceback


def test_a_correction_is_not_done_until_the_live_guard_has_judged_it(tmp_path) -> None:
    from redis.exceptions import ConnectionError as RedisDown

    from streamcore.schemas import Feedback

    settings = Settings.named(model_dir=tmp_path, redis_url="redis://127.0.0.1:1/0")
    stage = TrainerStage(settings, TrainerConfig.from_settings(settings))
    value = encode(Feedback(post_id="p1", categories=["coats"]))
    record = ConsumerRecord(settings.kafka.topic("feedback"), 0, 3, int(time.time() * 1000), 0, b"p1", value, None,
                            2, len(value), [])
    tp = TopicPartition(record.topic, 0)
    stage.offsets.add(tp, 3)
    judged = []

    async def on_feedback(record):
        return Feedback(post_id="p1", categories=["coats"])

    def judge(corrections):
        judged.append(stage.offsets.pending())
        raise RedisDown("Redis is away")

    stage._on_feedback, stage._judge = on_feedback, judge
    failures = stage.metrics.infra_errors.labels("trainer", "guard")

    async def handle_until_stopped() -> None:
        handling = asyncio.create_task(stage.handle([record]))
        deadline = time.monotonic() + 30
        while failures._value.get() < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stage.stop()
        with pytest.raises(InfrastructureError):
            await handling

    asyncio.run(handle_until_stopped())
    assert len(judged) >= 2 and set(judged) == {1}  # tried again, the record still pending each time
    assert stage.offsets.pending() == 1 and stage.offsets.committable() == {tp: 3}  # redelivered to the next owner
