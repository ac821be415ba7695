"""Throughput of the mining function alone, on one core with numeric libraries single-threaded."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from threadpoolctl import threadpool_limits

from streamcore.schemas import Post
from training.text.miner import TextMiner


def _pin_one_core() -> None:
    # One core is the unit the SPEC's throughput goal is stated in; not every OS supports pinning.
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def posts_per_second(miner: TextMiner, posts: Sequence[Post], *, min_seconds: float = 3.0) -> float:
    """Posts mined per second by ``miner.mine`` (looping over ``posts`` for at least ``min_seconds``).

    Raises:
        ValueError: when ``posts`` is empty.
    """
    if not posts:
        raise ValueError("need at least one post to benchmark, got 0")
    _pin_one_core()
    with threadpool_limits(limits=1):
        try:
            import torch

            torch.set_num_threads(1)
        except ImportError:  # the miner does not need torch; the limit only matters if it is loaded
            pass
        for post in posts[:50]:  # warm the lemma/segmentation caches as a long-running worker has them
            miner.mine(post)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < min_seconds:
            for post in posts:
                miner.mine(post)
            done += len(posts)
        return done / (time.perf_counter() - start)
