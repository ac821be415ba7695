"""Trainer stage: retrain on a schedule or after enough feedback, gate against the serving model, promote.

Design:

* **Inputs.** One consumer group (``<prefix>-trainer``) reads ``posts`` and ``feedback``. Posts go into a
  bounded :class:`~training.feedback.PostStore`; a feedback record joins to its stored post and becomes a
  training :class:`~training.feedback.Example` (image, hints mined from the post's text, targets from the
  feedback). Feedback for an unknown post id is counted (``result="unknown_post"``), logged and skipped;
  malformed feedback is dead-lettered like any bad record. Posts of a fetch are handled before its
  feedback, so a correction fetched together with its post still joins.
* **When.** :meth:`TrainerStage.tick` starts a run every ``interval_s`` and as soon as ``min_feedback``
  new examples arrived since the last run started; one run at a time, on a dedicated thread, so the
  event loop keeps polling and heartbeating while the model trains.
* **What.** :meth:`Trainer.run_once` (used by the loop and the tests): the benchmark training split plus
  every retained feedback example (weighted like benchmark rows). Warm start: the serving model (Redis
  pointer → registry, checksum verified) keeps its frozen backbone and its head continues training on
  cached backbone features. Cold start (no serving model): freeze-then-fine-tune from scratch.
* **Gate.** :meth:`Trainer.consider` evaluates candidate and serving model on the same held-out test
  split in the same run (the paper's metrics, mined hints) and passes only if every gated metric of the
  candidate is at least the serving model's minus ``gate_margin``. Only a passing candidate is
  published (so ``Registry.newest()``, the fallback when no pointer is set, never names a rejected model)
  and promoted; its ``metrics.json`` holds both evaluations and the gate.

State lives in memory: a restart starts with an empty post store and no retained feedback (offsets are
committed once a record is absorbed), so corrections made before the restart are not retrained on.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from streamcore import redisconn
from streamcore.exceptions import BadInput, StylestreamError
from streamcore.metrics import StageMetrics
from streamcore.serde import decode, decode_post
from streamcore.settings import Settings
from streamcore.stage import Stage
from training.checkpoint import save_checkpoint
from training.data import BenchmarkConfig, Split, load_benchmark
from training.evaluate import evaluate_model
from streamcore.schemas import Feedback
from training.feedback import Example, PostStore, concat, join, to_split
from training.models import DynamicCNN
from training.ontology import load_ontology
from training.predict import resolve_device
from training.promotion import promote
from training.registry import Registry
from training.text import TextMiner
from training.train import Batchable, FitConfig, extract_features, fit, frozen_features, train_head

log = logging.getLogger(__name__)

#: Gated metrics: name → (level, metric), evaluated with mined hints.
GATES = {"attribute_p3": ("attribute", "P@3"), "category_p1": ("category", "P@1")}


class TrainerConfig(BaseModel):
    """The trainer's knobs. Build it with :meth:`from_settings`: the ``trainer_*`` defaults live in Settings."""

    model_config = ConfigDict(frozen=True)

    interval_s: float | None = Field(gt=0, description="retrain period; None: no schedule")
    min_feedback: int | None = Field(ge=1, description="new feedback examples that trigger a run; None: never")
    gate_margin: float = Field(ge=0, le=1, description="how much worse than serving a candidate may be")
    max_posts: int = Field(ge=1, description="posts kept for joining feedback")
    max_examples: int = Field(ge=1, description="feedback examples retained for training")
    backbone: str
    head: str
    multi: bool
    device: str
    n_train: int = Field(ge=10)
    n_test: int = Field(ge=10)
    image_size: int = Field(64, ge=32, description="benchmark and stored-post image side")
    epochs: int = Field(ge=1)
    pretrain_epochs: int = Field(ge=0, description="cold start only: end-to-end epochs before freezing")
    lr: float = Field(0.05, gt=0)
    seed: int = 0
    cache_dir: Path | None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> TrainerConfig:
        """The ``trainer_*`` settings plus the serving backbone, head and device."""
        knobs = {name: getattr(settings, f"trainer_{name}") for name in
                 ("interval_s", "min_feedback", "gate_margin", "max_posts", "max_examples", "n_train", "n_test",
                  "epochs", "pretrain_epochs", "multi", "cache_dir")}
        return cls(**{**knobs, "backbone": settings.backbone, "head": settings.head, "device": settings.device,
                      **overrides})

    def benchmark(self, *, multi: bool) -> BenchmarkConfig:
        return BenchmarkConfig(multi=multi, n_train=self.n_train, n_test=self.n_test, size=self.image_size,
                               seed=self.seed)


