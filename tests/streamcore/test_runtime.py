"""Process tuning: a large block comes from the heap and stays there (no map, zero-fill, unmap per call);
an operator's own settings win; idle priority is per thread.

Each case runs in a fresh interpreter: the tuning is process-wide and must happen before torch loads.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading

import pytest

from streamcore.runtime import run_at_idle_priority

glibc_malloc = pytest.mark.skipif(sys.platform != "linux" or not hasattr(ctypes.CDLL(None), "mallinfo2"),
                                  reason="glibc >= 2.33 malloc only")

_PROBE = """
import ctypes, json, os, sys, threading
import numpy as np
from streamcore.runtime import tune_process

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

info = ctypes.CDLL(None).mallinfo2
info.restype = MallInfo2
applied = tune_process() if sys.argv[1] == "tuned" else {}
block = np.ones(40 << 20, dtype=np.uint8)  # a forward's activations
held = info()
del block
freed = info()
in_thread = []
def model_thread():  # a chunk's activations, in another thread, larger than a thread arena's 64 MB heap
    block = np.ones(100 << 20, dtype=np.uint8)
    in_thread.append(info().hblkhd)
thread = threading.Thread(target=model_thread)
thread.start()
thread.join()
print(json.dumps({"applied": applied, "omp": os.environ.get("OMP_WAIT_POLICY"), "mapped_while_held": held.hblkhd,
                  "heap_after_free": freed.arena, "mapped_in_thread": in_thread[0]}))
"""


def _probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], env={**clean, **env}, capture_output=True, text=True,
                         check=True, timeout=60)
    return json.loads(out.stdout)


@glibc_malloc
def test_tuned_a_large_block_comes_from_the_heap_and_stays_there_after_free():
    plain, tuned = _probe("plain"), _probe("tuned")
    assert plain["mapped_while_held"] >= 40 << 20  # glibc's default: mapped, and unmapped again on free
    assert tuned["mapped_while_held"] < 40 << 20 and tuned["heap_after_free"] >= 40 << 20
    assert plain["mapped_in_thread"] >= 100 << 20 and tuned["mapped_in_thread"] < 100 << 20
    assert tuned["applied"] == {"omp_passive": True, "malloc_heap": True} and tuned["omp"] == "PASSIVE"


@glibc_malloc
def test_an_operators_own_settings_win():
    mine = _probe("tuned", MALLOC_ARENA_MAX="2", OMP_WAIT_POLICY="ACTIVE")
    assert mine["applied"] == {"omp_passive": False, "malloc_heap": False} and mine["omp"] == "ACTIVE"
    assert mine["mapped_while_held"] >= 40 << 20  # glibc's default behaviour, untouched


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="no SCHED_IDLE on this platform")
def test_idle_priority_is_taken_by_the_calling_thread_only():
    seen = []

    def decode_thread():
        seen.append((run_at_idle_priority(), os.sched_getscheduler(0)))

    thread = threading.Thread(target=decode_thread)
    thread.start()
    thread.join()
    assert seen == [(True, os.SCHED_IDLE)]
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the process and its other threads keep theirs
