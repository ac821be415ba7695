"""One retraining run: a candidate trained on users' corrections, gated, published, promoted.

* **Real photos.** A model trained on real photos (the packaged default, which the trainer continues while
  nothing is promoted unless ``start_from`` says ``benchmark``) keeps its trunk, and its head continues on
  the corrections alone, gated on real photos and held-out corrections (:mod:`training.real.retrain`).
* **The benchmark.** Any other model: the benchmark training split plus every stored correction (weighted
  like benchmark rows). Warm start: the serving model (Redis pointer → registry, checksum verified) keeps
  its frozen backbone and its head continues training on cached backbone features; a dynamic head in two
  phases, as it was made: the Base it keeps (trunk, categories, silent-text layers) continues first, then
  the dynamic layers continue on top of it, frozen (so corrections reach every level and a silent text
  still gets exactly Base's answer). Cold start (no serving model): freeze-then-fine-tune from scratch.
  AMP (bfloat16 autocast) on CUDA.
* **Progress and cancellation.** :class:`RunProgress` is the run's step hook: it exports step, loss and
  elapsed time, logs them every few seconds, and raises :class:`RunCancelled` at the next step boundary
  once its event is set; a cancelled run publishes nothing.
* **Gate.** :meth:`Trainer.consider` evaluates candidate and serving model on the same held-out test split in
  the same run (the paper's metrics, mined hints): each gated metric of the candidate must be at least the
  serving model's minus ``gate_margin``, and the fixed reference's (:mod:`training.gate_run`: the version last
  promoted by hand, else the packaged default, when of the candidate's kind). Only a passing candidate is
  published (``Registry.newest()``, the fallback when no pointer is set, never names a rejected model) and
  promoted, fenced by the run lease and by the pointer (an operator's promotion during the run wins, and the run
  is redone from it); its ``metrics.json`` holds the evaluations, the gate and the data it saw. With
  ``real_gate`` the candidate must also match, on real photos (:mod:`training.real.gate`), the model it would
  replace, the packaged default included.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from serving.checkpoint import save_checkpoint
from serving.models import DynamicCNN, build_head
from serving.ontology import load_ontology
from serving.predict import resolve_device
from serving.promotion import PointerMoved, promote
from serving.registry import Registry
from streamcore import redisconn
from streamcore.exceptions import StylestreamError
from streamcore.lease import Lease, LeaseLost
from streamcore.metrics import StageMetrics
from streamcore.settings import Settings
from training.continued import learns_multi
from training.data.benchmark import Split, load_benchmark
from training.feedback import Example, concat, learnable, to_split
from training.gate_run import Gates, chosen_reference
from training.gating import GATES, GateDecision
from training.onnx_export import build_or_skip
from training.progress import RunCancelled, RunProgress
from training.real.retrain import (
    Corrections,
    RetrainConfig,
    continue_head,
    is_real_photo_model,
    table2_hint_dropout,
)
from training.train import (
    Batchable,
    FitConfig,
    StepHook,
    evaluate_model,
    extract_features,
    fit,
    frozen_features,
    train_head,
)
from training.trainer_config import TrainerConfig

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class RunResult:
    """What one training run decided."""

    promoted: bool
    version: str | None  # the published version when promoted
    serving_version: str | None
    decision: GateDecision
    metrics: dict
    feedback_examples: int
    seconds: float
    skipped: str | None = None  # why the run trained nothing


@dataclass(frozen=True)
class Serving:
    version: str
    model: DynamicCNN


#: A trained candidate, the backbone features of every split it saw, and its fit history.
_Trained = tuple[DynamicCNN, dict[str, Tensor], dict]


class Trainer:
    """Trains, evaluates, gates, publishes and promotes; holds the per-version feature cache."""

    def __init__(self, settings: Settings, config: TrainerConfig, metrics: StageMetrics) -> None:
        if not settings.redis.url:
            raise StylestreamError("the trainer needs STYLESTREAM_REDIS_URL: the serving pointer lives in Redis")
        self.settings = settings
        self.config = config
        self.metrics = metrics
        self.ontology = load_ontology()
        self.registry = Registry(settings.serving.model_dir)
        self.device = str(resolve_device(config.device))
        self._redis = redisconn.connect(settings.redis)
        # Benchmark features of one backbone, keyed by the version that backbone belongs to.
        self._features: tuple[str, dict[str, Tensor]] | None = None
        self._default: tuple[str, DynamicCNN] | None = None  # what serves while nothing is promoted, loaded
        self.gates = Gates(self.ontology, margin=config.gate_margin, device=self.device, gate_data=config.gate_data,
                           reference=partial(chosen_reference, self._redis, settings.redis.keys.model_chosen, self.registry))
        if config.gate_data is not None:  # a wrong path fails at start, not an hour later in the first run
            from training.real.manifest import read_manifest

            read_manifest(config.gate_data, self.ontology)

    def serving(self) -> Serving | None:
        """The model the Redis pointer names, loaded with its checksum verified; None when unset."""
        version = self._redis.get(self.settings.redis.keys.model_current)
        if version is None:
            return None
        entry = self.registry.get(version.decode())
        return Serving(entry.version, entry.load(device=self.device))

    def benchmark(self, *, multi: bool) -> dict[str, Split]:
        return load_benchmark(self.ontology, self.config.benchmark(multi=multi), cache_dir=self.config.cache_dir)

    def run_once(self, examples: Sequence[Example] = (), *, progress: RunProgress | None = None,
                 lease: Lease | None = None) -> RunResult:
        """One full run: train a candidate on benchmark + ``examples``, gate it, maybe promote it.

        Args:
            progress: step hook; when it is cancelled the run stops at a step boundary.
            lease: the run lease; the promotion happens only while it still holds its token.

        Raises:
            RunCancelled: cancelled through ``progress``; nothing was published.
            LeaseLost: the lease passed to another replica before the promotion.
        """
        started = time.perf_counter()
        try:
            serving = self.serving()
            base = serving.model if serving is not None else self._start_model()
            if base is not None and is_real_photo_model(base):
                return self._run_real(serving, base, examples, started=started, progress=progress, lease=lease)
            multi = base.config.multi if base is not None else self.config.multi  # as learns_multi answers
            splits = self.benchmark(multi=multi)
            examples = learnable(examples, multi=multi)
            extra = to_split(examples, size=self.config.image_size) if examples else None
            if serving is None:
                candidate, feats, history = self._train_cold(splits, extra, multi, progress)
            else:
                candidate, feats, history = self._train_warm(serving, splits, extra, progress)
            result = self.consider(candidate, serving, splits["test"], features=(candidate.backbone, feats["test"]),
                                   history=history, feedback_examples=len(examples), started=started,
                                   progress=progress, lease=lease)
        except RunCancelled:
            self.metrics.trainer_runs.labels("cancelled").inc()
            raise
        except PointerMoved:
            self.metrics.trainer_runs.labels("superseded").inc()
            raise
        except Exception:
            self.metrics.trainer_runs.labels("error").inc()
            raise
        if result.promoted:  # the promoted model keeps this backbone: its cached features stay valid
            self._features = (result.version, {k: v[: len(splits[k])] for k, v in feats.items()})
        return result

    def _start_model(self) -> DynamicCNN | None:
        """What a run continues while nothing is promoted: what serves then, or nothing (a cold start)."""
        return self.unpromoted_model() if self.config.start_from == "packaged" else None

    def unpromoted_model(self) -> DynamicCNN:
        """What a classifier serves while nothing is promoted: the registry's newest version, else the packaged
        default (loaded once per version)."""
        entry = self.registry.unpromoted()
        if self._default is None or self._default[0] != entry.version:
            self._default = (entry.version, entry.load(device=self.device))
        return self._default[1]

    def learns_multi(self) -> bool:
        """Whether the model the next run continues takes several categories per photo (so may a correction)."""
        version = self._redis.get(self.settings.redis.keys.model_current)
        return learns_multi(self.settings, version.decode() if version is not None else None)

    def _run_real(self, serving: Serving | None, base: DynamicCNN, examples: Sequence[Example], *, started: float,
                  progress: RunProgress | None, lease: Lease | None) -> RunResult:
        """The head of a real-photo model continues on the corrections; gated on real photos and held-out ones."""
        corrections = Corrections.of(examples)
        serving_version = serving.version if serving else None
        if not corrections.train:
            self.metrics.trainer_runs.labels("skipped").inc()
            self.metrics.trainer_last_success.set_to_current_time()  # the trainer works: it had nothing to learn
            log.info("trainer run: no corrections to learn from (%d held out); nothing trained", len(corrections.held))
            return RunResult(False, None, serving_version, GateDecision(()), {}, len(examples),
                             time.perf_counter() - started, skipped="no corrections to learn from")
        if base.config.head != self.config.head:
            log.warning("trainer: STYLESTREAM_HEAD is %s but the real-photo model's head is %s: it continues as it is "
                        "(another head is trained from labelled photos: stylestream train --data)",
                        self.config.head, base.config.head)
        source = (self.registry.get(serving.version) if serving else self.registry.unpromoted()).path
        settings = {"hint_dropout": table2_hint_dropout(source)}
        config = RetrainConfig(epochs=self.config.epochs, seed=self.config.seed, **settings)
        candidate, history = continue_head(base, corrections.train, config, device=self.device, on_step=progress)
        decision = self.real_gate(candidate, serving, held=corrections.held)
        metrics = {"gate": {"margin": self.config.gate_margin, "serving_version": serving_version, **decision.to_json()},
                   "data": {"feedback_examples": len(examples), "trained_on": len(corrections.train),
                            "held_out": len(corrections.held)}}
        return self._decide(candidate, decision, metrics, serving, history={**history, "table2_settings": settings},
                            feedback_examples=len(examples), started=started, progress=progress, lease=lease)

    def _fit_config(self) -> FitConfig:
        return FitConfig(epochs=self.config.epochs, lr=self.config.lr, seed=self.config.seed)

    def _train_cold(self, splits: dict[str, Split], extra: Split | None, multi: bool,
                    on_step: StepHook | None) -> _Trained:
        data = {**splits, "train": concat(splits["train"], extra)} if extra is not None else splits
        pretrain = FitConfig(epochs=self.config.pretrain_epochs, seed=self.config.seed) if self.config.pretrain_epochs else None
        backbone, feats = frozen_features(self.config.backbone, self.ontology, data, multi=multi, pretrain=pretrain,
                                          device=self.device, on_step=on_step)
        model, history = train_head(self.config.head, backbone, feats, data, name=self.config.backbone,
                                    ontology=self.ontology, multi=multi, config=self._fit_config(), device=self.device,
                                    on_step=on_step)
        return model, feats, history

    def _train_warm(self, serving: Serving, splits: dict[str, Split], extra: Split | None,
                    on_step: StepHook | None) -> _Trained:
        feats = self._benchmark_features(serving, splits, on_step)
        data = splits
        if extra is not None:
            data = {**splits, "train": concat(splits["train"], extra)}
            extra_feats = extract_features(serving.model, torch.from_numpy(extra.images), device=self.device,
                                           on_step=on_step)
            feats = {**feats, "train": torch.cat([feats["train"], extra_feats])}
        # The candidate shares the serving backbone (frozen) and continues from a copy of its head.
        config = serving.model.config
        candidate = DynamicCNN(serving.model.backbone, copy.deepcopy(serving.model.head), config)
        train, val = (Batchable.from_split(data[s], multi=config.multi, inputs=feats[s]) for s in ("train", "val"))
        if config.silent_fallback:
            base_config = dataclasses.replace(config, head="base", silent_fallback=False)
            base = DynamicCNN(serving.model.backbone,
                              build_head(base_config, serving.model.backbone.out_features, self.ontology), base_config)
            base.head.load_state_dict(serving.model.head.kept_base())
            fit(base.to(self.device), train, val, self._fit_config(), features=True, device=self.device,
                on_step=on_step)
            candidate.head.keep_base(base.head)
        history = fit(candidate.to(self.device), train, val, self._fit_config(), features=True, device=self.device,
                      on_step=on_step)
        return candidate, feats, history

    def _benchmark_features(self, serving: Serving, splits: dict[str, Split],
                            on_step: StepHook | None) -> dict[str, Tensor]:
        if self._features is None or self._features[0] != serving.version:
            feats = {k: extract_features(serving.model, torch.from_numpy(s.images), device=self.device, on_step=on_step)
                     for k, s in splits.items()}
            self._features = (serving.version, feats)
        return self._features[1]

    def _evaluate(self, model: DynamicCNN, test: Split, features: tuple[nn.Module, Tensor] | None, *,
                  hints: bool) -> dict[str, dict]:
        # Cached features are valid only for the backbone they were computed with.
        cached = features[1] if features is not None and model.backbone is features[0] else None
        return evaluate_model(model, test, features=cached, hints=hints, device=self.device)

    def consider(self, candidate: DynamicCNN, serving: Serving | None, test: Split, *,
                 features: tuple[nn.Module, Tensor] | None = None, history: dict | None = None,
                 feedback_examples: int = 0, started: float | None = None, progress: RunProgress | None = None,
                 lease: Lease | None = None) -> RunResult:
        """Evaluate ``candidate`` and ``serving`` on ``test``, gate, and publish + promote a passing candidate.

        Args:
            features: ``(backbone, test features)``: cached features, used for models with that backbone.
            progress: checked once more before publishing, so a cancelled run publishes nothing.
            lease: fences the promotion (see :func:`serving.promotion.promote`).
        """
        started = time.perf_counter() if started is None else started
        mined = self._evaluate(candidate, test, features, hints=True)
        baseline = self._evaluate(serving.model, test, features, hints=True) if serving else None
        run = self.gates.start(candidate)
        self.gates.benchmark(run, mined, (serving.version, baseline) if serving else None,
                             evaluate=lambda model: self._evaluate(model, test, features, hints=True))
        if self.config.real_gate:
            self.gates.real(run, candidate, self._replaced(serving))
        decision = run.decision()
        metrics = {"mined": mined, "none": self._evaluate(candidate, test, features, hints=False),
                   "gate": {"margin": self.config.gate_margin, "serving_version": serving.version if serving else None,
                            "serving": baseline, **decision.to_json()},
                   "data": {"feedback_examples": feedback_examples, "test_examples": len(test)}}
        if serving is None:
            for name in GATES:
                self.metrics.gate_results.labels(name, "no_baseline").inc()
        return self._decide(candidate, decision, metrics, serving, history=history, feedback_examples=feedback_examples,
                            started=started, progress=progress, lease=lease)

    def _decide(self, candidate: DynamicCNN, decision: GateDecision, metrics: dict, serving: Serving | None, *,
                history: dict | None, feedback_examples: int, started: float, progress: RunProgress | None,
                lease: Lease | None) -> RunResult:
        """Count the gate's checks; publish and promote a candidate that passed them all."""
        if progress is not None:
            progress.check()
        for check in decision.checks:
            self.metrics.gate_results.labels(check.name, "pass" if check.passed else "fail").inc()
        version = None
        if decision.passed:
            replaces = (serving.version if serving else "") if lease is not None else None
            if lease is not None and not lease.renew():  # publish nothing the fenced promotion would refuse
                raise LeaseLost("lost the run lease before publishing")
            if replaces is not None:  # checked again as the promotion moves the pointer; here to publish nothing
                self._still_serving(replaces)
            version = self._publish(candidate, metrics, history, feedback_examples)
            checks = ", ".join(c.describe() for c in decision.checks)
            reason = f"a trainer run passed the gate ({feedback_examples} corrections; {checks or 'nothing to compare'})"
            promote(self.settings, version, lease=lease, reason=reason, replaces=replaces)
        self.metrics.trainer_runs.labels("promoted" if decision.passed else "rejected").inc()
        self.metrics.trainer_last_success.set_to_current_time()
        result = RunResult(decision.passed, version, serving.version if serving else None, decision, metrics,
                           feedback_examples, time.perf_counter() - started)
        log.info("trainer run: %s (serving %s, reference %s, %d feedback examples, %.1f s): failed %s; %s",
                 f"promoted {version}" if version else "rejected", result.serving_version,
                 decision.reference.version if decision.reference else None, feedback_examples, result.seconds,
                 decision.failed() or "none", [c.describe() for c in decision.checks] + list(decision.skipped))
        return result

    def _still_serving(self, version: str) -> None:
        """Raise :class:`PointerMoved` unless the pointer names ``version`` (``""``: is unset)."""
        pointer = self._redis.get(self.settings.redis.keys.model_current)
        now = pointer.decode() if pointer is not None else ""
        if now != version:
            raise PointerMoved(f"the serving pointer moved during the run, from {version or 'unset'} to {now or 'unset'}")

    def _replaced(self, serving: Serving | None) -> tuple[str, DynamicCNN]:
        """The version and model a candidate would replace: the serving one, else what serves unpromoted."""
        if serving is not None:
            return serving.version, serving.model
        model = self.unpromoted_model()  # which records its version
        return self._default[0], model

    def real_gate(self, candidate: DynamicCNN, serving: Serving | None,
                  held: Sequence[Example] | None = None) -> GateDecision:
        """Against what the candidate would replace (the serving model, or what serves while nothing is promoted)
        and the reference (:mod:`training.gate_run`): category mAP on the fixture's real photos and on the
        operator's held-out photos when ``gate_data`` names them, how often it answers garment photos and refuses
        no-garment images, and, given a run's ``held`` corrections, its scores on those."""
        run = self.gates.start(candidate)
        self.gates.real(run, candidate, self._replaced(serving), held=held)
        return run.decision()

    def _publish(self, model: DynamicCNN, metrics: dict, history: dict | None, feedback_examples: int) -> str:
        config = {"trainer": self.config.model_dump(mode="json"), "feedback_examples": feedback_examples,
                  "history": history or {}}
        if history and "table2_settings" in history:  # what the next run continuing this model trains with
            config["table2_settings"] = history["table2_settings"]
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(model, Path(tmp) / "ckpt", config=config, metrics=metrics)
            return self.registry.publish(Path(tmp) / "ckpt", build=build_or_skip).version