@dataclass(frozen=True)
class GateCheck:
    name: str
    candidate: float
    serving: float
    passed: bool


@dataclass(frozen=True)
class GateDecision:
    """The gate's checks; no checks (no serving model) passes."""

    checks: tuple[GateCheck, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def gate(candidate: dict[str, dict], serving: dict[str, dict] | None, *, margin: float) -> GateDecision:
    """Compare :func:`evaluate_model` results (mined hints): each gated metric ≥ serving − ``margin``."""
    if serving is None:
        return GateDecision(())
    checks = []
    for name, (level, metric) in GATES.items():
        new, old = candidate[level][metric], serving[level][metric]
        checks.append(GateCheck(name, new, old, new >= old - margin))
    return GateDecision(tuple(checks))


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


@dataclass(frozen=True)
class Serving:
    version: str
    model: DynamicCNN


#: A trained candidate, the backbone features of every split it saw, and its fit history.
_Trained = tuple[DynamicCNN, dict[str, Tensor], dict]


class Trainer:
    """Trains, evaluates, gates, publishes and promotes; holds the per-version feature cache."""

    def __init__(self, settings: Settings, config: TrainerConfig, metrics: StageMetrics) -> None:
        if not settings.redis_url:
            raise StylestreamError("the trainer needs STYLESTREAM_REDIS_URL: the serving pointer lives in Redis")
        self.settings = settings
        self.config = config
        self.metrics = metrics
        self.ontology = load_ontology()
        self.registry = Registry(settings.model_dir)
        self.device = str(resolve_device(config.device))
        self._redis = redisconn.connect(settings)
        # Benchmark features of one backbone, keyed by the version that backbone belongs to.
        self._features: tuple[str, dict[str, Tensor]] | None = None

    def serving(self) -> Serving | None:
        """The model the Redis pointer names, loaded with its checksum verified; None when unset."""
        version = self._redis.get(self.settings.keys.model_current)
        if version is None:
            return None
        entry = self.registry.get(version.decode())
        return Serving(entry.version, entry.load(device=self.device))

    def benchmark(self, *, multi: bool) -> dict[str, Split]:
        return load_benchmark(self.ontology, self.config.benchmark(multi=multi), cache_dir=self.config.cache_dir)

    def run_once(self, examples: Sequence[Example] = ()) -> RunResult:
        """One full run: train a candidate on benchmark + ``examples``, gate it, maybe promote it."""
        started = time.perf_counter()
        try:
            serving = self.serving()
            multi = serving.model.config.multi if serving else self.config.multi
            splits = self.benchmark(multi=multi)
            extra = to_split(examples) if examples else None
            if serving is None:
                candidate, feats, history = self._train_cold(splits, extra, multi)
            else:
                candidate, feats, history = self._train_warm(serving, splits, extra)
            result = self.consider(candidate, serving, splits["test"], features=(candidate.backbone, feats["test"]),
                                   history=history, feedback_examples=len(examples), started=started)
        except Exception:
            self.metrics.trainer_runs.labels("error").inc()
            raise
        if result.promoted:  # the promoted model keeps this backbone: its cached features stay valid
            self._features = (result.version, {k: v[: len(splits[k])] for k, v in feats.items()})
        return result

    def _fit_config(self) -> FitConfig:
        return FitConfig(epochs=self.config.epochs, lr=self.config.lr, seed=self.config.seed)

    def _train_cold(self, splits: dict[str, Split], extra: Split | None, multi: bool) -> _Trained:
        data = {**splits, "train": concat(splits["train"], extra)} if extra is not None else splits
        pretrain = FitConfig(epochs=self.config.pretrain_epochs, seed=self.config.seed) if self.config.pretrain_epochs else None
        backbone, feats = frozen_features(self.config.backbone, self.ontology, data, multi=multi, pretrain=pretrain,
                                          device=self.device)
        model, history = train_head(self.config.head, backbone, feats, data, name=self.config.backbone,
                                    ontology=self.ontology, multi=multi, config=self._fit_config(), device=self.device)
        return model, feats, history

    def _train_warm(self, serving: Serving, splits: dict[str, Split], extra: Split | None) -> _Trained:
        feats = self._benchmark_features(serving, splits)
        data = splits
        if extra is not None:
            data = {**splits, "train": concat(splits["train"], extra)}
            extra_feats = extract_features(serving.model, torch.from_numpy(extra.images), device=self.device)
            feats = {**feats, "train": torch.cat([feats["train"], extra_feats])}
        # The candidate shares the serving backbone (frozen) and continues from a copy of its head.
        candidate = DynamicCNN(serving.model.backbone, copy.deepcopy(serving.model.head), serving.model.config)
        multi = serving.model.config.multi
        train, val = (Batchable.from_split(data[s], multi=multi, inputs=feats[s]) for s in ("train", "val"))
        history = fit(candidate.to(self.device), train, val, self._fit_config(), features=True, device=self.device)
        return candidate, feats, history

    def _benchmark_features(self, serving: Serving, splits: dict[str, Split]) -> dict[str, Tensor]:
        if self._features is None or self._features[0] != serving.version:
            feats = {k: extract_features(serving.model, torch.from_numpy(s.images), device=self.device)
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
                 feedback_examples: int = 0, started: float | None = None) -> RunResult:
        """Evaluate ``candidate`` and ``serving`` on ``test``, gate, and publish + promote a passing candidate.

        Args:
            features: ``(backbone, test features)``: cached features, used for models with that backbone.
        """
        started = time.perf_counter() if started is None else started
        mined = self._evaluate(candidate, test, features, hints=True)
        baseline = self._evaluate(serving.model, test, features, hints=True) if serving else None
        decision = gate(mined, baseline, margin=self.config.gate_margin)
        for check in decision.checks:
            self.metrics.gate_results.labels(check.name, "pass" if check.passed else "fail").inc()
        if serving is None:
            for name in GATES:
                self.metrics.gate_results.labels(name, "no_baseline").inc()
        metrics = {"mined": mined, "none": self._evaluate(candidate, test, features, hints=False),
                   "gate": {"margin": self.config.gate_margin, "serving_version": serving.version if serving else None,
                            "serving": baseline, "passed": decision.passed}}
        version = None
        if decision.passed:
            version = self._publish(candidate, metrics, history, feedback_examples)
            promote(self.settings, version)
        self.metrics.trainer_runs.labels("promoted" if decision.passed else "rejected").inc()
        self.metrics.trainer_last_success.set_to_current_time()
        result = RunResult(decision.passed, version, serving.version if serving else None, decision, metrics,
                           feedback_examples, time.perf_counter() - started)
        log.info("trainer run: %s (serving %s, %d feedback examples, %.1f s): %s",
                 f"promoted {version}" if version else "rejected", result.serving_version, feedback_examples,
                 result.seconds, [dataclasses.astuple(c) for c in decision.checks])
        return result

    def _publish(self, model: DynamicCNN, metrics: dict, history: dict | None, feedback_examples: int) -> str:
        config = {"trainer": self.config.model_dump(mode="json"), "feedback_examples": feedback_examples,
                  "history": history or {}}
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(model, Path(tmp) / "ckpt", config=config, metrics=metrics)
            return self.registry.publish(Path(tmp) / "ckpt").version


class TrainerStage(Stage):
    """Consumes posts and feedback; runs :meth:`Trainer.run_once` when due, off the event loop."""

    name = "trainer"
    inputs = ("posts", "feedback")

    def __init__(self, settings: Settings, config: TrainerConfig | None = None, **kwargs) -> None:
        super().__init__(settings, **kwargs)
        self.config = config or TrainerConfig.from_settings(settings)
        self.trainer = Trainer(settings, self.config, self.metrics)
        self.store = PostStore(self.config.max_posts, image_size=self.config.image_size)
        self.examples: deque[Example] = deque(maxlen=self.config.max_examples)
        self.new_examples = 0
        self.last_run: RunResult | None = None
        self.feedback = Counter("stylestream_trainer_feedback_total", "Feedback records, by outcome", ("result",),
                                registry=self.metrics.registry)
        self.stored_posts = Gauge("stylestream_trainer_stored_posts", "Posts held for joining feedback",
                                  registry=self.metrics.registry)
        self._train_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="train")
        self._running: asyncio.Future | None = None
        self._next_run = time.monotonic() + (self.config.interval_s or 0)

    async def setup(self) -> None:
        loop = asyncio.get_running_loop()
        self.miner = await loop.run_in_executor(None, TextMiner.load, self.trainer.ontology)
        if await loop.run_in_executor(None, self.trainer.serving) is None:
            self._next_run = time.monotonic()  # nothing serves yet: bootstrap a model now, not in an hour

    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        posts_topic = self.settings.topic("posts")
        for record in sorted(records, key=lambda r: r.topic != posts_topic):  # posts first: see module doc
            try:
                if record.topic == posts_topic:
                    await self._on_post(record)
                else:
                    await self._on_feedback(record)
            except BadInput as exc:
                if record.topic == posts_topic:  # the classifier owns a bad post's letter; bad feedback's is ours
                    self.skip(record, exc)
                else:
                    await self.dead_letter(record, exc)
                continue
            self.done(record)
        self.stored_posts.set(len(self.store))

    async def _on_post(self, record: ConsumerRecord) -> None:
        post = decode_post(record.value, self.settings)
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.store.add, post, self.settings)
        except BadInput as exc:  # the classifier dead-letters image problems; here the post is just not kept
            log.info("trainer: post %s not stored: %s", post.post_id, exc)

    async def _on_feedback(self, record: ConsumerRecord) -> None:
        feedback = decode(record.value, Feedback, max_bytes=self.settings.max_message_bytes)
        example = await asyncio.get_running_loop().run_in_executor(
            None, lambda: join(feedback, self.store, ontology=self.trainer.ontology, miner=self.miner,
                               settings=self.settings, multi=self.config.multi))
        if example is None:
            self.feedback.labels("unknown_post").inc()
            log.warning("feedback %s[%d]@%d: post %s unknown (not seen or evicted); skipped",
                        record.topic, record.partition, record.offset, feedback.post_id)
            return
        self.examples.append(example)
        self.new_examples += 1
        self.feedback.labels("joined").inc()

    async def tick(self) -> None:
        if self._running is not None and not self._running.done():
            return
        now = time.monotonic()
        if self.due(now):
            self.new_examples = 0
            self._next_run = now + (self.config.interval_s or 0)
            snapshot = list(self.examples)
            self._running = asyncio.get_running_loop().run_in_executor(self._train_pool, self._run, snapshot)

    def due(self, now: float) -> bool:
        """True when the schedule says so or enough new feedback examples arrived (``now``: monotonic)."""
        scheduled = self.config.interval_s is not None and now >= self._next_run
        return scheduled or (self.config.min_feedback is not None and self.new_examples >= self.config.min_feedback)

    def _run(self, examples: list[Example]) -> None:
        try:
            self.last_run = self.trainer.run_once(examples)
        except Exception:  # a failed run is counted and logged; the next one may succeed
            log.exception("trainer run failed")

    async def shutdown(self) -> None:
        """Let a run in progress finish (publish + promote are atomic, but a half run is wasted work)."""
        if self._running is not None and not self._running.done():
            log.info("trainer: waiting for the training run in progress")
            await self._running
        self._train_pool.shutdown()


def run(settings: Settings) -> None:
    """Run the trainer stage until SIGTERM/SIGINT (``stylestream worker trainer``)."""
    stage = TrainerStage(settings)
    stage.serve_health(settings.stage_metrics_port("trainer"))
    asyncio.run(stage.run())
