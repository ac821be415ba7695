"""The review page's server as the page benchmarks run it, and the CPU of a whole process tree (a browser's
work is in its children)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from streamcore.embedded import free_port, stop_processes
from streamcore.settings import Settings
from workers.benchmarks.pipeline_alone import cpu_seconds


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and all its descendants (Chromium runs a dozen processes under its driver)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += cpu_seconds(pid)
    return total


def start_page(settings: Settings, stack: ExitStack) -> tuple[str, subprocess.Popen]:
    """``stylestream ui`` started in its own process, as deployed; its address and process. Stopped with ``stack``."""
    port = free_port()
    env = {**settings.child_env(), "STYLESTREAM_UI_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "ui"], env=env, stdout=subprocess.DEVNULL)
    stack.callback(stop_processes, [proc])
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return url, proc
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the review page did not start")
