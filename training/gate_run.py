"""One gate run: the candidate, the model it would replace and a fixed reference, scored on the same sets.

* **Why a reference.** A candidate may score ``gate_margin`` below the model it replaces. Against that model
  alone, each hourly promotion could be a margin worse than the one before and the losses would add up
  without limit. So the candidate must also score at least the reference's minus the margin: the version an
  operator last promoted by hand, else the packaged default model (:func:`chosen_reference`). Trainer runs do
  not move it, so its margin is spent once.
* **Same sets, every run.** The reference is scored in each run on every set the candidate is (the held-out
  corrections grow from run to run: an earlier run's scores would not be comparable), once per run.
* **Skipped, and why.** When the reference is not of the candidate's kind (another backbone, head, ontology
  or label kind, or a real-photo model against one trained on the synthetic benchmark), its scores do not
  bound the candidate's: a model the operator chose instead of it is no worse for scoring below it. The
  decision then records ``reference: skipped (<why>)``; likewise when no packaged model ships or loads.
* **Not twice.** When the model replaced is the reference (nothing promoted yet: the packaged default
  serves), its scores are the serving ones: it is not evaluated again, and there is no second set of checks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis

from serving.checkpoint import load_config
from serving.models import DynamicCNN
from serving.models.build import ModelConfig
from serving.ontology import Ontology
from serving.registry import Entry, Registry, default_entry
from training.feedback import Example
from training.gating import (
    BENCHMARK_RULES,
    REFERENCE,
    SERVING,
    GateCheck,
    GateDecision,
    Reference,
    compare,
    gate_scores,
)
from training.real.gate import compare_real, manifest_photos, real_photo_scores
from training.real.retrain import CORRECTIONS_RULES, held_out_scores

log = logging.getLogger(__name__)

#: What makes two models of one kind: scores on a gate set measure the same thing.
KIND = ("backbone", "head", "multi", "ontology_version")
#: The reference's status when it is the model the candidate would replace.
IS_SERVING = "the serving model"

#: ``(candidate scores, baseline scores, margin, against)`` → the checks of one gate set.
Rules = Callable[[dict[str, float], dict[str, float], float, str], tuple[GateCheck, ...]]


def chosen_reference(redis: Redis, key: str, registry: Registry) -> Entry:
    """The fixed floor: the version an operator last promoted by hand (``key``: their own model, say, which a
    candidate continued from it must not fall below), else the packaged default.

    Raises:
        OSError: neither is there (the gate then skips the reference and says why).
        RedisError: Redis is away (the run fails and is tried again).
    """
    chosen = redis.get(key)
    if chosen is not None:
        try:
            return registry.get(chosen.decode())
        except (KeyError, ValueError, UnicodeDecodeError):  # removed since: the packaged model bounds instead
            log.warning("gate: %r, promoted by hand, is not in the registry; the packaged model is the reference",
                        chosen)
    return default_entry()


def kind_difference(candidate: ModelConfig, reference: ModelConfig) -> str | None:
    """How ``reference`` is of another kind than ``candidate``; None when it is of the same."""
    found = [f"{name} {getattr(reference, name)} (the candidate's: {getattr(candidate, name)})" for name in KIND
             if getattr(reference, name) != getattr(candidate, name)]
    # A real-photo model is one with an abstain bar (training.real.retrain.is_real_photo_model).
    photos = ["a real-photo model" if c.abstain_below > 0 else "a benchmark model" for c in (reference, candidate)]
    if photos[0] != photos[1]:
        found.append(f"{photos[0]} (the candidate: {photos[1]})")
    return "; ".join(found) or None


def _real_rules(candidate: dict[str, float], baseline: dict[str, float], margin: float,
                against: str) -> tuple[GateCheck, ...]:
    return (*compare_real(candidate, baseline, margin=margin, against=against),
            *compare(candidate, baseline, CORRECTIONS_RULES, margin=margin, against=against))


def _benchmark_rules(candidate: dict[str, float], baseline: dict[str, float], margin: float,
                     against: str) -> tuple[GateCheck, ...]:
    return compare(candidate, baseline, BENCHMARK_RULES, margin=margin, against=against)


@dataclass
class GateRun:
    """The checks of one run, gate set by gate set (:meth:`add`), and what it made of the reference."""

    margin: float
    version: str | None  # the reference's
    skipped_reference: str | None  # "skipped (<why>)": no reference checks in this run
    checks: list[GateCheck] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    reference_scores: dict[str, float] = field(default_factory=dict)
    evaluated: bool = False

    def needs_reference(self, replaced: str | None) -> bool:
        """Whether a set whose replaced model is version ``replaced`` must score the reference too."""
        return self.skipped_reference is None and self.version != replaced

    def add(self, rules: Rules, candidate: dict[str, float], replaced: tuple[str, dict[str, float]] | None,
            reference: dict[str, float] | None) -> None:
        """One set's checks: against the replaced model (version, scores) and, when scored here, the reference."""
        if replaced is not None:
            self.checks += rules(candidate, replaced[1], self.margin, SERVING)
            if self.skipped_reference is None and replaced[0] == self.version:  # it is the reference
                self.reference_scores.update(replaced[1])
        if reference is not None:
            self.checks += rules(candidate, reference, self.margin, REFERENCE)
            self.reference_scores.update(reference)
            self.evaluated = True

    def decision(self) -> GateDecision:
        status = self.skipped_reference or ("evaluated" if self.evaluated else IS_SERVING)
        notes = [f"reference: {self.skipped_reference}"] if self.skipped_reference else []
        return GateDecision(tuple(self.checks), (*notes, *self.skipped),
                            Reference(self.version, status, dict(self.reference_scores)))


