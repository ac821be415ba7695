"""End-to-end throughput of ONE text worker (``posts`` topic in, ``hints`` topic out) on the embedded broker.

    .venv/bin/python -m workers.benchmarks.text --posts 5000 --out reports/bench_text.json

N synthetic posts (text plus a tiny inline image: the text stage never decodes images) are produced
before the worker starts, so the worker sees a full backlog. The worker is pinned to one core and the
broker, Redis and this process to the other, when the machine has two. The worker rate is measured from
the first to the last hint's broker timestamp, so start-up and group join do not count; the mining
function is then benchmarked on the same posts in this process, on one core.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from PIL import Image
from rich.console import Console
from rich.table import Table

from serving.ontology import load_ontology
from streamcore.embedded import EmbeddedStack, stop_processes
from streamcore.kafka import ensure_topics
from streamcore.reports import write_report
from streamcore.schemas import ImageSource, Post
from streamcore.serde import encode
from streamcore.settings import Settings
from training.text.bench import posts_per_second
from training.text.evaluate import EVAL_SEED, synthetic_set
from training.text.miner import TextMiner
from workers.launcher import start_stage

COMMAND = ".venv/bin/python -m workers.benchmarks.text"


def _tiny_image() -> ImageSource:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 60)).save(buf, format="JPEG")
    return ImageSource(b64=base64.b64encode(buf.getvalue()).decode())


def make_posts(count: int) -> list[Post]:
    """``count`` held-out synthetic captions (the miner report's generator) as posts with a tiny image."""
    image = _tiny_image()
    examples = synthetic_set(load_ontology(), count, seed=EVAL_SEED, split="heldout")
    return [ex.post.model_copy(update={"image": image}) for ex in examples]


def _cores() -> tuple[int | None, set[int] | None]:
    """(worker core, everything else) when there are at least two usable cores, else no pinning."""
    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        return None, None
    cores = sorted(os.sched_getaffinity(0))
    return cores[0], set(cores[1:])


def _produce(settings: Settings, posts: Sequence[Post]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all", linger_ms=20)
    for post in posts:
        producer.send(settings.kafka.topic("posts"), key=post.post_id.encode(), value=encode(post))
    producer.flush()
    producer.close()


def _start_worker(settings: Settings, core: int | None, log: Path) -> subprocess.Popen:
    pin = ["taskset", "-c", str(core)] if core is not None and shutil.which("taskset") else []
    with log.open("wb") as out:
        return start_stage("text", settings.child_env(), prefix=pin, stdout=out, stderr=subprocess.STDOUT)


def _hint_timestamps(settings: Settings, count: int, timeout_s: float) -> list[int]:
    """Broker timestamps (ms) of the first ``count`` hints, waiting at most ``timeout_s``."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, group_id=None, enable_auto_commit=False)
    topic = settings.kafka.topic("hints")
    consumer.assign([TopicPartition(topic, p) for p in range(settings.kafka.partitions)])
    consumer.seek_to_beginning()
    stamps: list[int] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(stamps) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(stamps)} of {count} hints within {timeout_s:.0f}s")
            for records in consumer.poll(timeout_ms=500).values():
                stamps.extend(r.timestamp for r in records)
    finally:
        consumer.close()
    return stamps


def worker_rate(posts: Sequence[Post], *, timeout_s: float, log: Path) -> float:
    """Posts/s of one ``stylestream worker text`` process, first to last hint, on a fresh embedded stack."""
    worker_core, rest = _cores()
    everything = os.sched_getaffinity(0) if rest else None
    if rest:  # the broker, Redis and our client inherit this and stay off the worker's core
        os.sched_setaffinity(0, rest)
    try:
        with EmbeddedStack() as stack:
            stamps = _run_worker(stack, posts, worker_core, timeout_s=timeout_s, log=log)
    finally:
        if everything:  # the function benchmark then pins itself to the lowest core: the worker's
            os.sched_setaffinity(0, everything)
    span_s = (max(stamps) - min(stamps)) / 1000
    return (len(stamps) - 1) / span_s


def _run_worker(stack: EmbeddedStack, posts: Sequence[Post], core: int | None, *, timeout_s: float,
                log: Path) -> list[int]:
    settings = Settings.named(kafka=stack.bootstrap, redis_url=stack.redis_url, metrics_port=0,
                        topic_prefix=f"bench-{uuid.uuid4().hex[:8]}.")
    ensure_topics(settings)
    _produce(settings, posts)
    worker = _start_worker(settings, core, log)
    try:
        return _hint_timestamps(settings, len(posts), timeout_s)
    finally:
        stop_processes([worker], timeout=30)


def _print(result: dict) -> None:
    table = Table(title=f"text worker, end to end — {result['posts']:,} posts")
    table.add_column("measure")
    table.add_column("posts/s", justify="right")
    table.add_row("worker, Kafka in → Kafka out", f"{result['worker_posts_per_s']:,.0f}")
    table.add_row("mining function, one core", f"{result['function_posts_per_s_one_core']:,.0f}")
    table.add_row("ratio worker / function", f"{result['ratio']:.2f}")
    Console().print(table)


def _merge_into_miner_report(path: Path, worker_posts_per_s: float) -> None:
    if path.exists():
        report = json.loads(path.read_text(encoding="utf-8"))
        report["worker_posts_per_s_end_to_end"] = worker_posts_per_s
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> None:
    from streamcore.helptext import parser_options  # the help as `stylestream ... --help` shows it

    parser = argparse.ArgumentParser(**parser_options("stylestream bench text", __doc__))
    parser.add_argument("--posts", type=int, default=5000)
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--miner-report", type=Path, default=Path("reports/text_miner.json"),
                        help="report the end-to-end rate is merged into (with --out)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measure; medians are reported")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for all hints")
    parser.add_argument("--worker-log", type=Path, default=Path("/tmp/stylestream-bench-text-worker.log"))
    args = parser.parse_args(argv)
    if args.posts < 2 or args.repeats < 1:
        parser.error(f"need --posts >= 2 and --repeats >= 1, got {args.posts} and {args.repeats}")

    posts = make_posts(args.posts)
    # A fresh broker and worker per run; the shared machine is noisy, so medians are reported.
    workers = [worker_rate(posts, timeout_s=args.timeout, log=args.worker_log) for _ in range(args.repeats)]
    miner = TextMiner.load(load_ontology())
    functions = [posts_per_second(miner, posts, min_seconds=3.0) for _ in range(args.repeats)]
    worker, function = statistics.median(workers), statistics.median(functions)
    result = {
        "worker_posts_per_s": round(worker, 1),
        "function_posts_per_s_one_core": round(function, 1),
        "ratio": round(worker / function, 3),
        "posts": len(posts),
        "worker_runs_posts_per_s": [round(r, 1) for r in workers],
        "function_runs_posts_per_s": [round(r, 1) for r in functions],
    }
    _print(result)
    if args.out:
        write_report(args.out, result, command=" ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])]))
        _merge_into_miner_report(args.miner_report, result["worker_posts_per_s"])


if __name__ == "__main__":
    main()
