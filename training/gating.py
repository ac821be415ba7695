"""A candidate's gate: each check compares it with the model it would replace, within a margin."""

from __future__ import annotations

from dataclasses import dataclass

#: Gated metrics: name → (level, metric), evaluated with mined hints.
GATES = {"attribute_p3": ("attribute", "P@3"), "category_p1": ("category", "P@1")}


@dataclass(frozen=True)
class GateCheck:
    name: str
    candidate: float
    serving: float
    passed: bool

    @classmethod
    def at_least(cls, name: str, candidate: float, serving: float, *, margin: float) -> GateCheck:
        """Passes when ``candidate`` ≥ ``serving`` − ``margin``."""
        return cls(name, candidate, serving, candidate >= serving - margin)

    @classmethod
    def at_most(cls, name: str, candidate: float, serving: float, *, margin: float) -> GateCheck:
        """Passes when ``candidate`` ≤ ``serving`` + ``margin`` (an error that must not grow)."""
        return cls(name, candidate, serving, candidate <= serving + margin)


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
        checks.append(GateCheck.at_least(name, candidate[level][metric], serving[level][metric], margin=margin))
    return GateDecision(tuple(checks))