class Gates:
    """Starts each run's gate and scores its sets; keeps the reference, loaded once."""

    def __init__(self, ontology: Ontology, *, margin: float, device: str, gate_data: Path | None = None,
                 reference: Callable[[], Entry] = default_entry) -> None:
        self.ontology = ontology
        self.margin = margin
        self.device = device
        self.gate_data = gate_data
        self._entry = reference
        self._loaded: tuple[str, DynamicCNN] | None = None

    def start(self, candidate: DynamicCNN) -> GateRun:
        """A run's gate, with the reference picked for ``candidate`` (or why none is)."""
        try:
            entry = self._entry()
            config = load_config(entry.path)
        except (OSError, ValueError, KeyError) as exc:  # shipped without it, or its config unreadable
            log.error("gate: no reference model (%s: %s): candidates are gated against the serving model alone",
                      type(exc).__name__, exc)
            return GateRun(self.margin, None, f"skipped (no packaged default model: {type(exc).__name__}: {exc})")
        why = kind_difference(candidate.config, config)
        if why is not None:
            return GateRun(self.margin, entry.version, f"skipped ({entry.version} is of another kind: {why})")
        return GateRun(self.margin, entry.version, None)

    def _reference(self, run: GateRun) -> DynamicCNN | None:
        """The reference model, loaded once per process; None (and the run says why) when it does not load."""
        if self._loaded is None or self._loaded[0] != run.version:
            try:
                entry = self._entry()
                self._loaded = (entry.version, entry.load(device=self.device))
            except (OSError, ValueError) as exc:  # a checksum mismatch: never trusted as a bar
                log.error("gate: reference %s does not load (%s): skipped", run.version, exc)
                run.skipped_reference = f"skipped ({run.version} does not load: {type(exc).__name__}: {exc})"
                return None
        return self._loaded[1]

    def benchmark(self, run: GateRun, candidate: dict[str, dict], serving: tuple[str, dict[str, dict]] | None,
                  evaluate: Callable[[DynamicCNN], dict[str, dict]]) -> None:
        """The benchmark's gated metrics (:data:`~training.gating.GATES`): ``candidate`` and the ``serving``
        (version, evaluation) on the test split; ``evaluate`` scores the reference on the same split."""
        reference = None
        if run.needs_reference(serving[0] if serving else None) and (model := self._reference(run)) is not None:
            reference = gate_scores(evaluate(model))
        replaced = (serving[0], gate_scores(serving[1])) if serving else None
        run.add(_benchmark_rules, gate_scores(candidate), replaced, reference)

    def real(self, run: GateRun, candidate: DynamicCNN, replaced: tuple[str, DynamicCNN],
             held: Sequence[Example] | None = None) -> None:
        """Real photos: the fixture's and ``gate_data``'s (:func:`~training.real.gate.real_photo_scores`) and, in
        a run that held corrections out (``held``), those (:func:`~training.real.retrain.held_out_scores`);
        ``replaced`` is the (version, model) the candidate would replace."""
        models = [candidate, replaced[1]]
        if run.needs_reference(replaced[0]) and (model := self._reference(run)) is not None:
            models.append(model)
        photos = manifest_photos(self.gate_data, self.ontology) if self.gate_data is not None else None
        scores = [real_photo_scores(m, self.ontology, photos=photos) for m in models]
        if held is not None:
            corrections, skipped = held_out_scores(models, held, device=self.device)
            scores = [{**s, **c} for s, c in zip(scores, corrections, strict=True)]
            run.skipped += skipped
        run.add(_real_rules, scores[0], (replaced[0], scores[1]), scores[2] if len(scores) > 2 else None)
