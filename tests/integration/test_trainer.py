"""The trainer stage on the real broker + Redis: posts and feedback in, a retrained model promoted."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer

from streamcore.schemas import DeadLetter
from streamcore.serde import encode
from tests.support import wait_until
from streamcore.schemas import Feedback
from training.ontology import load_ontology
from training.synthetic.posts import generate_posts
from workers.trainer import TrainerConfig, TrainerStage

pytestmark = pytest.mark.integration

N_POSTS, N_FEEDBACK = 30, 12



def _send(settings, topic: str, messages: list[tuple[str, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka, acks="all")
    for key, value in messages:
        producer.send(settings.topic(topic), key=key.encode(), value=value)
    producer.flush()
    producer.close()


def _dead_letters(settings, count: int) -> list[DeadLetter]:
    consumer = KafkaConsumer(settings.topic("posts.dlq"), bootstrap_servers=settings.kafka,
                             auto_offset_reset="earliest", enable_auto_commit=False)
    letters: list[DeadLetter] = []

    def enough() -> bool:
        for batch in consumer.poll(timeout_ms=500).values():
            letters.extend(DeadLetter.model_validate_json(r.value) for r in batch)
        return len(letters) >= count

    wait_until(enough, timeout=30, what=f"{count} dead letters")
    consumer.close()
    return letters


def test_feedback_joins_stored_posts_and_triggers_a_promoted_run(make_settings, tmp_path) -> None:
    settings = make_settings(model_dir=tmp_path / "models")
    config = TrainerConfig.from_settings(settings, interval_s=None, min_feedback=N_FEEDBACK, n_train=300, n_test=150,
                                         epochs=5, pretrain_epochs=1, cache_dir=tmp_path / "cache", device="cpu")
    stage = TrainerStage(settings, config)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(stage.run(),), name="trainer-stage")
    thread.start()
    try:
        posts = list(generate_posts(load_ontology(), N_POSTS, seed=3, prefix=settings.group_prefix))
        _send(settings, "posts", [(p.post_id, encode(p)) for p, _ in posts])
        wait_until(lambda: stage.stored_posts._value.get() == N_POSTS, timeout=60, what="posts stored")

        feedback = [Feedback(post_id=p.post_id, categories=[t.categories[0]], subcategories=[t.subcategories[0]],
                             attributes=[t.materials[0], t.patterns[0]]) for p, t in posts[:N_FEEDBACK]]
        unknown = [Feedback(post_id=f"{settings.group_prefix}-missing-{i}", categories=["dresses"]) for i in range(2)]
        _send(settings, "feedback", [(f.post_id, encode(f)) for f in [*unknown, *feedback]]
              + [("bad", b'{"post_id": "bad"}')])

        joined, skipped = stage.feedback.labels("joined"), stage.feedback.labels("unknown_post")
        wait_until(lambda: joined._value.get() == N_FEEDBACK and skipped._value.get() == 2, timeout=60,
                   what="feedback joined/skipped")
        wait_until(lambda: stage.last_run is not None, timeout=180, what="the triggered training run")
        run = stage.last_run
        assert run.feedback_examples == N_FEEDBACK and run.promoted  # cold start: nothing to be worse than
        assert redis.Redis.from_url(settings.redis_url).get(settings.keys.model_current).decode() == run.version
        stored = json.loads((settings.model_dir / run.version / "config.json").read_text())
        assert stored["training"]["feedback_examples"] == N_FEEDBACK
        assert stage.metrics.trainer_runs.labels("promoted")._value.get() == 1
    finally:
        loop.call_soon_threadsafe(stage.stop)
        thread.join(timeout=60)
    assert not thread.is_alive()
    letters = _dead_letters(settings, 1)
    assert [(d.stage, d.error) for d in letters] == [("trainer", "bad_schema")]
