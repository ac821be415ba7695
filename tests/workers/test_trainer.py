"""The trainer's pieces: the gate (real Redis + broker), the durable state, the run lease, cancellation, the guard."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis
import torch

from serving.checkpoint import METRICS_FILE
from serving.models import DynamicCNN, build_model, hint_tensors
from serving.ontology import load_ontology
from serving.promotion import promote, rollback
from streamcore.exceptions import BadInput, StylestreamError
from streamcore.lease import Lease, LeaseLost
from streamcore.metrics import StageMetrics
from streamcore.schemas import Feedback
from streamcore.settings import Settings
from tests.support import publish_tiny
from training.data.benchmark import BenchmarkConfig, load_benchmark
from training.feedback import Example, StoredPost, concat, join, learnable, to_split
from training.gating import GATES, gate
from training.guard import Agreement, LiveGuard, should_roll_back
from training.retrain import (
    RunCancelled,
    RunProgress,
    Serving,
    Trainer,
    TrainerConfig,
)
from training.state import RunStatus
from training.synthetic.posts import generate_posts
from training.text import TextMiner
from training.train import Batchable, FitConfig, fit
from workers.trainer import due


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-cache")


def _trainer(settings, cache_dir: Path) -> Trainer:
    config = TrainerConfig.from_settings(settings, n_train=300, n_test=150, epochs=8, pretrain_epochs=2,
                                         cache_dir=cache_dir, device="cpu", gate_margin=0.01,
                                         real_gate=False,  # the synthetic gate's mechanics, alone
                                         start_from="benchmark")
    return Trainer(settings, config, StageMetrics("trainer"))


def _count(trainer: Trainer, metric: str, *labels: str) -> float:
    return getattr(trainer.metrics, metric).labels(*labels)._value.get()


def _pointer(settings) -> str | None:
    value = redis.Redis.from_url(settings.redis.url).get(settings.redis.keys.model_current)
    return value.decode() if value else None


def test_gate_allows_the_margin_and_no_more() -> None:
    serving = {"attribute": {"P@3": 0.50}, "category": {"P@1": 0.80}}
    within = {"attribute": {"P@3": 0.495}, "category": {"P@1": 0.90}}
    beyond = {"attribute": {"P@3": 0.60}, "category": {"P@1": 0.78}}
    assert gate(within, serving, margin=0.01).passed
    decision = gate(beyond, serving, margin=0.01)
    assert not decision.passed
    assert {c.name: c.passed for c in decision.checks} == {"attribute_p3": True, "category_p1": False}
    assert gate(beyond, None, margin=0.0).passed  # nothing serving yet: nothing to be worse than


@pytest.mark.integration  # promotion writes to the embedded Redis and broker
def test_a_worse_candidate_is_not_promoted(make_settings, tmp_path, cache_dir) -> None:
    settings = make_settings(model_dir=tmp_path / "models")
    trainer = _trainer(settings, cache_dir)
    started = time.perf_counter()
    first = trainer.run_once()  # cold start: nothing serves, so the trained model is promoted
    cold_s = time.perf_counter() - started
    assert first.promoted and _pointer(settings) == first.version
    assert _count(trainer, "gate_results", "attribute_p3", "no_baseline") == 1

    serving = trainer.serving()
    assert serving is not None and serving.version == first.version
    # Same frozen backbone, freshly initialised head: a deliberately worse model.
    torch.manual_seed(123)
    fresh = build_model(backbone="tiny", head="dynamic_layers", ontology=trainer.ontology, weights="random")
    worse = DynamicCNN(serving.model.backbone, fresh.head, serving.model.config)
    published = trainer.registry.versions()
    result = trainer.consider(worse, serving, trainer.benchmark(multi=False)["test"])

    assert not result.promoted and result.version is None
    assert _pointer(settings) == first.version, "a rejected candidate moved the serving pointer"
    assert trainer.registry.versions() == published, "a rejected candidate was published"
    assert _count(trainer, "gate_results", "category_p1", "fail") == 1
    assert _count(trainer, "trainer_runs", "rejected") == 1 and _count(trainer, "trainer_runs", "promoted") == 1
    checks = {c.name: c for c in result.decision.checks}
    assert checks["category_p1"].candidate < checks["category_p1"].baseline - 0.1
    print(f"\ncold start {cold_s:.1f} s; rejected: "
          + ", ".join(f"{c.name} {c.candidate:.3f} vs serving {c.baseline:.3f}" for c in checks.values()))


@pytest.mark.integration
def test_a_better_candidate_is_promoted(make_settings, tmp_path, cache_dir) -> None:
    settings = make_settings(model_dir=tmp_path / "models")
    publish_tiny(settings.serving.model_dir, "v-untrained", seed=5)
    promote(settings, "v-untrained")
    trainer = _trainer(settings, cache_dir)
    started = time.perf_counter()
    result = trainer.run_once()  # warm start: continue the untrained serving head
    warm_s = time.perf_counter() - started

    assert result.promoted and result.serving_version == "v-untrained"
    assert _pointer(settings) == result.version != "v-untrained"
    for name in GATES:
        assert _count(trainer, "gate_results", name, "pass") == 1
    improved = {c.name: (c.candidate, c.baseline) for c in result.decision.checks}
    # Strictly better than serving (the class-summed multi-label loss moves category P@1 less in
    # the test's few epochs than the old class-mean did: +0.04 here, not the former +0.1).
    assert improved["category_p1"][0] > improved["category_p1"][1]
    # metrics.json of the published version holds the evaluation and the gate against the old model.
    stored = json.loads((trainer.registry.get(result.version).path / METRICS_FILE).read_text())
    assert stored["gate"]["serving_version"] == "v-untrained" and stored["gate"]["passed"] is True
    assert stored["mined"]["category"]["P@1"] == pytest.approx(improved["category_p1"][0])
    # The promoted model is the warm-started one: it shares the serving model's backbone weights.
    new, old = trainer.registry.get(result.version).load(), trainer.registry.get("v-untrained").load()
    same = {k: torch.equal(v, old.state_dict()[k]) for k, v in new.state_dict().items()}
    assert all(v for k, v in same.items() if k.startswith("backbone.")) and not all(same.values())
    assert trainer.metrics.trainer_last_success._value.get() > 0
    print(f"\nwarm start {warm_s:.1f} s; promoted: "
          + ", ".join(f"{n} {c:.3f} vs serving {s:.3f}" for n, (c, s) in improved.items()))


def test_a_warm_retrain_of_a_dynamic_head_retrains_the_base_it_keeps_then_its_dynamic_layers(tmp_path, cache_dir):
    # A checkpoint does not keep requires_grad: loaded, every part of a head would train.
    trainer = _trainer(Settings.named(model_dir=tmp_path, redis_url="redis://127.0.0.1:9"), cache_dir)  # never connects
    torch.manual_seed(0)
    serving = build_model(backbone="tiny", head="dynamic_layers", ontology=trainer.ontology, weights="random")
    before = {k: v.clone() for k, v in serving.head.state_dict().items()}
    candidate, _, history = trainer._train_warm(Serving("v-serving", serving), trainer.benchmark(multi=False), None, None)

    head = candidate.head
    kept = [head.trunk, head.categories, head.subcategories.fallback, head.attributes.fallback]
    assert all(not p.requires_grad for module in kept for p in module.parameters()), "the kept Base trains on"
    assert all(p.requires_grad for p in head.subcategories.shared.parameters())
    after = head.state_dict()
    # Corrections reach every level: the Base (trunk, categories, silent-text layers) learned in its own phase,
    # the dynamic layers in theirs.
    for key in ("trunk.0.weight", "categories.weight", "subcategories.fallback.weight", "attributes.fallback.weight",
                "subcategories.shared.weight", "subcategories.weight"):
        assert not torch.equal(after[key], before[key]), f"{key} did not train"
    assert history["epochs_run"] >= 1
    assert all(torch.equal(v, before[k]) for k, v in serving.head.state_dict().items()), "the serving model changed"


def test_feedback_for_a_stored_post_becomes_a_training_example(tmp_path) -> None:
    ontology, settings = load_ontology(), Settings.named(model_dir=tmp_path)
    miner = TextMiner.load(ontology)
    post, truth = next(iter(generate_posts(ontology, 1, seed=11, prefix="fb")))
    stored = StoredPost.from_post(post, settings, image_size=64)
    assert StoredPost.from_bytes(stored.to_bytes()).caption == post.caption  # the durable store's codec

    category = truth.categories[0]
    feedback = Feedback(post_id=post.post_id, categories=[category], subcategories=list(truth.subcategories),
                        attributes=[*truth.materials, *truth.patterns])
    kw = {"ontology": ontology, "miner": miner, "settings": settings, "multi": False, "image_size": 64}
    example = join(feedback, StoredPost.from_bytes(stored.to_bytes()), **kw)
    assert example.pixels.shape == (3, 64, 64) and example.pixels.dtype == np.uint8
    assert example.pixels.std() > 0  # the post's picture, not a blank
    assert [ontology.category_names[i] for i in np.flatnonzero(example.categories)] == [category]
    assert {ontology.attribute_names[i] for i in np.flatnonzero(example.attributes)} == set(feedback.attributes)
    # Hints are what the miner reads in the post's text, exactly as the text stage would send them.
    mined = hint_tensors([miner.mine(post)], ontology)
    np.testing.assert_allclose(example.hint_categories, mined.categories[0].numpy())
    np.testing.assert_allclose(example.hint_subcategories, mined.subcategories[0].numpy())
    # Equal examples give equal bytes: the store recognises a replayed correction by them (a correction is
    # always joined with the post as the store returns it).
    assert example.to_bytes() == join(feedback, StoredPost.from_bytes(stored.to_bytes()), **kw).to_bytes()
    back = Example.from_bytes(example.to_bytes())
    assert back.caption == example.caption and np.array_equal(back.attributes, example.attributes)

    with pytest.raises(BadInput, match="unknown"):
        join(Feedback(post_id=post.post_id, categories=["no-such-category"]), stored, **kw)
    with pytest.raises(BadInput, match="exactly one category"):
        join(Feedback(post_id=post.post_id, categories=[category, category]), stored, **kw)
    with pytest.raises(BadInput, match="cannot learn that a photo shows none"):
        join(Feedback(post_id=post.post_id, categories=[]), stored, **kw)
    none = join(Feedback(post_id=post.post_id, categories=[]), stored, **{**kw, "multi": True})
    assert none.categories.sum() == none.subcategories.sum() == none.attributes.sum() == 0
    assert none.pixels.std() > 0 and none.hint_categories.shape == example.hint_categories.shape
    two = join(Feedback(post_id=post.post_id, categories=ontology.category_names[:2]), stored, **{**kw, "multi": True})
    # Taken while a multi-label model served: a single-label one (after a rollback) learns none of them as
    # one category, since argmax would make the first category of both.
    assert learnable([example, none, two], multi=False) == [example]
    assert learnable([example, none, two], multi=True) == [example, none, two]

    bench = load_benchmark(ontology, BenchmarkConfig(n_train=50, n_test=20), cache_dir=tmp_path)["train"]
    extended = concat(bench, to_split([example]))
    assert len(extended) == len(bench) + 1
    assert extended.targets(multi=False)["categories"][-1] == ontology.category_index(category)
    np.testing.assert_array_equal(extended.images[-1], example.pixels)


def _status(pending: int = 0, next_run_at: float | None = None, retry_at: float | None = None,
            serving: bool = True, finished: bool = False) -> RunStatus:
    return RunStatus(pending, next_run_at, retry_at, serving, finished)


@pytest.mark.parametrize(("interval_s", "min_feedback"), [(60.0, 3), (None, 3), (60.0, None)])
def test_a_run_is_due_on_schedule_or_after_enough_feedback(interval_s, min_feedback) -> None:
    now, kw = 1000.0, {"interval_s": interval_s, "min_feedback": min_feedback}
    assert not due(_status(next_run_at=now + 60), now, **kw)
    assert due(_status(next_run_at=now + 60), now + 61, **kw) == (interval_s is not None)
    assert not due(_status(pending=2, next_run_at=now + 60), now, **kw)
    assert due(_status(pending=3, next_run_at=now + 60), now, **kw) == (min_feedback is not None)
    # Nothing serves: a schedule bootstraps a model now; without one, feedback decides.
    assert due(_status(serving=False), now, **kw) == (interval_s is not None)
    # ... once: a rejected first candidate (still nothing serves) waits for the schedule's next slot.
    assert due(_status(serving=False, next_run_at=now + 60), now, **kw) == (interval_s is not None)
    assert not due(_status(serving=False, next_run_at=now + 60, finished=True), now, **kw)
    assert due(_status(serving=False, next_run_at=now + 60, finished=True), now + 61, **kw) == (interval_s is not None)
    assert not due(_status(pending=3, serving=False, retry_at=now + 1), now, **kw)  # back-off after a failure
    assert due(_status(pending=3, serving=False, retry_at=now - 1), now, **kw)


def test_a_cancelled_run_stops_at_the_next_step(tmp_path) -> None:
    ontology = load_ontology()
    split = load_benchmark(ontology, BenchmarkConfig(n_train=64, n_test=16, size=32), cache_dir=tmp_path)
    model = build_model(backbone="tiny", head="base", ontology=ontology, weights="random", image_size=32)
    train, val = (Batchable.from_split(split[s], multi=False) for s in ("train", "val"))
    metrics, cancel = StageMetrics("trainer"), threading.Event()
    progress = RunProgress(metrics, cancel)
    steps: list[int] = []

    def hook(step: int, loss: float | None) -> None:
        progress(step, loss)
        steps.append(step)
        if len(steps) == 3:
            cancel.set()  # what SIGTERM does; the next step boundary must stop the run

    with pytest.raises(RunCancelled):
        fit(model, train, val, FitConfig(epochs=50, batch_size=8), features=False, on_step=hook)
    assert steps == [1, 2, 3]
    assert metrics.trainer_step._value.get() == 3 and np.isfinite(metrics.trainer_loss._value.get())
    assert metrics.trainer_elapsed._value.get() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_run_on_cuda_trains_under_autocast_and_stops_when_cancelled(tmp_path) -> None:
    ontology = load_ontology()
    split = load_benchmark(ontology, BenchmarkConfig(n_train=256, n_test=16, size=64), cache_dir=tmp_path)
    model = build_model(backbone="tiny", head="dynamic_layers", ontology=ontology, weights="random").to("cuda")
    train, val = (Batchable.from_split(split[s], multi=False) for s in ("train", "val"))
    metrics, cancel = StageMetrics("trainer"), threading.Event()
    progress, dtypes = RunProgress(metrics, cancel), []
    forward = model.forward

    def spy(*args, **kwargs):  # the dtype the model computes in during training steps
        out = forward(*args, **kwargs)
        dtypes.append(out.categories.dtype)
        return out

    model.forward = spy

    def hook(step: int, loss: float | None) -> None:
        progress(step, loss)
        if step == 5:
            cancel.set()

    with pytest.raises(RunCancelled):
        fit(model, train, val, FitConfig(epochs=50, batch_size=32), features=False, device="cuda", on_step=hook)
    assert metrics.trainer_step._value.get() == 5 and np.isfinite(metrics.trainer_loss._value.get())
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)


def test_the_guard_rolls_back_only_a_clearly_worse_version_with_enough_verdicts() -> None:
    good, bad = Agreement(45, 50), Agreement(10, 50)
    assert should_roll_back(bad, good, margin=0.1, min_corrections=50)
    assert not should_roll_back(good, bad, margin=0.1, min_corrections=50)
    assert not should_roll_back(Agreement(41, 50), good, margin=0.1, min_corrections=50)  # 0.82 vs 0.90: within
    assert not should_roll_back(Agreement(0, 49), good, margin=0.1, min_corrections=50)  # too few verdicts
    assert Agreement(0, 0).rate == 0.0


@pytest.mark.integration
def test_one_lease_holder_and_a_stale_holder_cannot_promote(make_settings, tmp_path) -> None:
    settings = make_settings(model_dir=tmp_path / "models")
    client = redis.Redis.from_url(settings.redis.url)
    key = settings.redis.keys.run_lease
    first, second = Lease(client, key, ttl_s=30), Lease(client, key, ttl_s=30)
    token = first.acquire()
    assert token is not None and second.acquire() is None and first.renew()
    publish_tiny(settings.serving.model_dir, "v1")
    promote(settings, "v1", lease=first)
    assert _pointer(settings) == "v1"

    client.delete(key)  # the lease expired while its holder stalled; another replica takes it
    assert second.acquire() is not None and int(second.token) > int(token)
    assert not first.renew()
    publish_tiny(settings.serving.model_dir, "v2")
    with pytest.raises(LeaseLost):
        promote(settings, "v2", lease=first)
    assert _pointer(settings) == "v1", "a fenced-off holder moved the serving pointer"
    first.release()  # not ours any more: leaves the new holder's lease alone
    assert client.get(key).decode() == second.token
    second.release()
    assert client.get(key) is None


@pytest.mark.integration
def test_rollback_is_conditional_on_the_version_still_serving(make_settings, tmp_path) -> None:
    settings = make_settings(model_dir=tmp_path / "models")
    for name in ("v1", "v2"):
        publish_tiny(settings.serving.model_dir, name)
        promote(settings, name)
    with pytest.raises(StylestreamError, match="no longer serves"):
        rollback(settings, expected="v1")
    assert _pointer(settings) == "v2"
    rollback(settings, expected="v2")
    assert _pointer(settings) == "v1"
    with pytest.raises(StylestreamError, match="nothing to roll back"):
        rollback(settings, expected="v1")


@pytest.mark.integration
def test_the_guard_counts_each_correction_once_per_version(make_settings, tmp_path) -> None:
    settings = make_settings(model_dir=tmp_path, trainer_guard_min_corrections=2)
    client, metrics = redis.Redis.from_url(settings.redis.url), StageMetrics("trainer")
    guard = LiveGuard(settings, client, metrics)
    for post_id, version, top in (("p1", "v1", "dresses"), ("p2", "v1", "dresses"), ("p3", "v2", "dresses")):
        label = {"model_version": version, "categories": [{"term": top, "score": 1.0}]}
        client.set(settings.redis.keys.label(post_id), json.dumps(label))
    corrections = [Feedback(post_id="p1", categories=["dresses"]), Feedback(post_id="p2", categories=["skirts"]),
                   Feedback(post_id="p3", categories=["skirts"]), Feedback(post_id="unlabelled", categories=["skirts"])]
    guard.observe(corrections)
    guard.observe(corrections)  # replayed after a crash: no new verdicts
    assert guard.agreement("v1") == Agreement(1, 2) and guard.agreement("v2") == Agreement(0, 1)
    assert metrics.corrections.labels("v1", "agree")._value.get() == 1
    assert metrics.corrections.labels("v1", "disagree")._value.get() == 1
    assert metrics.agreement.labels("v1")._value.get() == pytest.approx(0.5)


@pytest.mark.integration
def test_the_guard_does_not_let_promotions_drift_below_the_version_chosen_by_hand(make_settings, tmp_path) -> None:
    settings = make_settings(model_dir=tmp_path / "models", trainer_guard_min_corrections=5,
                             trainer_guard_margin=0.15)
    client, metrics = redis.Redis.from_url(settings.redis.url), StageMetrics("trainer")
    lease = Lease(client, settings.redis.keys.run_lease, ttl_s=30)
    assert lease.acquire() is not None
    for version in ("v1", "v2", "v3"):
        publish_tiny(settings.serving.model_dir, version)
    promote(settings, "v1")  # by hand: the reference
    promote(settings, "v2", lease=lease)  # the trainer's
    promote(settings, "v3", lease=lease)
    guard, corrections = LiveGuard(settings, client, metrics), []
    for version, agreeing in (("v1", 10), ("v2", 9), ("v3", 8)):  # each within the margin of the one it replaced
        for i in range(10):
            post_id = f"{version}-{i}"
            label = {"model_version": version, "categories": [{"term": "dresses", "score": 0.9}]}
            client.set(settings.redis.keys.label(post_id), json.dumps(label))
            corrections.append(Feedback(post_id=post_id, categories=["dresses" if i < agreeing else "skirts"]))
    guard.observe(corrections)
    assert guard.check() == "v2"  # 0.8 is within 0.15 of v2's 0.9, not of v1's 1.0
    assert _pointer(settings) == "v2" and guard.check() is None  # 0.9: within the margin of both
    assert metrics.rollbacks._value.get() == 1


@pytest.mark.integration
def test_a_correction_of_an_abstaining_label_is_a_disagreement(make_settings, tmp_path) -> None:
    settings = make_settings(model_dir=tmp_path)
    client, metrics = redis.Redis.from_url(settings.redis.url), StageMetrics("trainer")
    label = {"model_version": "v1", "categories": [], "subcategories": [], "attributes": [], "abstain": "no_garment"}
    client.set(settings.redis.keys.label("p1"), json.dumps(label))
    LiveGuard(settings, client, metrics).observe([Feedback(post_id="p1", categories=["dresses"])])
    assert LiveGuard(settings, client, metrics).agreement("v1") == Agreement(0, 1)


@pytest.mark.integration
def test_a_correction_saying_no_garment_agrees_only_with_a_label_that_abstained(make_settings, tmp_path) -> None:
    settings = make_settings(model_dir=tmp_path)
    client, metrics = redis.Redis.from_url(settings.redis.url), StageMetrics("trainer")
    abstained = {"model_version": "v1", "categories": [], "subcategories": [], "attributes": [],
                 "abstain": "no_garment"}
    named = {"model_version": "v1", "categories": [{"term": "bags", "score": 0.9}]}
    for post_id, label in (("p1", abstained), ("p2", named)):
        client.set(settings.redis.keys.label(post_id), json.dumps(label))
    LiveGuard(settings, client, metrics).observe([Feedback(post_id=p, categories=[]) for p in ("p1", "p2")])
    assert LiveGuard(settings, client, metrics).agreement("v1") == Agreement(1, 2)
    assert metrics.corrections.labels("v1", "agree")._value.get() == 1
