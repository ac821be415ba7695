"""The pipeline benchmark's runs: posts in Kafka, one classify worker, labels read back from Redis; saturated and at half load."""


from __future__ import annotations

import asyncio
import bisect
import os
import shutil
import statistics
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Self

import redis
import torch

from streamcore.embedded import stop_processes
from streamcore.kafka import delete_topics, ensure_topics, make_producer
from streamcore.schemas import Hints, Label, Post
from streamcore.serde import encode
from streamcore.settings import Settings
from workers.benchmarks.pipeline_alone import cpu_seconds
from workers.launcher import start_stage


def produce_posts(settings: Settings, posts: list[Post], hints: list[Hints], *, rate: float | None = None) -> None:
    """Posts and hints to Kafka: all at once (hints first, a backlog), or at ``rate`` posts/s, each with its hints.

    aiokafka, whose record batches and CRC32C are compiled: kafka-python's pure-Python CRC32C manages ~5 MB/s,
    less than one CPU classifier reads 250 KB photos at, and it would compete with the worker for cores.
    """
    asyncio.run(_produce_async(settings, posts, hints, rate))


async def _produce_async(settings: Settings, posts: list[Post], hints: list[Hints], rate: float | None) -> None:
    producer = make_producer(settings, acks=1)
    posts_topic, hints_topic = settings.kafka.topic("posts"), settings.kafka.topic("hints")
    await producer.start()
    try:
        sent = []
        if rate is None:
            for h in hints:
                sent.append(await producer.send(hints_topic, encode(h), key=h.post_id.encode()))
        start = time.monotonic()
        for i, (post, hint) in enumerate(zip(posts, hints)):
            if rate is not None:
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            sent.append(await producer.send(posts_topic, encode(post), key=post.post_id.encode()))
            if rate is not None:
                sent.append(await producer.send(hints_topic, encode(hint), key=hint.post_id.encode()))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def _labels(settings: Settings, count: int, timeout: float, worker: subprocess.Popen,
            cpu: list[tuple[int, float]] | None = None) -> list[Label]:
    """All ``count`` labels once they are in Redis; ``cpu`` collects (labels so far, worker CPU s) per poll."""
    store, stream = redis.Redis.from_url(settings.redis.url), settings.redis.keys.labels_stream
    deadline = time.monotonic() + timeout
    while (done := store.xlen(stream)) < count:
        if cpu is not None:
            cpu.append((done, cpu_seconds(worker.pid)))
        if worker.poll() is not None:
            raise RuntimeError(f"the classify worker exited with {worker.returncode} after {store.xlen(stream)} labels")
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {store.xlen(stream)} of {count} labels after {timeout:.0f}s")
        time.sleep(0.05)
    entries = store.xrange(stream)
    store.delete(stream)
    return [Label.model_validate_json(fields[b"label"]) for _, fields in entries]


def _worker(settings: Settings, logs: Path | None) -> subprocess.Popen:
    if logs is None:
        return start_stage("classify", settings.child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"classify-{settings.kafka.group_prefix}-mb{settings.classify.max_batch}.log", "wb") as log:
        return start_stage("classify", settings.child_env(), stdout=log, stderr=subprocess.STDOUT)


def _fresh(base: Settings, posts: list[Post], hints: list[Hints], **changes) -> tuple[Settings, list[Post], list[Hints]]:
    """New topics, group, Redis keys and post ids: a post id labelled in an earlier run would be a duplicate,
    and a failed run's labels must not count for the next one."""
    run = uuid.uuid4().hex[:8]
    settings = base.replace(**{"topic_prefix": f"bench{run}.", "group_prefix": f"bench{run}",
                                       "redis_prefix": f"bench{run}", **changes})
    ensure_topics(settings)
    posts = [p.model_copy(update={"post_id": f"{run}-{p.post_id}"}) for p in posts]
    hints = [h.model_copy(update={"post_id": f"{run}-{h.post_id}"}) for h in hints]
    return settings, posts, hints


class _GpuSampler:
    """Mean GPU utilisation (%) over 200 ms samples of ``nvidia-smi`` while the block runs."""

    def __init__(self, device: torch.device) -> None:
        self._index = device.index or 0
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", str(self._index),
                 "-lms", "200"]
        with subprocess.Popen(query, stdout=subprocess.PIPE, text=True) as proc:
            for line in proc.stdout:
                if self._stop.is_set():
                    break
                if line.strip().isdigit():
                    self._samples.append(float(line))
            proc.terminate()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self) -> dict:
        if not self._samples:
            return {}
        ordered = sorted(self._samples)
        return {"gpu_util_mean_pct": round(statistics.fmean(ordered), 1),
                "gpu_util_p90_pct": ordered[int(0.9 * (len(ordered) - 1))], "gpu_util_samples": len(ordered)}


