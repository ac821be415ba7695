"""The page benchmark counts the CPU of a whole process tree: a browser's work is in its children."""

from __future__ import annotations

import os
import subprocess
import sys

from workers.benchmarks.pipeline_alone import cpu_seconds
from workers.benchmarks.ui import _tree_cpu_seconds

_BURN = """
import sys, time
while time.process_time() < 0.3:
    pass
print("burnt", flush=True)
sys.stdin.read()
"""


def test_a_childs_cpu_counts_in_its_parents_tree() -> None:
    child = subprocess.Popen([sys.executable, "-c", _BURN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "burnt"  # the child has used 0.3 s of CPU and is still alive
        own = cpu_seconds(os.getpid())
        tree = _tree_cpu_seconds(os.getpid())
        assert tree - own >= 0.25  # the child's 0.3 s, less a clock tick of rounding
        assert _tree_cpu_seconds(child.pid) >= 0.25
    finally:
        child.communicate("")
