"""A candidate's gate: each check compares it with a baseline, within a margin.

Two baselines: the model it would replace (``against="serving"``) and a fixed reference, the version last
promoted by hand or else the packaged default (``against="reference"``, :mod:`training.gate_run`). Against the replaced model alone, every promotion could be
a margin worse than the one before, and hourly promotions would add those margins up without limit; the
reference does not move, so its margin is spent once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

#: Gated metrics: name → (level, metric), evaluated with mined hints.
GATES = {"attribute_p3": ("attribute", "P@3"), "category_p1": ("category", "P@1")}
SERVING, REFERENCE = "serving", "reference"


@dataclass(frozen=True)
class GateCheck:
    name: str
    candidate: float
    baseline: float  # the score of the model it is compared with (``against``)
    passed: bool
    against: str = SERVING

    @classmethod
    def at_least(cls, name: str, candidate: float, baseline: float, *, margin: float,
                 against: str = SERVING) -> GateCheck:
        """Passes when ``candidate`` ≥ ``baseline`` − ``margin``."""
        return cls(name, candidate, baseline, candidate >= baseline - margin, against)

    @classmethod
    def at_most(cls, name: str, candidate: float, baseline: float, *, margin: float,
                against: str = SERVING) -> GateCheck:
        """Passes when ``candidate`` ≤ ``baseline`` + ``margin`` (an error that must not grow)."""
        return cls(name, candidate, baseline, candidate <= baseline + margin, against)

    def describe(self) -> str:
        return f"{self.name} {self.candidate:.3f} vs {self.against} {self.baseline:.3f}"


@dataclass(frozen=True)
class Rule:
    """How one score is gated: whether higher is better, and the least margin it gets (a share of a few
    images moves in steps wider than a tight ``gate_margin``)."""

    higher_is_better: bool = True
    min_margin: float = 0.0


#: The benchmark's gated metrics, each higher-is-better with no floor on its margin.
BENCHMARK_RULES = dict.fromkeys(GATES, Rule())


def compare(candidate: dict[str, float], baseline: dict[str, float], rules: dict[str, Rule], *, margin: float,
            against: str = SERVING) -> tuple[GateCheck, ...]:
    """One check per score in ``rules`` that both have, in ``rules``' order. Checks against the reference are
    named ``reference_<score>``: the same score is also checked against the serving model, and the counters and
    the decision must tell the two apart."""
    checks = []
    for name, rule in rules.items():
        if name not in candidate or name not in baseline:
            continue
        make = GateCheck.at_least if rule.higher_is_better else GateCheck.at_most
        label = name if against == SERVING else f"{against}_{name}"
        checks.append(make(label, candidate[name], baseline[name], margin=max(margin, rule.min_margin),
                           against=against))
    return tuple(checks)


@dataclass(frozen=True)
class Reference:
    """What a gate run made of the fixed reference: its version; ``status`` ``"evaluated"``, ``"the serving
    model"`` (it is the model the candidate would replace: the serving checks are its checks) or ``"skipped
    (<why>)"``; and its scores on this run's gate sets."""

    version: str | None
    status: str
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GateDecision:
    """The gate's checks (none, with nothing to compare with, passes), what it could not check and why, and
    the reference."""

    checks: tuple[GateCheck, ...]
    skipped: tuple[str, ...] = ()  # "<what>: skipped (<why>)"
    reference: Reference | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failed(self) -> list[str]:
        return [c.describe() for c in self.checks if not c.passed]

    def to_json(self) -> dict:
        """As ``metrics.json`` records it."""
        reference = dataclasses.asdict(self.reference) if self.reference is not None else None
        return {"passed": self.passed, "checks": [dataclasses.asdict(c) for c in self.checks],
                "failed": [c.name for c in self.checks if not c.passed], "skipped": list(self.skipped),
                "reference": reference}


def gate_scores(evaluation: dict[str, dict]) -> dict[str, float]:
    """The gated metrics of an :func:`evaluate_model` result."""
    return {name: evaluation[level][metric] for name, (level, metric) in GATES.items()}


def gate(candidate: dict[str, dict], serving: dict[str, dict] | None, *, margin: float,
         reference: dict[str, dict] | None = None) -> GateDecision:
    """Compare :func:`evaluate_model` results (mined hints): each gated metric ≥ serving − ``margin`` and, given
    the ``reference``'s results on the same split, ≥ reference − ``margin``."""
    ours = gate_scores(candidate)
    checks = compare(ours, gate_scores(serving), BENCHMARK_RULES, margin=margin) if serving is not None else ()
    if reference is not None:
        checks = (*checks, *compare(ours, gate_scores(reference), BENCHMARK_RULES, margin=margin, against=REFERENCE))
    return GateDecision(checks)
