"""The promotion gate's fixed reference: a candidate within the margin of the serving model is still refused when
it is more than the margin below the packaged default, so successive promotions cannot ratchet downwards."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest

from serving.checkpoint import METRICS_FILE
from serving.models import DynamicCNN, build_model
from serving.ontology import load_ontology
from serving.registry import Entry
from streamcore.metrics import StageMetrics
from streamcore.settings import Settings
from tests.support import publish_tiny
from training import gate_run, retrain
from training.feedback import Example
from training.gate_run import IS_SERVING, Gates
from training.gating import REFERENCE, gate
from training.real import retrain as real_retrain
from training.real.retrain import MIN_HELD_OUT
from training.retrain import Serving, Trainer, TrainerConfig

ONTOLOGY = load_ontology()


def test_the_reference_stops_the_margins_of_successive_promotions_adding_up():
    serving = {"attribute": {"P@3": 0.50}, "category": {"P@1": 0.80}}
    reference = {"attribute": {"P@3": 0.52}, "category": {"P@1": 0.85}}
    drifted = {"attribute": {"P@3": 0.495}, "category": {"P@1": 0.83}}  # within 0.01 of serving, 0.025 below reference
    assert gate(drifted, serving, margin=0.01).passed  # the one-step comparison alone lets it through
    decision = gate(drifted, serving, margin=0.01, reference=reference)
    assert not decision.passed
    assert [c.name for c in decision.checks if not c.passed] == ["reference_attribute_p3", "reference_category_p1"]
    assert {c.against for c in decision.checks if not c.passed} == {REFERENCE}
    better = {"attribute": {"P@3": 0.53}, "category": {"P@1": 0.86}}
    assert gate(better, serving, margin=0.01, reference=reference).passed

    # Hourly candidates each 0.009 worse than the model they replace: without the reference every one passes.
    def promotions(with_reference: bool) -> float:
        score = {"attribute": {"P@3": 0.52}, "category": {"P@1": 0.85}}
        for _ in range(20):
            worse = {level: {k: v - 0.009 for k, v in m.items()} for level, m in score.items()}
            if not gate(worse, score, margin=0.01, reference=reference if with_reference else None).passed:
                break
            score = worse
        return score["category"]["P@1"]

    assert promotions(with_reference=False) == pytest.approx(0.85 - 20 * 0.009)
    assert promotions(with_reference=True) >= 0.85 - 0.01


def _model(seed: int, **config) -> DynamicCNN:
    import torch

    torch.manual_seed(seed)
    model = build_model(backbone="tiny", head=config.pop("head", "dynamic_layers"), ontology=ONTOLOGY,
                        weights="random")
    model.config = dataclasses.replace(model.config, **config)
    return model


class _Scores:
    """A stand-in for :func:`real_photo_scores`: a category mAP per model (the reference: any other model), and
    which models it scored."""

    def __init__(self, candidate: DynamicCNN, replaced: DynamicCNN, maps: tuple[float, float, float]) -> None:
        self.maps = {id(candidate): ("candidate", maps[0]), id(replaced): ("replaced", maps[1])}
        self.reference = maps[2]
        self.calls: list[str] = []

    def __call__(self, model, ontology, *, photos=None) -> dict[str, float]:
        who, score = self.maps.get(id(model), ("reference", self.reference))
        self.calls.append(who)
        return {"real_category_map": score, "real_calibration_error": 0.01}


@pytest.fixture
def reference(tmp_path):
    """The packaged default's stand-in, of the kind of :func:`_model` (tiny, dynamic_layers), and its loads."""
    entry = publish_tiny(tmp_path / "packaged", "default-test", seed=9)
    loads: list[str] = []

    class Counted(Entry):
        def load(self, *, device="cpu") -> DynamicCNN:
            loads.append(self.version)
            return super().load(device=device)

    return (lambda: Counted(entry.version, entry.path)), loads


def test_a_candidate_within_the_margin_of_serving_but_below_the_reference_is_refused(monkeypatch, reference):
    entry, loads = reference
    candidate, replaced = _model(1), _model(2)
    gates = Gates(ONTOLOGY, margin=0.01, device="cpu", reference=entry)
    scores = _Scores(candidate, replaced, (0.90, 0.905, 0.93))
    monkeypatch.setattr(gate_run, "real_photo_scores", scores)
    run = gates.start(candidate)
    gates.real(run, candidate, ("v-served", replaced))
    decision = run.decision()

    assert not decision.passed
    assert decision.failed() == ["reference_real_category_map 0.900 vs reference 0.930"]
    assert {c.name: c.passed for c in decision.checks} == {"real_category_map": True,
                                                          "reference_real_category_map": False}
    assert decision.reference.version == "default-test" and decision.reference.status == "evaluated"
    assert decision.reference.scores["real_category_map"] == 0.93
    recorded = json.loads(json.dumps(decision.to_json()))  # as metrics.json holds it
    assert recorded["failed"] == ["reference_real_category_map"] and recorded["reference"]["version"] == "default-test"
    assert sorted(scores.calls) == ["candidate", "reference", "replaced"]

    # A candidate that beats both passes; the reference, loaded once, is scored once in each run.
    scores.maps[id(candidate)] = ("candidate", 0.95)
    run = gates.start(candidate)
    gates.real(run, candidate, ("v-served", replaced))
    decision = run.decision()
    assert decision.passed and {c.against for c in decision.checks} == {"serving", REFERENCE}
    assert scores.calls.count("reference") == 2 and loads == ["default-test"]


