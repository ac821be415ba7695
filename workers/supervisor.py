"""``up``'s stage processes, each restarted when it exits, until one keeps exiting.

A stage can die for reasons a restart cures (the kernel's OOM killer, a SIGKILL, a crash on a state that has
passed): ``up`` starts it again at once, says so, and counts it in ``stylestream_stage_restarts_total{stage}``
on its own metrics port. The stage resumes from its group's committed offsets, so nothing it had not finished
is lost. A stage that exits :data:`MAX_RESTARTS` times within :data:`WINDOW_S` seconds is failing for a reason
a restart does not cure (a bad setting, a broken model directory): ``up`` then stops, saying which stage.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

#: Restarts of one stage within :data:`WINDOW_S` seconds after which ``up`` gives up.
MAX_RESTARTS = 5
WINDOW_S = 60.0


class Stages:
    """One process per stage, started by ``start``; :meth:`check` restarts those that exited.

    A restart the system refuses (fork failing for memory or the process limit) is tried again after 1, 2, 4,
    8... seconds (``retry_s`` doubling), and the exit counts once however many tries it takes; after
    ``max_restarts`` refused tries ``up`` gives up on the stage.
    """

    def __init__(self, stages: Sequence[str], start: Callable[[str], subprocess.Popen], *,
                 on_restart: Callable[[str, int], None] = lambda stage, status: None,
                 max_restarts: int = MAX_RESTARTS, window_s: float = WINDOW_S, retry_s: float = 1.0) -> None:
        self._start = start
        self._on_restart = on_restart
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.retry_s = retry_s
        self.procs: dict[str, subprocess.Popen] = {stage: start(stage) for stage in stages}
        self._restarts: dict[str, deque[float]] = {stage: deque() for stage in stages}
        #: Stages whose exit was counted and whose restart is due: (when to try, refused tries so far).
        self._due: dict[str, tuple[float, int]] = {}

    def processes(self) -> list[subprocess.Popen]:
        """The stages' processes now (restarted ones replace those that exited)."""
        return list(self.procs.values())

    def check(self) -> str | None:
        """Restart every stage that exited; why ``up`` should stop instead (a stage that keeps exiting, or one
        the system will not start again), or None."""
        now = time.monotonic()
        for stage, proc in list(self.procs.items()):
            status = proc.poll()
            if status is None:
                continue
            if stage not in self._due:  # a new exit
                recent = self._restarts[stage]
                while recent and now - recent[0] > self.window_s:
                    recent.popleft()
                if len(recent) >= self.max_restarts:
                    return (f"stage {stage} exited {len(recent) + 1} times within {self.window_s:g} s (last exit "
                            f"status {status}): not restarted again")
                recent.append(now)
                self._due[stage] = (now, 0)
            at, refused = self._due[stage]
            if now < at:
                continue
            try:
                self.procs[stage] = self._start(stage)
            except OSError as exc:
                refused += 1
                if refused >= self.max_restarts:
                    return f"stage {stage} exited and could not be started again ({refused} tries): {exc}"
                log.warning("could not restart stage %s (try %d): %s", stage, refused, exc)
                self._due[stage] = (now + self.retry_s * 2 ** (refused - 1), refused)
                continue
            del self._due[stage]
            self._on_restart(stage, status)
        return None
