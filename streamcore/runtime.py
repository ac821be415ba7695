"""Process-wide tuning every ``stylestream`` command applies before it loads torch.

Two defaults that cost a CPU model most of its speed, both measured on this project's 2-core machine:

- *OpenMP threads spin while idle* (``OMP_WAIT_POLICY``): spinning threads starved the decode threads and
  everything else on shared cores (an EfficientNet-Lite0 forward took 15 ms passive, 0.4-3.5 s spinning
  under load). Idle OpenMP threads sleep instead.
- *glibc hands every allocation over its mmap threshold back to the kernel* on ``free``: a forward's
  activations (38 MB for 8 images at 224 px) were mapped, zero-filled page by page and unmapped again on
  every call: ~4,800 page faults and 8 ms of kernel time per image in the worker, up to half of the
  model's time. Large blocks now come from the heap and stay there (no mmap, trimming only past 1 GB
  free, a 64 MB top pad): RSS stays at the peak a batch needs, and a forward stops faulting. All threads
  share the main heap: a thread's own arena grows in 64 MB heaps, and a block larger than that (a
  32-image chunk's activations are ~150 MB) would be mapped per call again.

An operator's own ``OMP_WAIT_POLICY``, ``MALLOC_*`` or ``GLIBC_TUNABLES`` settings win.

Per thread, :func:`run_at_idle_priority` lets work that only feeds the model (the classifier's decoding on a
CPU model) take the CPU time the forward leaves, instead of preempting one of its OpenMP threads and
stalling the whole team at the next barrier.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8
_TRIM_THRESHOLD = 1 << 30
_TOP_PAD = 64 << 20


def tune_process() -> dict[str, bool]:
    """Apply both defaults unless the environment already decides (call before starting threads); what was
    applied, by name."""
    omp_passive = "OMP_WAIT_POLICY" not in os.environ
    if omp_passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # read once, when torch loads OpenMP
    return {"omp_passive": omp_passive, "malloc_heap": _may_tune_malloc() and _keep_large_blocks_on_heap()}


def run_at_idle_priority() -> bool:
    """Run the calling thread at idle priority (Linux ``SCHED_IDLE``): it gets a core only when no other
    thread wants it. True when applied; False where the platform has no such policy or refuses it (a
    thread pool's initializer must not raise, so a refusal is logged, not raised)."""
    if not hasattr(os, "SCHED_IDLE"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # pid 0: this thread, not the process
    except OSError as exc:
        log.warning("cannot run a thread at idle priority (%s): it keeps the normal one", exc)
        return False
    return True


def _may_tune_malloc() -> bool:
    return sys.platform == "linux" and not any(k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in os.environ)


def _keep_large_blocks_on_heap() -> bool:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:  # not glibc (musl has no mallopt): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    done = all(mallopt(param, value) == 1 for param, value in
               ((_M_MMAP_MAX, 0), (_M_TOP_PAD, _TOP_PAD), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_ARENA_MAX, 1)))
    if not done:
        log.warning("mallopt refused a setting: large allocations may still be mapped and unmapped per call")
    return done