def test_the_reference_is_skipped_with_the_reason_when_it_cannot_be_compared(monkeypatch, reference):
    entry, loads = reference
    for candidate, why in ((_model(1, head="fusion"), "head dynamic_layers (the candidate's: fusion)"),
                           (_model(1, abstain_below=0.2), "a benchmark model (the candidate: a real-photo model)")):
        replaced = copy.deepcopy(candidate)
        scores = _Scores(candidate, replaced, (0.80, 0.80, 0.99))
        monkeypatch.setattr(gate_run, "real_photo_scores", scores)
        gates = Gates(ONTOLOGY, margin=0.01, device="cpu", reference=entry)
        run = gates.start(candidate)
        gates.real(run, candidate, ("v-served", replaced))
        decision = run.decision()
        assert decision.passed, "the reference, of another kind, refused the candidate"
        assert decision.reference.status.startswith("skipped (default-test is of another kind: ")
        assert why in decision.reference.status and decision.skipped[0] == f"reference: {decision.reference.status}"
        assert scores.calls == ["candidate", "replaced"] and loads == []
        assert all(c.against == "serving" for c in decision.checks)

    def missing() -> Entry:
        raise FileNotFoundError("no SHA256")

    run = Gates(ONTOLOGY, margin=0.01, device="cpu", reference=missing).start(candidate)
    assert run.decision().reference.status == "skipped (no packaged default model: FileNotFoundError: no SHA256)"


def test_a_serving_model_that_is_the_reference_is_scored_once(monkeypatch, reference):
    entry, loads = reference
    candidate, replaced = _model(1), _model(2)
    scores = _Scores(candidate, replaced, (0.90, 0.93, 0.0))
    scored: list[int] = []

    def held_out_scores(models, held, *, device):
        scored.append(len(models))
        return [{} for _ in models], ()

    monkeypatch.setattr(gate_run, "real_photo_scores", scores)
    monkeypatch.setattr(gate_run, "held_out_scores", held_out_scores)
    gates = Gates(ONTOLOGY, margin=0.01, device="cpu", reference=entry)
    run = gates.start(candidate)
    gates.real(run, candidate, ("default-test", replaced), held=[])
    decision = run.decision()

    assert scores.calls == ["candidate", "replaced"] and scored == [2] and loads == []
    assert [c.name for c in decision.checks] == ["real_category_map"] and not decision.passed
    assert decision.reference.status == IS_SERVING and decision.reference.scores["real_category_map"] == 0.93

    run = gates.start(candidate)  # another serving model: the reference is the third model scored
    gates.real(run, candidate, ("v-served", replaced), held=[])
    assert scores.calls[2:] == ["candidate", "replaced", "reference"] and scored == [2, 3]


def _held(count: int, *, seed: int = 0) -> list[Example]:
    rng = np.random.default_rng(seed)
    sizes = len(ONTOLOGY.category_names), len(ONTOLOGY.attribute_names), len(ONTOLOGY.subcategory_names)
    out = []
    for i in range(count):
        categories = np.zeros(sizes[0], np.float32)
        categories[i % sizes[0]] = 1
        out.append(Example(rng.integers(0, 255, (3, 64, 64), dtype=np.uint8), np.zeros(sizes[0], np.float32),
                           np.zeros(sizes[1], np.float32), categories, np.zeros(sizes[2], np.float32),
                           np.zeros(sizes[1], np.float32), f"caption {i}", post_id=f"p{i}"))
    return out


def test_held_out_corrections_too_few_to_judge_by_are_recorded_as_skipped(monkeypatch, reference):
    entry, _ = reference
    candidate = _model(1)
    served = DynamicCNN(candidate.backbone, copy.deepcopy(candidate.head), candidate.config)
    monkeypatch.setattr(gate_run, "real_photo_scores", _Scores(candidate, served, (0.9, 0.9, 0.9)))
    extracted = []
    trunk_features = real_retrain.trunk_features
    monkeypatch.setattr(real_retrain, "trunk_features", lambda m, *a, **k: extracted.append(m) or trunk_features(m, *a, **k))
    gates = Gates(ONTOLOGY, margin=0.01, device="cpu", reference=entry)

    run = gates.start(candidate)
    gates.real(run, candidate, ("v-served", served), held=_held(3))
    decision = run.decision()
    assert decision.skipped == (f"corrections_category_map: skipped (3 held out, need {MIN_HELD_OUT})",
                                f"corrections_no_garment_refused: skipped (0 held out, need {MIN_HELD_OUT})")
    assert extracted == [] and not any(c.name.startswith("corrections") for c in decision.checks)

    run = gates.start(candidate)
    gates.real(run, candidate, ("v-served", served), held=_held(MIN_HELD_OUT))
    decision = run.decision()
    assert not any(s.startswith("corrections_category_map") for s in run.skipped)
    names = {c.name for c in decision.checks}
    assert {"corrections_category_map", "reference_corrections_category_map"} <= names
    assert len(extracted) == 2  # candidate and serving model share one trunk; the reference has its own


