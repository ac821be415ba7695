"""Live guard after promotion: users' corrections judge each model version; a worse newcomer is rolled back.

A correction *agrees* with a label when the label's top category is one of the corrected categories, or
when the label abstained and the correction says the photo shows no garment.
The label is the one the classifier stored in Redis (``<prefix>:label:{post_id}``), so the verdict
counts for the version that produced it (``model_version``). Verdicts live in Redis, one per
(version, post): replicas share them and a replayed correction is not counted twice.

After each batch of corrections :meth:`LiveGuard.check` compares the serving version with the one it
replaced (the promotion history) and with a fixed reference: the version an operator last promoted by hand, else
the packaged model, as for the trainer's gate (:func:`training.gate_run.chosen_reference`). Compared only one
step back, hourly promotions could each lose a little less than the margin. Once the serving version and one
of those have at least ``min_corrections`` verdicts each and the serving version's agreement rate is more than
``margin`` below it, the guard rolls back one step (:func:`serving.promotion.rollback`, conditional on the
version still serving, so concurrent guards roll back once; the next check goes on while the version then
serving is still that much worse than the reference) and counts it in ``stylestream_model_rollbacks_total``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from serving.promotion import rollback
from serving.registry import default_entry
from streamcore.exceptions import StylestreamError
from streamcore.metrics import StageMetrics
from streamcore.schemas import Feedback
from streamcore.settings import Settings

log = logging.getLogger(__name__)

# Record a verdict (ARGV[2]: 1 agree, 0 disagree) on post ARGV[1] once; returns {new, agree, total}.
_VERDICT = """
local new = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
if new == 1 then
  redis.call('HINCRBY', KEYS[2], 'total', 1)
  if ARGV[2] == '1' then redis.call('HINCRBY', KEYS[2], 'agree', 1) end
end
local agree = redis.call('HGET', KEYS[2], 'agree') or 0
return {new, tonumber(agree), tonumber(redis.call('HGET', KEYS[2], 'total'))}
"""


@dataclass(frozen=True)
class Agreement:
    """A version's verdicts so far."""

    agree: int
    total: int

    @property
    def rate(self) -> float:
        return self.agree / self.total if self.total else 0.0


def should_roll_back(serving: Agreement, previous: Agreement, *, margin: float, min_corrections: int) -> bool:
    """True when both versions have enough verdicts and ``serving`` agrees worse than ``previous - margin``."""
    enough = min(serving.total, previous.total) >= min_corrections
    return enough and serving.rate < previous.rate - margin


class LiveGuard:
    """Scores the labels users correct and rolls a worse newly promoted version back."""

    def __init__(self, settings: Settings, client: redis.Redis, metrics: StageMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.margin = settings.trainer.guard_margin
        self.min_corrections = settings.trainer.guard_min_corrections
        self._redis = client
        self._verdict = client.register_script(_VERDICT)
        try:  # the reference while nothing was promoted by hand, as for the trainer's gate
            self._packaged: str | None = default_entry().version
        except FileNotFoundError:
            self._packaged = None

    def _keys(self, version: str) -> list[str]:
        tally = self.settings.redis.keys.guard(version)  # both keys in one slot: the verdict script runs on a Cluster
        return [f"{tally}:posts", tally]

    def observe(self, corrections: Sequence[Feedback]) -> None:
        """Record whether each corrected post's stored label agreed; posts without a label are skipped."""
        if not corrections:
            return
        stored = self._redis.mget([self.settings.redis.keys.label(f.post_id) for f in corrections])
        for feedback, raw in zip(corrections, stored, strict=True):
            if raw is None:
                continue
            label = json.loads(raw)
            version, shown = label["model_version"], label["categories"]
            # A label that abstained ("no garment") agrees only with a correction saying the photo shows none.
            agree = shown[0]["term"] in feedback.categories if shown else feedback.no_garment
            new, agreed, total = self._verdict(keys=self._keys(version), args=[feedback.post_id, int(agree)])
            if new:
                self.metrics.corrections.labels(version, "agree" if agree else "disagree").inc()
            self.metrics.agreement.labels(version).set(agreed / total)

    def agreement(self, version: str) -> Agreement:
        """The verdicts recorded for ``version``."""
        agree, total = self._redis.hmget(self._keys(version)[1], ["agree", "total"])
        return Agreement(int(agree or 0), int(total or 0))

    def check(self) -> str | None:
        """Roll back the serving version if it agrees worse than the one it replaced or the one chosen by hand;
        returns the version rolled back to, or None."""
        keys = self.settings.redis.keys
        history = [v.decode() for v in self._redis.lrange(keys.model_history, 0, 1)]
        current = self._redis.get(keys.model_current)
        if len(history) < 2 or current is None or current.decode() != history[0]:
            return None  # no promotion to judge, or the pointer was set outside the promotion history
        chosen = self._redis.get(keys.model_chosen)
        reference = chosen.decode() if chosen is not None else self._packaged
        # A serving version chosen by hand is judged against the one it replaced only.
        compared = [v for v in dict.fromkeys([history[1], reference]) if v is not None and v != history[0]]
        serving = self.agreement(history[0])
        worse = {v: a for v in compared
                 if should_roll_back(serving, a := self.agreement(v), margin=self.margin,
                                     min_corrections=self.min_corrections)}
        if not worse:
            return None
        than = ", ".join(f"{a.rate:.2f} ({a.total}) with {v}" for v, a in worse.items())
        try:
            rollback(self.settings, expected=history[0], by_hand=False,
                     reason=f"live guard: corrections agree {serving.rate:.2f} ({serving.total}) with {history[0]}, "
                            f"{than}")
        except StylestreamError as exc:  # another replica's guard (or an operator) moved it first, or the version
            log.warning("live guard: no rollback of %s: %s", history[0], exc)  # before it does not load
            return None
        self.metrics.rollbacks.inc()
        log.warning("live guard: rolled back %s -> %s: corrections agree %.2f (%d) vs %s, margin %.2f",
                    history[0], history[1], serving.rate, serving.total, than, self.margin)
        return history[1]
