"""Classifier pipeline throughput and latency: posts in Kafka → labels in Redis, versus the model alone.

    .venv/bin/stylestream bench pipeline --posts 4000 --backbone tiny --out reports/bench_pipeline.json

All in one run, on the same machine state:

1. *model only*: the worker's own ``Predictor.predict`` on pre-decoded images, at ``max_batch`` and at 1
   (median of three);
2. *pipeline*: N posts and their hints are produced before ONE ``stylestream worker classify`` starts;
   the rate is taken from the labels' ``labeled_at`` over the last 90% of them (start-up excluded),
   with micro-batching and with ``MAX_BATCH=1``;
3. *latency*: posts (each followed by its hints, as a zero-latency text stage would) at ~50% of the
   saturated rate; latency = ``labeled_at - received_at`` (Kafka timestamp of the post).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import redis
from kafka import KafkaProducer
from rich.console import Console
from rich.table import Table

from streamcore.embedded import EmbeddedStack, stop_processes
from streamcore.images import load_image
from streamcore.kafka import ensure_topics
from streamcore.reports import write_report
from streamcore.schemas import Hints, Label, Post
from streamcore.serde import encode
from streamcore.settings import Settings
from training.ontology import load_ontology
from training.predict import Predictor, resolve_device
from training.synthetic.posts import generate_posts

COMMAND = "stylestream bench pipeline"


def _model_only(predictor: Predictor, posts: list[Post], hints: list[Hints], batch: int, settings: Settings,
                limit: int) -> float:
    images = [predictor.to_tensor(load_image(p.image, settings)) for p in posts[:limit]]
    predictor.predict(images[:batch], hints[:batch], [p.post_id for p in posts[:batch]], [0] * batch)  # warm-up
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        chunk = slice(i, i + batch)
        predictor.predict(images[chunk], hints[chunk], [p.post_id for p in posts[chunk]], [0] * len(images[chunk]))
    return len(images) / (time.perf_counter() - start)


def _produce(settings: Settings, posts: list[Post], hints: list[Hints], *, rate: float | None = None) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka, acks=1, linger_ms=5)
    posts_topic, hints_topic = settings.topic("posts"), settings.topic("hints")
    start = time.monotonic()
    if rate is None:  # backlog: hints first so that every post is ready the moment it is read
        for h in hints:
            producer.send(hints_topic, key=h.post_id.encode(), value=encode(h))
    for i, (post, hint) in enumerate(zip(posts, hints)):
        if rate is not None:
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
        producer.send(posts_topic, key=post.post_id.encode(), value=encode(post))
        if rate is not None:
            producer.send(hints_topic, key=hint.post_id.encode(), value=encode(hint))
    producer.flush()
    producer.close()


def _labels(settings: Settings, count: int, timeout: float) -> list[Label]:
    store, stream = redis.Redis.from_url(settings.redis_url), settings.keys.labels_stream
    deadline = time.monotonic() + timeout
    while store.xlen(stream) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {store.xlen(stream)} of {count} labels after {timeout:.0f}s")
        time.sleep(0.2)
    entries = store.xrange(stream)
    store.delete(stream)
    return [Label.model_validate_json(fields[b"label"]) for _, fields in entries]


def _worker(settings: Settings) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "workers.cli", "worker", "classify"],
                            env=settings.child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _fresh(base: Settings, posts: list[Post], hints: list[Hints], **changes) -> tuple[Settings, list[Post], list[Hints]]:
    """New topics, group and post ids: a post id labelled in an earlier run would be a duplicate."""
    run = uuid.uuid4().hex[:8]
    settings = base.model_copy(update={"topic_prefix": f"bench{run}.", "group_prefix": f"bench{run}", **changes})
    ensure_topics(settings)
    posts = [p.model_copy(update={"post_id": f"{run}-{p.post_id}"}) for p in posts]
    hints = [h.model_copy(update={"post_id": f"{run}-{h.post_id}"}) for h in hints]
    return settings, posts, hints


def _saturated(base: Settings, posts: list[Post], hints: list[Hints], max_batch: int) -> float:
    settings, posts, hints = _fresh(base, posts, hints, max_batch=max_batch)
    _produce(settings, posts, hints)
    proc = _worker(settings)
    try:
        stamps = sorted(l.labeled_at.timestamp() for l in _labels(settings, len(posts), timeout=900))
    finally:
        stop_processes([proc], timeout=30)
    skip = len(stamps) // 10
    return (len(stamps) - 1 - skip) / (stamps[-1] - stamps[skip])


def _latency(base: Settings, posts: list[Post], hints: list[Hints], rate: float) -> list[float]:
    settings, posts, hints = _fresh(base, posts, hints)
    proc = _worker(settings)
    try:
        _produce(settings, posts[:1], hints[:1], rate=1.0)
        _labels(settings, 1, timeout=120)  # worker is up and has joined the group
        _produce(settings, posts[1:], hints[1:], rate=rate)
        labels = _labels(settings, len(posts) - 1, timeout=600)
    finally:
        stop_processes([proc], timeout=30)
    return sorted((l.labeled_at - l.received_at).total_seconds() * 1000 for l in labels)


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=4000)
    parser.add_argument("--latency-posts", type=int, default=600)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=20.0)
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--head", default="dynamic_layers")
    parser.add_argument("--out", type=Path, default=Path("reports/bench_pipeline.json"))
    args = parser.parse_args(argv)

    # Imported here, not at the top: only a run mines hints; importing the benchmark must not need gensim
    # and nltk, which a classify-only (GPU) machine need not have.
    from training.text import TextMiner

    console = Console()
    ontology = load_ontology()
    miner = TextMiner.load(ontology)
    posts = [p for p, _ in generate_posts(ontology, args.posts, seed=42, prefix="bench")]
    hints = [miner.mine(p) for p in posts]
    with EmbeddedStack() as stack, tempfile.TemporaryDirectory() as empty_registry:
        base = Settings(kafka=stack.bootstrap, redis_url=stack.redis_url, metrics_port=0, max_batch=args.max_batch,
                        max_wait_ms=args.max_wait_ms, backbone=args.backbone, head=args.head,
                        model_dir=Path(empty_registry), hint_wait_ms=2000)
        predictor = Predictor.load(base)
        console.print(f"model only ({args.backbone}/{args.head}, {predictor.device}) …")
        # Medians of three: a few seconds of a shared machine's noise must not set the reference.
        model_b = statistics.median(_model_only(predictor, posts, hints, args.max_batch, base, limit=len(posts))
                                    for _ in range(3))
        model_1 = statistics.median(_model_only(predictor, posts, hints, 1, base, limit=min(len(posts), 300))
                                    for _ in range(3))
        del predictor
        console.print("pipeline, micro-batched …")
        pipe_b = _saturated(base, posts, hints, args.max_batch)
        console.print("pipeline, MAX_BATCH=1 …")
        pipe_1 = _saturated(base, posts, hints, 1)
        # Half of what the machine sustains: the pipeline's rate, unless noise put it above the model's.
        rate = 0.5 * min(pipe_b, model_b)
        console.print(f"latency at {rate:.0f} posts/s …")
        latencies = _latency(base, posts[: args.latency_posts + 1], hints[: args.latency_posts + 1], rate)

    body = {
        "backbone": args.backbone, "head": args.head, "posts": args.posts,
        "model_only_images_per_s": round(model_b, 1), "pipeline_images_per_s": round(pipe_b, 1),
        "batch1_pipeline_images_per_s": round(pipe_1, 1), "model_only_batch1_images_per_s": round(model_1, 1),
        "pipeline_to_model_ratio": round(pipe_b / model_b, 3),
        "pipeline_batch_gain": round(pipe_b / pipe_1, 2), "model_batch_gain": round(model_b / model_1, 2),
        "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
        "p50_ms": round(_percentile(latencies, 0.50), 1), "p99_ms": round(_percentile(latencies, 0.99), 1),
        "latency_posts": len(latencies), "load_posts_per_s": round(rate, 1), "load_fraction": 0.5,
    }
    command = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
    write_report(args.out, body, command=command, device=str(resolve_device(base.device)))
    _print(console, body)
    return body


def _print(console: Console, body: dict) -> None:
    table = Table(title=f"classifier pipeline — {body['backbone']}/{body['head']}, max_batch {body['max_batch']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key in ("model_only_images_per_s", "pipeline_images_per_s", "pipeline_to_model_ratio",
                "model_only_batch1_images_per_s", "batch1_pipeline_images_per_s", "model_batch_gain",
                "pipeline_batch_gain", "load_posts_per_s", "p50_ms", "p99_ms"):
        table.add_row(key, f"{body[key]:,}")
    console.print(table)


if __name__ == "__main__":
    main()
