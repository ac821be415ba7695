"""Classifier pipeline throughput and latency: posts in Kafka → labels in Redis, versus the model alone.

    .venv/bin/stylestream bench pipeline --workload realistic   # 1080 px photos, EfficientNet-Lite0 @224
    .venv/bin/stylestream bench pipeline --workload small       # the project's 64 px posts, tiny @64

All in one run, on the same machine state (the machine is shared: compare the ratios, not across runs):

1. *model alone*: the worker's own predictor (forward with top-k + label JSON) on a batch already on the
   device, at each batch size (median of three), in img/s and CPU ms per image, measured right before and
   right after each pipeline run at that batch size (their mean is that run's reference);
2. *decode alone*: images per second on ONE core, the old path (full decode, then resize) and the new one
   (DCT-domain downscaling; on CUDA also nvJPEG in batches), and the new one on every core; *ingest alone*:
   posts per second through parsing, validation, fingerprint and base64 (old: stdlib on the event loop;
   new: pybase64 in the parse threads);
3. *pipeline*: N posts and their hints are produced before ONE ``stylestream worker classify`` starts;
   the rate is taken from the labels' ``labeled_at`` between the first 10% and the last 20% of them (the
   steady state: start-up excluded, and the tail whose images were prepared while the rest ran, which the
   model then runs alone; each third's rate is reported too), for each ``max_batch`` of the sweep; on
   CUDA with the GPU's utilisation sampled every 200 ms. The sweep runs ``--rounds`` times (3 on CPU,
   every other round backwards) and each entry gives the medians of its rounds, the range of its ratio
   and every round: two cores shared with other machines' work drift by 20% within minutes, more than
   the differences measured;
4. *latency*: posts (each followed by its hints, as a zero-latency text stage would) at 50% of the
   pipeline's saturated rate; latency = ``labeled_at - received_at`` (Kafka timestamp of the post).

Hints come from each post's ground truth (one category, material and pattern, as a perfect miner would
give): the classifier's import path, and this benchmark's, stay free of the text miner (and of gensim).
Realistic posts reuse ``--distinct`` generated photos under fresh post ids: decoding costs the same, and
generating thousands of 1080 px photos would take longer than the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self

import redis
import torch
from rich.console import Console
from rich.table import Table

from streamcore.decode import decode_scaled
from streamcore.embedded import EmbeddedStack, stop_processes
from streamcore.images import decode_image, to_chw
from streamcore.kafka import delete_topics, ensure_topics, make_producer
from streamcore.reports import write_report
from streamcore.schemas import Hints, Label, Post, ScoredTerm
from streamcore.serde import decode_post, encode
from streamcore.settings import Settings
from streamcore.sinks import fingerprint
from training.checkpoint import save_checkpoint
from training.models import build_model
from training.ontology import load_ontology
from training.predict import EncodedJpeg, Predictor
from training.registry import Registry
from training.synthetic.posts import Truth, generate_posts
from workers.launcher import start_stage

COMMAND = "stylestream bench pipeline"

# A run is several times the classifier's max_inflight (1,024 posts, fetched and parsed as soon as they come):
# in a shorter one, no stretch runs in the steady state (max_batch 32, img/s by third: 104/112/121 with 1,536
# realistic posts, 105/102/106 with 3,072).
WORKLOADS = {
    "realistic": {"image_size": 1080, "photo": True, "backbone": "efficientnet_lite0", "input_size": 224,
                  "posts": 3072, "latency_posts": 120, "out": "reports/bench_pipeline.json"},
    "small": {"image_size": 64, "photo": False, "backbone": "tiny", "input_size": 64,
              "posts": 4000, "latency_posts": 600, "out": "reports/bench_pipeline_small.json"},
}


def _truth_hints(post: Post, truth: Truth) -> Hints:
    def one(terms: tuple[str, ...]) -> list[ScoredTerm]:
        return [ScoredTerm(term=terms[0], score=1.0)] if terms else []

    return Hints(post_id=post.post_id, miner_version="ground-truth", categories=one(truth.categories),
                 materials=one(truth.materials), patterns=one(truth.patterns))


def _workload(count: int, *, image_size: int, photo: bool, distinct: int) -> tuple[list[Post], list[Hints]]:
    generated = list(generate_posts(load_ontology(), min(count, distinct) if photo else count, seed=42,
                                    prefix="bench", size=image_size, photo=photo))
    posts, hints = [], []
    for i in range(count):
        post, truth = generated[i % len(generated)]
        post = post.model_copy(update={"post_id": f"bench-{i}"})
        posts.append(post)
        hints.append(_truth_hints(post, truth))
    return posts, hints


def _publish_model(registry_dir: Path, backbone: str, head: str, input_size: int) -> None:
    torch.manual_seed(0)
    model = build_model(backbone=backbone, head=head, ontology=load_ontology(), image_size=input_size)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(model, tmp, config={"purpose": "pipeline benchmark"}, metrics={})
        Registry(registry_dir).publish(Path(tmp), name=f"bench-{backbone}-{input_size}")


def _rate(step: Callable[[], int], *, repeats: int) -> tuple[float, float]:
    """Median items/s of ``repeats`` timed runs of ``step`` (which returns how many items it did), and the
    median CPU milliseconds per item of this process, all threads (steadier than wall time on a shared host)."""
    rates, cpu = [], []
    for _ in range(repeats):
        wall, used = time.perf_counter(), time.process_time()
        done = step()
        rates.append(done / (time.perf_counter() - wall))
        cpu.append((time.process_time() - used) * 1000 / done)
    return statistics.median(rates), statistics.median(cpu)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _model_alone(predictor: Predictor, hints: list[Hints], batch: int, images: int) -> tuple[float, float]:
    size = predictor.image_size
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    rows, ids, stamps = list(pixels), [f"m{i}" for i in range(batch)], [0] * batch
    batch_hints = [hints[i % len(hints)] for i in range(batch)]

    staged = predictor.stage(rows, batch_hints)  # on the device already, as nvJPEG leaves photos

    def step(rounds: int) -> int:
        for _ in range(rounds):
            predictor.label_json(predictor.infer(staged), ids, stamps)
        return rounds * batch

    step(1)  # warm-up (cuDNN autotuning, allocator)
    return _rate(lambda: step(max(1, images // batch)), repeats=3)


def _decode_alone(predictor: Predictor, blobs: list[bytes], *, images: int, threads: int, cuda_batches: Sequence[int],
                  cuda_images: int, max_pixels: int) -> dict:
    size = predictor.image_size
    work = [blobs[i % len(blobs)] for i in range(images)]

    def serial(fn: Callable[[bytes], object]) -> Callable[[], int]:
        return lambda: sum(1 for b in work if fn(b) is not None)

    def old(b: bytes):
        return to_chw(decode_image(b, max_pixels=max_pixels), size)

    def new(b: bytes):
        return decode_scaled(b, size, max_pixels=max_pixels)

    with ThreadPoolExecutor(threads) as pool:
        def parallel() -> int:
            return sum(1 for _ in pool.map(new, work))

        result = {"old_full_decode_1_core": round(_rate(serial(old), repeats=3)[0], 1),
                  "new_dct_scaled_1_core": round(_rate(serial(new), repeats=3)[0], 1),
                  f"new_dct_scaled_{threads}_threads": round(_rate(parallel, repeats=3)[0], 1)}
    if predictor.cuda:
        for batch in cuda_batches:
            encoded = [EncodedJpeg(work[i % len(work)]) for i in range(batch)]
            predictor.stage(encoded, [None] * batch)  # warm-up
            rounds = max(1, cuda_images // batch)

            def staged(encoded: list[EncodedJpeg] = encoded, rounds: int = rounds) -> int:
                return sum(predictor.stage(encoded, [None] * len(encoded)).images.shape[0] for _ in range(rounds))

            result[f"nvjpeg_batch_{batch}"] = round(_rate(staged, repeats=3)[0], 1)
    return result


def _ingest_alone(posts: list[Post], settings: Settings, *, images: int, threads: int) -> dict:
    """Posts per second through what the classifier does to a message before its image is decoded: parse and
    validate, fingerprint (SHA-256), base64 → JPEG bytes. Old: stdlib base64, all of it on the event loop's
    one thread; new: pybase64, in the parse/decode threads."""
    raw = [encode(posts[i % len(posts)]) for i in range(images)]

    def old(value: bytes) -> bytes:
        post = decode_post(value, settings)
        fingerprint(value)
        return base64.b64decode(post.image.b64, validate=True)

    def new(value: bytes) -> bytes:
        post = decode_post(value, settings)
        fingerprint(value)
        return post.image.raw_bytes()

    with ThreadPoolExecutor(threads) as pool:
        return {"old_stdlib_1_core": round(_rate(lambda: sum(1 for v in raw if old(v)), repeats=3)[0], 1),
                "new_1_core": round(_rate(lambda: sum(1 for v in raw if new(v)), repeats=3)[0], 1),
                f"new_{threads}_threads": round(_rate(lambda: sum(1 for _ in pool.map(new, raw)), repeats=3)[0], 1)}


def _produce(settings: Settings, posts: list[Post], hints: list[Hints], *, rate: float | None = None) -> None:
    """Posts and hints to Kafka: all at once (hints first, a backlog), or at ``rate`` posts/s, each with its hints.

    aiokafka, whose record batches and CRC32C are compiled: kafka-python's pure-Python CRC32C manages ~5 MB/s,
    less than one CPU classifier reads 250 KB photos at, and it would compete with the worker for cores.
    """
    asyncio.run(_produce_async(settings, posts, hints, rate))


async def _produce_async(settings: Settings, posts: list[Post], hints: list[Hints], rate: float | None) -> None:
    producer = make_producer(settings, acks=1)
    posts_topic, hints_topic = settings.topic("posts"), settings.topic("hints")
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
    store, stream = redis.Redis.from_url(settings.redis_url), settings.keys.labels_stream
    deadline = time.monotonic() + timeout
    while (done := store.xlen(stream)) < count:
        if cpu is not None:
            cpu.append((done, _cpu_seconds(worker.pid)))
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
    with open(logs / f"classify-{settings.group_prefix}-mb{settings.max_batch}.log", "wb") as log:
        return start_stage("classify", settings.child_env(), stdout=log, stderr=subprocess.STDOUT)


def _fresh(base: Settings, posts: list[Post], hints: list[Hints], **changes) -> tuple[Settings, list[Post], list[Hints]]:
    """New topics, group, Redis keys and post ids: a post id labelled in an earlier run would be a duplicate,
    and a failed run's labels must not count for the next one."""
    run = uuid.uuid4().hex[:8]
    settings = base.model_copy(update={"topic_prefix": f"bench{run}.", "group_prefix": f"bench{run}",
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


def _saturated(base: Settings, posts: list[Post], hints: list[Hints], max_batch: int, device: torch.device,
               logs: Path | None, timeout: float) -> dict:
    settings, posts, hints = _fresh(base, posts, hints, max_batch=max_batch)
    start = time.monotonic()
    _produce(settings, posts, hints)
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
        cpu.append((len(posts), _cpu_seconds(proc.pid)))
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
    store, deadline = redis.Redis.from_url(settings.redis_url), time.monotonic() + 300
    while not store.xlen(settings.keys.labels_stream):
        if worker.poll() is not None:
            raise RuntimeError(f"the classify worker exited with {worker.returncode} before its first label")
        if time.monotonic() > deadline:
            raise TimeoutError("the worker labelled nothing in 300 s")
        time.sleep(0.05)


def _latency(base: Settings, posts: list[Post], hints: list[Hints], rate: float, logs: Path | None,
             timeout: float) -> list[float]:
    settings, posts, hints = _fresh(base, posts, hints)
    proc = _worker(settings, logs)
    try:
        _produce(settings, posts[:1], hints[:1], rate=1.0)
        _labels(settings, 1, timeout, proc)  # worker is up and has joined the group
        _produce(settings, posts[1:], hints[1:], rate=rate)
        labels = _labels(settings, len(posts) - 1, timeout, proc)
    finally:
        stop_processes([proc], timeout=30)
        delete_topics(settings)
    return sorted((l.labeled_at - l.received_at).total_seconds() * 1000 for l in labels)


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="realistic",
                        help="preset for the options below that are not given")
    parser.add_argument("--image-size", type=int, help="side of the posted images in pixels")
    parser.add_argument("--input-size", type=int, help="the model's input side in pixels")
    parser.add_argument("--backbone")
    parser.add_argument("--head", default="dynamic_layers")
    parser.add_argument("--posts", type=int, help="posts per pipeline run")
    parser.add_argument("--distinct", type=int, default=64, help="distinct photos in the realistic workload")
    parser.add_argument("--latency-posts", type=int, help="posts of the latency phase (0 skips it)")
    parser.add_argument("--max-batches", type=_ints, default=[1, 8, 32, 128], help="the max_batch sweep")
    parser.add_argument("--model-batches", type=_ints, help="batch sizes of the model-alone runs (default: the sweep)")
    parser.add_argument("--rounds", type=int, help="times the sweep runs, the model alone bracketing each run; the "
                        "report gives medians (default 3 on CPU, whose shared cores drift by 20%% within minutes; "
                        "1 on CUDA)")
    parser.add_argument("--latency-max-batch", type=int, default=32)
    parser.add_argument("--model-images", type=int, help="images per model-alone run (default 32 on CPU, 1024 on CUDA)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--run-timeout", type=float, default=900, help="seconds one pipeline run may take")
    parser.add_argument("--logs", type=Path, help="keep the workers' logs in this folder")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.latency_posts is not None and args.latency_posts < 0:
        parser.error("--latency-posts must be >= 0")
    preset = WORKLOADS[args.workload]
    for key in ("image_size", "input_size", "backbone", "posts", "latency_posts", "out"):
        if getattr(args, key) is None:
            setattr(args, key, Path(preset[key]) if key == "out" else preset[key])
    model_batches = args.model_batches or args.max_batches
    console = Console()

    console.print(f"generating {args.posts} posts ({args.image_size} px, photo={preset['photo']}) …")
    posts, hints = _workload(args.posts, image_size=args.image_size, photo=preset["photo"], distinct=args.distinct)
    blobs = [p.image.raw_bytes() for p in posts[: args.distinct]]
    with EmbeddedStack() as stack, tempfile.TemporaryDirectory() as registry_dir:
        _publish_model(Path(registry_dir), args.backbone, args.head, args.input_size)
        # The classifier has the host to itself here (the broker and Redis aside): the setting for that case.
        base = Settings(kafka=stack.bootstrap, redis_url=stack.redis_url, metrics_port=0, backbone=args.backbone,
                        head=args.head, model_dir=Path(registry_dir), hint_wait_ms=2000, device=args.device,
                        decode_idle_priority=True)
        predictor = Predictor.load(base)
        device = predictor.device
        command = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
        model, model_cpu, bracket, sweep = {}, {}, {}, []
        body = {
            "workload": args.workload, "image_size": args.image_size, "input_size": args.input_size,
            "backbone": args.backbone, "head": args.head, "posts": args.posts,
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
            "mean_image_kb": round(statistics.fmean(map(len, blobs)) / 1024, 1), "device": str(device),
            "model_alone_images_per_s": model, "model_alone_cpu_ms_per_image": model_cpu,
            "model_alone_before_after_images_per_s": bracket, "pipeline": sweep,
            "reference_max_batch": args.latency_max_batch, "max_wait_ms": base.max_wait_ms,
            "decode_idle_priority": base.decode_idle_priority, "complete": False,
        }

        def save() -> None:
            """Write what is measured so far: a run cut short (a one-shot GPU session) still leaves a report."""
            _summarise(body)
            write_report(args.out, body, command=command, device=str(device))

        console.print(f"decode alone ({statistics.fmean(map(len, blobs)) / 1024:.0f} KB images) …")
        decode = _decode_alone(predictor, blobs, images=max(64, len(blobs)), threads=os.cpu_count() or 1,
                               cuda_batches=[32, 128], cuda_images=1024, max_pixels=base.max_image_pixels)
        console.print(f"  {decode}")
        body["decode_alone_images_per_s"] = decode
        console.print("ingest alone (parse, validate, fingerprint, base64) …")
        body["ingest_alone_posts_per_s"] = _ingest_alone(posts[: args.distinct], base, images=max(256, len(blobs)),
                                                         threads=os.cpu_count() or 1)
        console.print(f"  {body['ingest_alone_posts_per_s']}")
        save()
        model_images = args.model_images or (32 if device.type == "cpu" else 1024)
        rounds_wanted = body["rounds"] = args.rounds or (3 if device.type == "cpu" else 1)

        def model_alone(batch: int) -> tuple[float, float]:
            rate, cpu_ms = _model_alone(predictor, hints, batch, max(batch, model_images))
            console.print(f"model alone ({args.backbone}@{args.input_size}, {device}), batch {batch}: "
                          f"{rate:.1f} img/s, {cpu_ms:.2f} CPU ms/img")
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return rate, cpu_ms

        def record(batch: int, *measured: tuple[float, float]) -> None:
            model[str(batch)] = round(statistics.median(r for r, _ in measured), 1)
            model_cpu[str(batch)] = round(statistics.median(c for _, c in measured), 2)
            if len(measured) > 1:
                bracket[str(batch)] = [round(r, 1) for r, _ in measured]
            save()

        for batch in model_batches:
            if batch not in args.max_batches:
                record(batch, model_alone(batch))
        rounds: dict[int, list[dict]] = {max_batch: [] for max_batch in args.max_batches}
        alone: dict[int, list[tuple[float, float]]] = {max_batch: [] for max_batch in args.max_batches}
        for round_ in range(rounds_wanted):
            # Odd rounds run the sweep backwards: a drift of the shared host then favours no batch size.
            for max_batch in args.max_batches if round_ % 2 == 0 else args.max_batches[::-1]:
                # The model alone right before AND right after the pipeline at the same batch size, and the
                # ratio to their mean: the three see nearly the same machine state, which on a shared host
                # drifts within minutes.
                before = model_alone(max_batch) if max_batch in model_batches else None
                if before is not None:
                    alone[max_batch].append(before)
                    record(max_batch, *alone[max_batch])  # a run cut short (a one-shot GPU session) still reports it
                console.print(f"pipeline, max_batch {max_batch}, round {round_ + 1} of {rounds_wanted} …")
                try:
                    run = _saturated(base, posts, hints, max_batch, device, args.logs, args.run_timeout)
                except (TimeoutError, RuntimeError) as exc:  # one failed run must not cost the whole report
                    run = {"max_batch": max_batch, "error": f"{type(exc).__name__}: {exc}"}
                    console.print(f"  [red]failed[/]: {exc}")
                if before is not None and "error" not in run:
                    measured = (before, model_alone(max_batch))
                    alone[max_batch].append(measured[1])
                    record(max_batch, *alone[max_batch])
                    run["model_alone_images_per_s"] = [round(r, 1) for r, _ in measured]
                    run["ratio_to_model_alone"] = round(run["images_per_s"] / statistics.fmean(r for r, _ in measured), 3)
                    run["cpu_ratio_to_model_alone"] = round(
                        statistics.fmean(c for _, c in measured) / run["cpu_ms_per_image"], 3)
                rounds[max_batch].append(run)
                sweep[:] = [_combine(b, rounds[b]) for b in args.max_batches if rounds[b]]
                console.print(f"  {run}")
                save()
        done = [r for r in sweep if "error" not in r]
        reference = next((r for r in done if r["max_batch"] == args.latency_max_batch), done[-1] if done else None)
        latency: dict = {"error": "no pipeline run succeeded"}
        if args.latency_posts == 0:
            latency = {"skipped": "--latency-posts 0"}
        elif reference is not None:
            rate = 0.5 * min(reference["images_per_s"], model.get(str(reference["max_batch"]), float("inf")))
            console.print(f"latency at {rate:.0f} posts/s (max_batch {reference['max_batch']}) …")
            try:
                latencies = _latency(base.model_copy(update={"max_batch": reference["max_batch"]}),
                                     posts[: args.latency_posts + 1], hints[: args.latency_posts + 1], rate,
                                     args.logs, args.run_timeout)
                latency = {"load_posts_per_s": round(rate, 1), "load_fraction": 0.5,
                           "max_batch": reference["max_batch"], "adaptive_batching": base.adaptive_batching,
                           "posts": len(latencies), "p50_ms": round(_percentile(latencies, 0.50), 1),
                           "p99_ms": round(_percentile(latencies, 0.99), 1)}
            except (TimeoutError, RuntimeError) as exc:
                latency = {"error": f"{type(exc).__name__}: {exc}"}

        body["latency"], body["complete"] = latency, True
        save()
    _print(console, body)
    return body


def _combine(max_batch: int, rounds: list[dict]) -> dict:
    """One sweep entry from the rounds at ``max_batch``: medians (rates, CPU per image, ratios), the range of
    the ratio, and every round as measured."""
    done = [r for r in rounds if "error" not in r]
    if not done:
        return {"max_batch": max_batch, "error": rounds[-1]["error"], "rounds": rounds}
    entry: dict = {"max_batch": max_batch}
    for key in ("images_per_s", "cpu_ms_per_image", "ratio_to_model_alone", "cpu_ratio_to_model_alone",
                "gpu_util_mean_pct", "gpu_util_p90_pct"):
        values = [r[key] for r in done if key in r]
        if values:
            entry[key] = round(statistics.median(values), 3 if "ratio" in key else 2 if key.startswith("cpu") else 1)
    ratios = [r["ratio_to_model_alone"] for r in done if "ratio_to_model_alone" in r]
    if ratios:
        entry["ratio_range"] = [min(ratios), max(ratios)]
    return {**entry, "rounds": rounds}


def _summarise(body: dict) -> None:
    """SPEC's summary fields, and whether the sweep's rates grow with max_batch (wall time and per CPU-second)."""
    done = [r for r in body["pipeline"] if "error" not in r]
    model = body["model_alone_images_per_s"]
    reference = next((r for r in done if r["max_batch"] == body["reference_max_batch"]), done[-1] if done else None)
    if reference is not None:
        body["max_batch"], body["pipeline_images_per_s"] = reference["max_batch"], reference["images_per_s"]
        body["model_only_images_per_s"] = model.get(str(reference["max_batch"]))
    single = next((r for r in done if r["max_batch"] == 1), None)
    if single is not None:
        body["batch1_pipeline_images_per_s"] = single["images_per_s"]
        body["model_only_batch1_images_per_s"] = model.get("1")
    for key in ("p50_ms", "p99_ms", "load_fraction"):
        if key in body.get("latency", {}):
            body[key] = body["latency"][key]
    rates = [r["images_per_s"] for r in done]
    per_cpu = [1000 / r["cpu_ms_per_image"] for r in done]
    body["sweep_non_decreasing_within_5pct"] = all(b >= 0.95 * a for a, b in itertools.pairwise(rates))
    # Images per CPU-second of the worker: what the sweep shows when other load moves wall time.
    body["sweep_images_per_cpu_s"] = [round(x, 1) for x in per_cpu]
    body["sweep_per_cpu_s_non_decreasing_within_5pct"] = all(b >= 0.95 * a for a, b in itertools.pairwise(per_cpu))


def _print(console: Console, body: dict) -> None:
    table = Table(title=f"classifier pipeline — {body['workload']}: {body['image_size']} px → "
                        f"{body['backbone']}@{body['input_size']}, {body['device']}")
    table.add_column("measure")
    table.add_column("img/s", justify="right")
    for batch, rate in body["model_alone_images_per_s"].items():
        table.add_row(f"model alone, batch {batch}", f"{rate:,}")
    for name, rate in body["decode_alone_images_per_s"].items():
        table.add_row(f"decode alone, {name}", f"{rate:,}")
    for name, rate in body.get("ingest_alone_posts_per_s", {}).items():
        table.add_row(f"ingest alone (posts/s), {name}", f"{rate:,}")
    for run in body["pipeline"]:
        if "error" in run:
            table.add_row(f"pipeline, max_batch {run['max_batch']}", run["error"][:60])
            continue
        extra = ""
        if "ratio_to_model_alone" in run:
            low, high = run["ratio_range"]
            extra = f" (×{run['ratio_to_model_alone']} of model, {low}–{high} in {len(run['rounds'])} rounds)"
        util = f", GPU {run['gpu_util_mean_pct']}%" if "gpu_util_mean_pct" in run else ""
        table.add_row(f"pipeline, max_batch {run['max_batch']}{extra}{util}", f"{run['images_per_s']:,}")
    lat = body["latency"]
    if "error" in lat or "skipped" in lat:
        table.add_row("latency at half load", lat.get("error", lat.get("skipped", ""))[:60])
    else:
        table.add_row(f"latency p50 / p99 ms at {lat['load_posts_per_s']} posts/s",
                      f"{lat['p50_ms']} / {lat['p99_ms']}")
    console.print(table)


if __name__ == "__main__":
    main()
