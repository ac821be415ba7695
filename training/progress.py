"""A training run's step hook: progress exported and logged, and cancellation at the next step boundary."""

from __future__ import annotations

import logging
import threading
import time

from streamcore.exceptions import StylestreamError
from streamcore.metrics import StageMetrics

log = logging.getLogger(__name__)


class RunCancelled(StylestreamError):
    """A training run was stopped at a step boundary; it published nothing."""


class RunProgress:
    """The step hook of one run: exports step, loss and elapsed time, logs them, and stops a cancelled run.

    Args:
        cancel: set it to stop the run at its next step boundary.
        log_every_s: seconds between progress log lines.
    """

    def __init__(self, metrics: StageMetrics, cancel: threading.Event, *, log_every_s: float = 5.0) -> None:
        self.metrics = metrics
        self.cancel = cancel
        self.log_every_s = log_every_s
        self.steps = 0
        self.loss: float | None = None
        self.started = time.monotonic()
        self._next_log = self.started + log_every_s
        metrics.trainer_step.set(0)
        metrics.trainer_elapsed.set(0)

    def __call__(self, step: int, loss: float | None) -> None:
        """A :data:`~training.train.StepHook`: counts every step of every phase (features and fitting)."""
        self.check()
        self.steps += 1
        now = time.monotonic()
        self.metrics.trainer_step.set(self.steps)
        self.metrics.trainer_elapsed.set(now - self.started)
        if loss is not None:
            self.loss = loss
            self.metrics.trainer_loss.set(loss)
        if now >= self._next_log:
            self._next_log = now + self.log_every_s
            log.info("trainer run: step %d, loss %s, %.1f s", self.steps,
                     f"{self.loss:.4f}" if self.loss is not None else "-", now - self.started)

    def check(self) -> None:
        """Raise :class:`RunCancelled` once the run was cancelled."""
        if self.cancel.is_set():
            raise RunCancelled(f"training run cancelled after {self.steps} steps, "
                               f"{time.monotonic() - self.started:.1f} s")
