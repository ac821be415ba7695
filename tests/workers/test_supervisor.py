"""``up``'s stage supervision with real processes: a stage that dies is started again and counted; one that keeps
dying stops ``up`` instead of being restarted forever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from streamcore.embedded import stop_processes
from tests.support import wait_until
from workers.supervisor import Stages

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
QUITTER = [sys.executable, "-c", "raise SystemExit(3)"]


def test_a_stage_that_dies_is_started_again_and_counted():
    restarts = []
    stages = Stages(["text", "classify"], lambda stage: subprocess.Popen(SLEEPER),
                    on_restart=lambda stage, status: restarts.append((stage, status)))
    try:
        first = stages.procs["classify"]
        assert stages.check() is None and restarts == []  # all alive: nothing to do
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        assert stages.check() is None
        assert restarts == [("classify", -signal.SIGKILL)]
        assert stages.procs["classify"] is not first and stages.procs["classify"].poll() is None
        assert stages.procs["text"].poll() is None and len(stages.processes()) == 2
    finally:
        stop_processes(stages.processes())


def test_a_stage_that_keeps_exiting_is_given_up_on_with_the_reason():
    started = []

    def start(stage: str) -> subprocess.Popen:
        started.append(stage)
        return subprocess.Popen(QUITTER if stage == "trainer" else SLEEPER)

    stages = Stages(["text", "trainer"], start, max_restarts=3, window_s=600)
    reasons: list[str | None] = []
    try:
        wait_until(lambda: reasons.append(stages.check()) or reasons[-1] is not None, timeout=60,
                   what="up to give the trainer up")
    finally:
        stop_processes(stages.processes())
    assert started.count("trainer") == 4 and started.count("text") == 1  # the first start and three restarts
    assert "stage trainer exited 4 times within 600 s (last exit status 3)" in reasons[-1]


def test_a_restart_the_system_refuses_is_tried_again_later_and_the_exit_counted_once():
    refusals = [OSError(12, "Cannot allocate memory")] * 2
    restarts, tries = [], []

    def start(stage: str) -> subprocess.Popen:
        tries.append(stage)
        if len(tries) > 1 and refusals:
            raise refusals.pop()
        return subprocess.Popen(QUITTER if len(tries) == 1 else SLEEPER)

    stages = Stages(["classify"], start, on_restart=lambda stage, status: restarts.append(status), max_restarts=3,
                    retry_s=3600)
    try:
        stages.procs["classify"].wait()
        assert stages.check() is None and len(tries) == 2 and restarts == []  # refused: no exception
        assert stages.check() is None and len(tries) == 2  # not tried again before its time
        stages.retry_s = 0
        stages._due["classify"] = (0.0, 1)  # its time has come (as after the wait)
        assert stages.check() is None and len(tries) == 3 and refusals == []  # refused again
        # Started on the third try: one exit, counted once.
        assert stages.check() is None and restarts == [3] and stages.procs["classify"].poll() is None
        assert len(stages._restarts["classify"]) == 1
    finally:
        stop_processes(stages.processes())


def test_a_stage_the_system_will_not_start_again_is_given_up_on_with_the_reason():
    def start(stage: str) -> subprocess.Popen:
        if started:
            raise OSError(11, "Resource temporarily unavailable")
        started.append(stage)
        return subprocess.Popen(QUITTER)

    started: list[str] = []
    stages = Stages(["text"], start, max_restarts=3, window_s=600, retry_s=0)
    stages.procs["text"].wait()
    assert stages.check() is None and stages.check() is None
    why = stages.check()
    assert why == "stage text exited and could not be started again (3 tries): [Errno 11] Resource temporarily unavailable"
