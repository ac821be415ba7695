"""The trainer's gate on the real Redis + broker: worse candidates stay out, better ones are promoted."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import redis
import torch

from streamcore.metrics import StageMetrics
from tests.support import publish_tiny
from training.checkpoint import METRICS_FILE
from training.models import DynamicCNN, build_model, hints_to_tensors
from training.promotion import promote
from streamcore.exceptions import BadInput
from streamcore.settings import Settings
from training.data.benchmark import BenchmarkConfig, load_benchmark
from streamcore.schemas import Feedback
from training.feedback import PostStore, concat, join, to_split
from training.ontology import load_ontology
from training.synthetic.posts import generate_posts
from training.text import TextMiner
from workers.trainer import GATES, Trainer, TrainerConfig, TrainerStage, gate




@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-cache")


def _trainer(settings, cache_dir: Path) -> Trainer:
    config = TrainerConfig.from_settings(settings, n_train=300, n_test=150, epochs=8, pretrain_epochs=2,
                                         cache_dir=cache_dir, device="cpu", gate_margin=0.01)
    return Trainer(settings, config, StageMetrics("trainer"))


def _count(trainer: Trainer, metric: str, *labels: str) -> float:
    return getattr(trainer.metrics, metric).labels(*labels)._value.get()


def _pointer(settings) -> str | None:
    value = redis.Redis.from_url(settings.redis_url).get(settings.keys.model_current)
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
    assert checks["category_p1"].candidate < checks["category_p1"].serving - 0.1
    print(f"\ncold start {cold_s:.1f} s; rejected: "
          + ", ".join(f"{c.name} {c.candidate:.3f} vs serving {c.serving:.3f}" for c in checks.values()))


@pytest.mark.integration
def test_a_better_candidate_is_promoted(make_settings, tmp_path, cache_dir) -> None:
    settings = make_settings(model_dir=tmp_path / "models")
    publish_tiny(settings.model_dir, "v-untrained", seed=5)
    promote(settings, "v-untrained")
    trainer = _trainer(settings, cache_dir)
    started = time.perf_counter()
    result = trainer.run_once()  # warm start: continue the untrained serving head
    warm_s = time.perf_counter() - started

    assert result.promoted and result.serving_version == "v-untrained"
    assert _pointer(settings) == result.version != "v-untrained"
    for name in GATES:
        assert _count(trainer, "gate_results", name, "pass") == 1
    improved = {c.name: (c.candidate, c.serving) for c in result.decision.checks}
    assert improved["category_p1"][0] > improved["category_p1"][1] + 0.1
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


def test_feedback_for_a_stored_post_becomes_a_training_example(tmp_path) -> None:
    ontology, settings = load_ontology(), Settings(model_dir=tmp_path)
    miner = TextMiner.load(ontology)
    (post, truth), (evicted, _), (kept, _) = generate_posts(ontology, 3, seed=11, prefix="fb")
    store = PostStore(2, image_size=64)
    for p in (evicted, post, kept):
        store.add(p, settings)
    assert len(store) == 2 and store.get(evicted.post_id) is None  # bounded: the oldest went first

    category = truth.categories[0]
    feedback = Feedback(post_id=post.post_id, categories=[category], subcategories=list(truth.subcategories),
                        attributes=[*truth.materials, *truth.patterns])
    example = join(feedback, store, ontology=ontology, miner=miner, settings=settings, multi=False)
    assert example is not None and example.pixels.shape == (3, 64, 64) and example.pixels.dtype == np.uint8
    assert example.pixels.std() > 0  # the post's picture, not a blank
    assert [ontology.category_names[i] for i in np.flatnonzero(example.categories)] == [category]
    assert {ontology.attribute_names[i] for i in np.flatnonzero(example.attributes)} == set(feedback.attributes)
    # Hints are what the miner reads in the post's text, exactly as the text stage would send them.
    hint_categories, _ = hints_to_tensors([miner.mine(post)], ontology)
    np.testing.assert_allclose(example.hint_categories, hint_categories[0].numpy())

    for unknown in (evicted.post_id, "never-seen"):
        assert join(Feedback(post_id=unknown, categories=[category]), store, ontology=ontology, miner=miner,
                    settings=settings, multi=False) is None
    with pytest.raises(BadInput, match="unknown"):
        join(Feedback(post_id=post.post_id, categories=["no-such-category"]), store, ontology=ontology, miner=miner,
             settings=settings, multi=False)

    bench = load_benchmark(ontology, BenchmarkConfig(n_train=50, n_test=20), cache_dir=tmp_path)["train"]
    extended = concat(bench, to_split([example]))
    assert len(extended) == len(bench) + 1
    assert extended.targets(multi=False)["categories"][-1] == ontology.category_index(category)
    np.testing.assert_array_equal(extended.images[-1], example.pixels)


@pytest.mark.parametrize(("interval_s", "min_feedback"), [(60.0, 3), (None, 3), (60.0, None)])
def test_a_run_is_due_on_schedule_or_after_enough_feedback(tmp_path, interval_s, min_feedback) -> None:
    settings = Settings(model_dir=tmp_path, redis_url="redis://127.0.0.1:1/0")  # never contacted here
    stage = TrainerStage(settings, TrainerConfig.from_settings(settings, interval_s=interval_s, min_feedback=min_feedback))
    start = time.monotonic()
    assert not stage.due(start)
    assert stage.due(start + 61) == (interval_s is not None)
    stage.new_examples = 2
    assert not stage.due(start)
    stage.new_examples = 3
    assert stage.due(start) == (min_feedback is not None)