def run_saturated(base: Settings, posts: list[Post], hints: list[Hints], max_batch: int, device: torch.device,
               logs: Path | None, timeout: float) -> dict:
    settings, posts, hints = _fresh(base, posts, hints, max_batch=max_batch)
    start = time.monotonic()
    produce_posts(settings, posts, hints)
    produced = time.monotonic() - start
    proc = _worker(settings, logs)
    sample = device.type == "cuda" and shutil.which("nvidia-smi") is not None
    cpu: list[tuple[int, float]] = []
    try:
        if sample:
            _labels_first(settings, proc)
            with _GpuSampler(device) as sampler:
                labels = _labels(settings, len(posts), timeout, proc, cpu)
        else:
            labels = _labels(settings, len(posts), timeout, proc, cpu)
        cpu.append((len(posts), cpu_seconds(proc.pid)))
    finally:
        stop_processes([proc], timeout=30)
        delete_topics(settings)  # the embedded broker keeps records in memory: 0.5 GB per realistic run
    # The steady state: labels between the first 10% (start-up, the first batches) and the last 20% (whose
    # images were prepared ahead while the rest ran, so the model runs them alone).
    stamps = sorted(l.labeled_at.timestamp() for l in labels)
    # The worker's CPU per image from the first 10% of labels on (start-up and model loading excluded).
    first = next((n, t) for n, t in cpu if n >= len(posts) // 10)
    result = {"max_batch": max_batch, "load_avg_1m_after": round(os.getloadavg()[0], 2),
              "images_per_s": _label_rate(stamps, 0.1, 0.8),
              # A tail faster than the rest would mean work done ahead (decoding) inflates the rate.
              "images_per_s_by_third": [_label_rate(stamps, a, b) for a, b in ((0.1, 0.4), (0.4, 0.7), (0.7, 1.0))],
              "cpu_ms_per_image": round((cpu[-1][1] - first[1]) * 1000 / max(1, cpu[-1][0] - first[0]), 2),
              "produce_s": round(produced, 1)}
    return {**result, **(sampler.summary() if sample else {})}


def _label_rate(stamps: list[float], start: float, end: float) -> float:
    """Labels per second between the ``start`` and ``end`` fractions of the sorted label times.

    A batch's labels share one time, so the rate counts the labels finished after the window's first time
    up to its last (counted by index, a window of ten batches of 128 would gain or lose up to one batch).
    """
    first = min(int(start * len(stamps)), len(stamps) - 2)
    last = max(first + 1, int(end * len(stamps)) - 1)
    t0, t1 = stamps[first], stamps[last]
    if t1 <= t0:  # the window lies in one batch: up to the next one
        t1 = next((t for t in stamps[last:] if t > t0), t0)
    done = bisect.bisect_right(stamps, t1) - bisect.bisect_right(stamps, t0)
    return round(done / max(t1 - t0, 1e-9), 1)


def _labels_first(settings: Settings, worker: subprocess.Popen) -> None:
    """Wait for the worker's first label: GPU sampling starts once it is serving, not during CUDA start-up."""
    store, deadline = redis.Redis.from_url(settings.redis.url), time.monotonic() + 300
    while not store.xlen(settings.redis.keys.labels_stream):
        if worker.poll() is not None:
            raise RuntimeError(f"the classify worker exited with {worker.returncode} before its first label")
        if time.monotonic() > deadline:
            raise TimeoutError("the worker labelled nothing in 300 s")
        time.sleep(0.05)


def run_latency(base: Settings, posts: list[Post], hints: list[Hints], rate: float, logs: Path | None,
             timeout: float) -> list[float]:
    settings, posts, hints = _fresh(base, posts, hints)
    proc = _worker(settings, logs)
    try:
        produce_posts(settings, posts[:1], hints[:1], rate=1.0)
        _labels(settings, 1, timeout, proc)  # worker is up and has joined the group
        produce_posts(settings, posts[1:], hints[1:], rate=rate)
        labels = _labels(settings, len(posts) - 1, timeout, proc)
    finally:
        stop_processes([proc], timeout=30)
        delete_topics(settings)
    return sorted((l.labeled_at - l.received_at).total_seconds() * 1000 for l in labels)


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]
