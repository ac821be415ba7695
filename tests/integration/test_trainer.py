"""The trainer stage on the real broker + Redis: posts and feedback in, a retrained model promoted; corrections
survive SIGKILL; SIGTERM cancels a run; replicas run once per trigger; the live guard rolls a bad model back."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from serving.checkpoint import METRICS_FILE
from serving.ontology import load_ontology
from serving.promotion import promote
from serving.registry import Registry
from streamcore.embedded import free_port
from streamcore.schemas import DeadLetter, Feedback, HintsUsed, Label, ModelUpdate, ScoredTerm, utcnow
from streamcore.serde import encode
from streamcore.sinks import RedisLabels, fingerprint
from tests.support import publish_tiny, running_stage, wait_until
from training.synthetic.posts import generate_posts
from workers.trainer import TrainerConfig, TrainerStage

pytestmark = pytest.mark.integration

N_POSTS, N_FEEDBACK = 30, 12



def _send(settings, topic: str, messages: list[tuple[str, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    for key, value in messages:
        producer.send(settings.kafka.topic(topic), key=key.encode(), value=value)
    producer.flush()
    producer.close()


def _dead_letters(settings, count: int) -> list[DeadLetter]:
    consumer = KafkaConsumer(settings.kafka.topic("posts.dlq"), bootstrap_servers=settings.kafka.bootstrap,
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
                                         epochs=5, pretrain_epochs=1, cache_dir=tmp_path / "cache", device="cpu",
                                         real_gate=False,  # plumbing: a synthetic model may replace the default
                                         start_from="benchmark")
    stage = TrainerStage(settings, config)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(stage.run(),), name="trainer-stage")
    thread.start()
    try:
        posts = list(generate_posts(load_ontology(), N_POSTS, seed=3, prefix=settings.kafka.group_prefix))
        _send(settings, "posts", [(p.post_id, encode(p)) for p, _ in posts])
        wait_until(lambda: stage.stored_posts._value.get() == N_POSTS, timeout=60, what="posts stored")

        feedback = [Feedback(post_id=p.post_id, categories=[t.categories[0]], subcategories=[t.subcategories[0]],
                             attributes=[t.materials[0], t.patterns[0]]) for p, t in posts[:N_FEEDBACK]]
        unknown = [Feedback(post_id=f"{settings.kafka.group_prefix}-missing-{i}", categories=["dresses"]) for i in range(2)]
        # Checked before the post is looked up: a correction no model can learn is a dead letter (never a verdict
        # for the live guard) whether or not its post is known; so is one whose sub-category contradicts it.
        unlearnable = [Feedback(post_id=f"{settings.kafka.group_prefix}-missing-x", categories=["no-such-category"]),
                       Feedback(post_id=posts[0][0].post_id, categories=["blouses_and_tunics"],
                                subcategories=["overcoat"])]
        _send(settings, "feedback", [(f.post_id, encode(f)) for f in [*unknown, *unlearnable, *feedback]]
              + [("bad", b'{"post_id": "bad"}')])

        joined, held = stage.feedback.labels("joined"), stage.feedback.labels("held")
        wait_until(lambda: joined._value.get() == N_FEEDBACK and held._value.get() == 2, timeout=60,
                   what="feedback joined/held")
        wait_until(lambda: stage.last_run is not None, timeout=180, what="the triggered training run")
        run = stage.last_run
        assert run.feedback_examples == N_FEEDBACK and run.promoted  # cold start: nothing to be worse than
        assert redis.Redis.from_url(settings.redis.url).get(settings.redis.keys.model_current).decode() == run.version
        stored = json.loads((settings.serving.model_dir / run.version / "config.json").read_text())
        assert stored["training"]["feedback_examples"] == N_FEEDBACK
        assert stage.metrics.trainer_runs.labels("promoted")._value.get() == 1
    finally:
        loop.call_soon_threadsafe(stage.stop)
        thread.join(timeout=60)
    assert not thread.is_alive()
    letters = _dead_letters(settings, 3)
    assert [(d.stage, d.error) for d in letters] == [("trainer", "bad_schema")] * 3


# --- durability, cancellation, replicas, live guard ------------------------------------------------------

#: A small benchmark and few epochs: these tests are about the trainer's plumbing, not model quality.
#: A gate margin of 1 publishes every finished run, so each run shows in the registry.
# The run's mechanics on the small synthetic benchmark: a cold start trains there instead of continuing the
# packaged real-photo model.
SMALL = {"trainer_n_train": 300, "trainer_n_test": 100, "trainer_epochs": 2, "trainer_pretrain_epochs": 0,
         "trainer_gate_margin": 1.0, "device": "cpu", "trainer_start_from": "benchmark"}


@pytest.fixture(scope="module")
def bench_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-cache")


def _pointer(settings) -> str | None:
    value = redis.Redis.from_url(settings.redis.url).get(settings.redis.keys.model_current)
    return value.decode() if value else None


def _stored(settings, what: str) -> int:
    return redis.Redis.from_url(settings.redis.url).hlen(settings.redis.keys.trainer + what)


def _committed(settings, topic: str) -> int:
    """Records of ``topic`` whose offsets the trainer group committed (topics start at offset 0)."""
    # A consumer that never subscribes reads the group's commits without joining the group.
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, group_id=settings.kafka.group("trainer"),
                             enable_auto_commit=False)
    try:
        partitions = [TopicPartition(settings.kafka.topic(topic), p) for p in range(settings.kafka.partitions)]
        return sum(consumer.committed(tp) or 0 for tp in partitions)
    finally:
        consumer.close()


def _posts_and_corrections(settings, n: int, *, seed: int) -> tuple[list, list[Feedback]]:
    posts = list(generate_posts(load_ontology(), n, seed=seed, prefix=settings.kafka.group_prefix))
    corrections = [Feedback(post_id=p.post_id, categories=[t.categories[0]], subcategories=[t.subcategories[0]],
                            attributes=[t.materials[0]]) for p, t in posts]
    return posts, corrections


def _send_all(settings, topic: str, items) -> None:
    _send(settings, topic, [(i.post_id, encode(i)) for i in items])


def _metric(port: int, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    return None




def _assigned(stages: list[TrainerStage], settings) -> bool:
    owned = [sum(s.metrics.assigned.labels(s.name, settings.kafka.topic(t))._value.get() for t in ("posts", "feedback"))
             for s in stages]
    return all(o > 0 for o in owned) and sum(owned) == 2 * settings.kafka.partitions


def _data(settings, version: str) -> dict:
    return json.loads((Registry(settings.serving.model_dir).get(version).path / METRICS_FILE).read_text())["data"]


def test_corrections_survive_a_sigkill_before_the_next_run(make_settings, workers, tmp_path, bench_cache) -> None:
    settings = make_settings(model_dir=tmp_path / "models", trainer_cache_dir=bench_cache, **SMALL)
    publish_tiny(settings.serving.model_dir, "v0")
    promote(settings, "v0")
    group = workers(settings)
    first = group.start("trainer", STYLESTREAM_TRAINER_MIN_FEEDBACK="1000")  # absorbs, never trains
    posts, corrections = _posts_and_corrections(settings, 50, seed=21)
    _send_all(settings, "posts", [p for p, _ in posts])
    wait_until(lambda: _stored(settings, "posts") == 50, timeout=180, what="50 posts stored")
    _send_all(settings, "feedback", corrections)
    # Commit after durable: once the offsets are committed, every correction is in Redis.
    wait_until(lambda: _committed(settings, "feedback") == 50, timeout=180, what="50 corrections committed")
    assert _stored(settings, "examples") == 50

    first.kill()
    first.wait(timeout=30)
    assert Registry(settings.serving.model_dir).versions() == ["v0"], "a run happened before the kill"
    group.start("trainer", STYLESTREAM_TRAINER_MIN_FEEDBACK="50")
    wait_until(lambda: _pointer(settings) not in (None, "v0"), timeout=300, what="the restarted trainer's run")
    version = _pointer(settings)
    assert _data(settings, version)["feedback_examples"] == 50
    assert Registry(settings.serving.model_dir).versions() == sorted(["v0", version])


def test_sigterm_cancels_a_run_at_a_step_boundary(make_settings, workers, tmp_path, bench_cache) -> None:
    port = free_port()
    # Cold start (nothing serves, so the schedule runs now) with many end-to-end epochs: a long run.
    settings = make_settings(model_dir=tmp_path / "models", trainer_cache_dir=bench_cache, metrics_port=port - 2,
                             **{**SMALL, "trainer_n_train": 1000, "trainer_pretrain_epochs": 50,
                                "trainer_epochs": 50})
    assert settings.metrics.stage_port("trainer") == port
    proc = workers(settings).start("trainer")

    def training() -> bool:
        try:
            return (_metric(port, "stylestream_trainer_run_step") or 0) >= 3
        except OSError:  # not listening yet
            return False

    wait_until(training, timeout=240, what="a training run past its third step")
    assert _metric(port, "stylestream_trainer_run_in_progress") == 1
    assert _metric(port, "stylestream_trainer_run_elapsed_seconds") > 0
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    exited_s = time.monotonic() - started
    print(f"\nSIGTERM mid-run: exited in {exited_s:.1f} s")
    assert proc.returncode == 0 and exited_s < 10
    assert Registry(settings.serving.model_dir).versions() == [] and _pointer(settings) is None
    # The run ended through its cancellation path, which gives the lease back (it would expire otherwise).
    assert redis.Redis.from_url(settings.redis.url).get(settings.redis.keys.run_lease) is None


def test_two_replicas_run_once_per_trigger(make_settings, tmp_path, bench_cache) -> None:
    n = 8
    settings = make_settings(model_dir=tmp_path / "models", trainer_cache_dir=bench_cache, **SMALL)
    publish_tiny(settings.serving.model_dir, "v0")
    promote(settings, "v0")
    config = TrainerConfig.from_settings(settings, interval_s=None, min_feedback=n)
    stages = [TrainerStage(settings, config) for _ in range(2)]
    posts, corrections = _posts_and_corrections(settings, 2 * n, seed=31)
    most_running = 0

    def runs(*results: str) -> float:
        nonlocal most_running
        most_running = max(most_running, sum(s.metrics.trainer_running._value.get() for s in stages))
        return sum(s.metrics.trainer_runs.labels(r)._value.get() for s in stages for r in results)

    with running_stage(stages[0]), running_stage(stages[1]):
        wait_until(lambda: _assigned(stages, settings), timeout=120, what="both replicas assigned partitions")
        _send_all(settings, "posts", [p for p, _ in posts])
        wait_until(lambda: _stored(settings, "posts") == 2 * n, timeout=120, what="posts stored")
        for trigger in (1, 2):  # each trigger: n more corrections, then exactly one more run
            _send_all(settings, "feedback", corrections[(trigger - 1) * n: trigger * n])
            wait_until(lambda t=trigger: runs("promoted", "rejected", "error") >= t, timeout=300,
                       what=f"run {trigger}", interval=0.05)
    assert most_running <= 1  # sampled: never two replicas training at once
    assert runs("promoted") == 2 and runs("rejected", "error", "cancelled") == 0
    versions = [v for v in Registry(settings.serving.model_dir).versions() if v != "v0"]
    assert len(versions) == 2
    assert [_data(settings, v)["feedback_examples"] for v in versions] == [n, 2 * n]


def _label(post_id: str, version: str, category: str) -> Label:
    now = utcnow()
    return Label(post_id=post_id, model_version=version, head="dynamic_layers",
                 categories=[ScoredTerm(term=category, score=1.0)], subcategories=[], attributes=[],
                 hints_used=HintsUsed(source="none"), received_at=now, labeled_at=now)


async def _write_labels(settings, labels: list[Label]) -> None:
    sink = RedisLabels(settings)
    try:
        for label in labels:  # one model version per write, as the classifier writes them
            await sink.write(label.model_version, [(label.post_id, encode(label))], [fingerprint(label.post_id.encode())])
    finally:
        await sink.close()


def _last_update(settings) -> ModelUpdate:
    consumer = KafkaConsumer(settings.kafka.topic("model-updates"), bootstrap_servers=settings.kafka.bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False)
    updates: list[ModelUpdate] = []

    def three() -> bool:  # good, bad (both by hand), then the guard's rollback
        for batch in consumer.poll(timeout_ms=500).values():
            updates.extend(ModelUpdate.model_validate_json(r.value) for r in batch)
        return len(updates) >= 3

    wait_until(three, timeout=30, what="three model updates")
    consumer.close()
    return max(updates, key=lambda u: u.promoted_at)


def test_a_correction_read_before_its_post_waits_for_it_and_then_joins(make_settings, tmp_path, bench_cache) -> None:
    """A trainer catching up on a backlog of posts reads the small feedback topic first: nothing is lost."""
    settings = make_settings(model_dir=tmp_path / "models", trainer_cache_dir=bench_cache, **SMALL)
    posts, corrections = _posts_and_corrections(settings, 4, seed=43)
    # Held, then revised before the post came: the revision is what joins.
    revised = corrections[0].model_copy(update={"attributes": [], "subcategories": []})
    stage = TrainerStage(settings, TrainerConfig.from_settings(settings, interval_s=None, min_feedback=1000))
    held, joined = stage.feedback.labels("held"), stage.feedback.labels("joined")
    with running_stage(stage):
        _send_all(settings, "feedback", [*corrections[:3], revised])
        wait_until(lambda: held._value.get() == 4, timeout=60, what="four corrections held")
        assert stage.state.counts() == (0, 3) and joined._value.get() == 0
        _send_all(settings, "posts", [p for p, _ in posts])
        wait_until(lambda: joined._value.get() == 3, timeout=60, what="the held corrections joined")
        _send_all(settings, "feedback", corrections[3:])  # its post is stored by now: joined at once
        wait_until(lambda: joined._value.get() == 4, timeout=60, what="a correction joined on arrival")
        assert stage.state.counts() == (4, 0)
        examples, absorbed = stage.state.snapshot()
    assert absorbed == 4 and sorted(e.post_id for e in examples) == sorted(c.post_id for c in corrections)
    first = next(e for e in examples if e.post_id == revised.post_id)
    assert not first.attributes.any() and not first.subcategories.any()


def test_the_live_guard_rolls_back_a_worse_model(make_settings, tmp_path, bench_cache) -> None:
    n = 10
    settings = make_settings(model_dir=tmp_path / "models", trainer_cache_dir=bench_cache,
                             trainer_guard_min_corrections=n, trainer_guard_margin=0.2, **SMALL)
    names = load_ontology().category_names
    posts, corrections = _posts_and_corrections(settings, 2 * n, seed=41)
    publish_tiny(settings.serving.model_dir, "good", seed=1)
    publish_tiny(settings.serving.model_dir, "bad", seed=2)
    promote(settings, "good")  # its labels: what users then confirm
    asyncio.run(_write_labels(settings, [_label(f.post_id, "good", f.categories[0]) for f in corrections[:n]]))
    promote(settings, "bad")  # by hand; its labels: what users then contradict
    wrong = [next(c for c in names if c != f.categories[0]) for f in corrections[n:]]
    asyncio.run(_write_labels(settings, [_label(f.post_id, "bad", w) for f, w in zip(corrections[n:], wrong, strict=True)]))

    config = TrainerConfig.from_settings(settings, interval_s=None, min_feedback=1000)
    stage = TrainerStage(settings, config)
    with running_stage(stage):
        wait_until(lambda: _assigned([stage], settings), timeout=120, what="partitions assigned")
        _send_all(settings, "posts", [p for p, _ in posts])
        _send_all(settings, "feedback", corrections)
        metrics = stage.metrics
        # The pointer moves first; the count follows once the rollback is announced on model-updates.
        wait_until(lambda: _pointer(settings) == "good" and metrics.rollbacks._value.get() >= 1, timeout=120,
                   what="the guard's rollback to 'good', counted")
        assert metrics.rollbacks._value.get() == 1
        assert metrics.agreement.labels("good")._value.get() == 1.0
        assert metrics.agreement.labels("bad")._value.get() == 0.0
        assert metrics.corrections.labels("bad", "disagree")._value.get() == n
    assert _last_update(settings).version == "good"  # the rollback was announced to the classifiers
    assert redis.Redis.from_url(settings.redis.url).lrange(settings.redis.keys.model_history, 0, -1) == [b"good"]