def test_the_trainer_records_the_reference_and_why_a_candidate_was_refused(monkeypatch, reference, tmp_path):
    entry, _ = reference
    settings = Settings.named(model_dir=tmp_path / "models", redis_url="redis://127.0.0.1:9")  # never connects
    trainer = Trainer(settings, TrainerConfig.from_settings(settings, device="cpu"), StageMetrics("trainer"))
    trainer.gates = Gates(ONTOLOGY, margin=0.01, device="cpu", reference=entry)
    publish_tiny(settings.serving.model_dir, "v-served", seed=2)
    served = trainer.registry.get("v-served").load()
    candidate = DynamicCNN(served.backbone, copy.deepcopy(served.head), served.config)
    monkeypatch.setattr(retrain, "continue_head", lambda *a, **k: (candidate, {"history": []}))
    scores = _Scores(candidate, served, (0.90, 0.905, 0.93))
    monkeypatch.setattr(gate_run, "real_photo_scores", scores)
    promoted = []
    monkeypatch.setattr(retrain, "promote", lambda settings, version, **kw: promoted.append(version))
    monkeypatch.setattr(retrain, "build_or_skip", lambda directory: None)

    def run():
        return trainer._run_real(Serving("v-served", served), served, _held(12), started=0.0, progress=None,
                                 lease=None)

    refused = run()
    assert not refused.promoted and promoted == [] and trainer.registry.versions() == ["v-served"]
    gate_record = refused.metrics["gate"]
    assert gate_record["failed"] == ["reference_real_category_map"] and gate_record["passed"] is False
    assert gate_record["reference"] == {"version": "default-test", "status": "evaluated",
                                        "scores": {"real_category_map": 0.93, "real_calibration_error": 0.01}}
    assert trainer.metrics.gate_results.labels("reference_real_category_map", "fail")._value.get() == 1
    held = refused.metrics["data"]["held_out"]
    assert 0 < held < MIN_HELD_OUT
    assert f"corrections_category_map: skipped ({held} held out, need {MIN_HELD_OUT})" in gate_record["skipped"]

    scores.maps[id(candidate)] = ("candidate", 0.95)
    passed = run()
    assert passed.promoted and promoted == [passed.version]
    stored = json.loads((trainer.registry.get(passed.version).path / METRICS_FILE).read_text())["gate"]
    assert stored["reference"]["version"] == "default-test" and stored["serving_version"] == "v-served"
    assert {c["name"]: c["against"] for c in stored["checks"]} == {"real_category_map": "serving",
                                                                   "reference_real_category_map": "reference"}


@pytest.mark.integration
def test_a_passing_run_publishes_nothing_once_an_operator_moved_the_pointer(monkeypatch, reference, make_settings,
                                                                           tmp_path):
    import redis

    from serving.promotion import PointerMoved
    from streamcore.lease import Lease

    entry, _ = reference
    settings = make_settings(model_dir=tmp_path / "models")
    trainer = Trainer(settings, TrainerConfig.from_settings(settings, device="cpu"), StageMetrics("trainer"))
    trainer.gates = Gates(ONTOLOGY, margin=0.01, device="cpu", reference=entry)
    publish_tiny(settings.serving.model_dir, "v-served", seed=2)
    served = trainer.registry.get("v-served").load()
    candidate = DynamicCNN(served.backbone, copy.deepcopy(served.head), served.config)
    store = redis.Redis.from_url(settings.redis.url)
    store.set(settings.redis.keys.model_current, "v-served")
    publish_tiny(settings.serving.model_dir, "v-operators", seed=3)

    def train(*args, **kwargs):  # an operator promotes their version while the run trains
        store.set(settings.redis.keys.model_current, "v-operators")
        return candidate, {"history": []}

    monkeypatch.setattr(retrain, "continue_head", train)
    monkeypatch.setattr(gate_run, "real_photo_scores", _Scores(candidate, served, (0.95, 0.90, 0.90)))
    lease = Lease(store, settings.redis.keys.run_lease, ttl_s=600)
    assert lease.acquire() is not None
    with pytest.raises(PointerMoved, match="from v-served to v-operators"):
        trainer._run_real(Serving("v-served", served), served, _held(12), started=0.0, progress=None, lease=lease)
    assert sorted(trainer.registry.versions()) == ["v-operators", "v-served"]  # the candidate was not published
    assert store.get(settings.redis.keys.model_current) == b"v-operators"
