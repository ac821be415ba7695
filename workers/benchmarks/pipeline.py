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
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.console import Console

from serving.checkpoint import save_checkpoint
from serving.models import build_model
from serving.ontology import load_ontology
from serving.predict import Predictor
from serving.registry import Registry
from streamcore.embedded import EmbeddedStack
from streamcore.reports import write_report
from streamcore.schemas import Hints, Post, ScoredTerm
from streamcore.settings import Settings
from training.synthetic.posts import Truth, generate_posts
from workers.benchmarks.pipeline_alone import measure_decode_alone, measure_ingest_alone, measure_model_alone
from workers.benchmarks.pipeline_report import combine_rounds, print_table, summarise
from workers.benchmarks.pipeline_runs import percentile, run_latency, run_saturated

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


def workload(count: int, *, image_size: int, photo: bool, distinct: int) -> tuple[list[Post], list[Hints]]:
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


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
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
    args.photo = preset["photo"]
    args.model_batches = args.model_batches or args.max_batches
    return args


class _Bench:
    """One benchmark run's state: the workload, the predictor, the report body written as it grows."""

    def __init__(self, args: argparse.Namespace, base: Settings, posts: list[Post], hints: list[Hints],
                 blobs: list[bytes], command: str) -> None:
        self.args, self.base, self.posts, self.hints, self.blobs = args, base, posts, hints, blobs
        self.console, self.command = Console(), command
        self.predictor = Predictor.load(base)
        self.device = self.predictor.device
        self.model_images = args.model_images or (32 if self.device.type == "cpu" else 1024)
        self.body = {
            "workload": args.workload, "image_size": args.image_size, "input_size": args.input_size,
            "backbone": args.backbone, "head": args.head, "posts": args.posts,
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
            "mean_image_kb": round(statistics.fmean(map(len, blobs)) / 1024, 1), "device": str(self.device),
            "model_alone_images_per_s": {}, "model_alone_cpu_ms_per_image": {},
            "model_alone_before_after_images_per_s": {}, "pipeline": [],
            "reference_max_batch": args.latency_max_batch, "max_wait_ms": base.classify.max_wait_ms,
            "decode_idle_priority": base.classify.decode_idle_priority, "complete": False,
            "rounds": args.rounds or (3 if self.device.type == "cpu" else 1),
        }

    def save(self) -> None:
        """Write what is measured so far: a run cut short (a one-shot GPU session) still leaves a report."""
        summarise(self.body)
        write_report(self.args.out, self.body, command=self.command, device=str(self.device))

    def references(self) -> None:
        """Decode alone and ingest alone, once."""
        blobs, threads = self.blobs, os.cpu_count() or 1
        self.console.print(f"decode alone ({statistics.fmean(map(len, blobs)) / 1024:.0f} KB images) …")
        self.body["decode_alone_images_per_s"] = measure_decode_alone(
            self.predictor, blobs, images=max(64, len(blobs)), threads=threads, cuda_batches=[32, 128],
            cuda_images=1024, max_pixels=self.base.limits.max_image_pixels)
        self.console.print("ingest alone (parse, validate, fingerprint, base64) …")
        self.body["ingest_alone_posts_per_s"] = measure_ingest_alone(
            self.posts[: self.args.distinct], self.base, images=max(256, len(blobs)), threads=threads)
        self.save()

    def model_alone(self, batch: int) -> tuple[float, float]:
        rate, cpu_ms = measure_model_alone(self.predictor, self.hints, batch, max(batch, self.model_images))
        self.console.print(f"model alone ({self.args.backbone}@{self.args.input_size}, {self.device}), batch {batch}: "
                           f"{rate:.1f} img/s, {cpu_ms:.2f} CPU ms/img")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return rate, cpu_ms

    def record(self, batch: int, *measured: tuple[float, float]) -> None:
        self.body["model_alone_images_per_s"][str(batch)] = round(statistics.median(r for r, _ in measured), 1)
        self.body["model_alone_cpu_ms_per_image"][str(batch)] = round(statistics.median(c for _, c in measured), 2)
        if len(measured) > 1:
            self.body["model_alone_before_after_images_per_s"][str(batch)] = [round(r, 1) for r, _ in measured]
        self.save()

    def sweep(self) -> None:
        """The max_batch sweep, ``rounds`` times; odd rounds backwards, so a drift of the host favours no size."""
        args = self.args
        for batch in args.model_batches:
            if batch not in args.max_batches:
                self.record(batch, self.model_alone(batch))
        rounds: dict[int, list[dict]] = {b: [] for b in args.max_batches}
        alone: dict[int, list[tuple[float, float]]] = {b: [] for b in args.max_batches}
        for round_ in range(self.body["rounds"]):
            for max_batch in args.max_batches if round_ % 2 == 0 else args.max_batches[::-1]:
                rounds[max_batch].append(self.bracketed_run(max_batch, round_, alone[max_batch]))
                self.body["pipeline"][:] = [combine_rounds(b, rounds[b]) for b in args.max_batches if rounds[b]]
                self.save()

    def bracketed_run(self, max_batch: int, round_: int, alone: list[tuple[float, float]]) -> dict:
        """One pipeline run with the model alone right before AND right after it at the same batch size: the
        three see nearly the same machine state, which on a shared host drifts within minutes."""
        before = self.model_alone(max_batch) if max_batch in self.args.model_batches else None
        if before is not None:
            alone.append(before)
            self.record(max_batch, *alone)
        self.console.print(f"pipeline, max_batch {max_batch}, round {round_ + 1} of {self.body['rounds']} …")
        try:
            run = run_saturated(self.base, self.posts, self.hints, max_batch, self.device, self.args.logs,
                                self.args.run_timeout)
        except (TimeoutError, RuntimeError) as exc:  # one failed run must not cost the whole report
            run = {"max_batch": max_batch, "error": f"{type(exc).__name__}: {exc}"}
        if before is not None and "error" not in run:
            measured = (before, self.model_alone(max_batch))
            alone.append(measured[1])
            self.record(max_batch, *alone)
            run["model_alone_images_per_s"] = [round(r, 1) for r, _ in measured]
            run["ratio_to_model_alone"] = round(run["images_per_s"] / statistics.fmean(r for r, _ in measured), 3)
            run["cpu_ratio_to_model_alone"] = round(statistics.fmean(c for _, c in measured) / run["cpu_ms_per_image"], 3)
        self.console.print(f"  {run}")
        return run

    def latency(self) -> dict:
        """p50/p99 at half the saturated rate of the reference max_batch."""
        args, model = self.args, self.body["model_alone_images_per_s"]
        done = [r for r in self.body["pipeline"] if "error" not in r]
        reference = next((r for r in done if r["max_batch"] == args.latency_max_batch), done[-1] if done else None)
        if args.latency_posts == 0:
            return {"skipped": "--latency-posts 0"}
        if reference is None:
            return {"error": "no pipeline run succeeded"}
        rate = 0.5 * min(reference["images_per_s"], model.get(str(reference["max_batch"]), float("inf")))
        self.console.print(f"latency at {rate:.0f} posts/s (max_batch {reference['max_batch']}) …")
        try:
            latencies = run_latency(self.base.replace(max_batch=reference["max_batch"]),
                                    self.posts[: args.latency_posts + 1], self.hints[: args.latency_posts + 1], rate,
                                    args.logs, args.run_timeout)
        except (TimeoutError, RuntimeError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        return {"load_posts_per_s": round(rate, 1), "load_fraction": 0.5, "max_batch": reference["max_batch"],
                "adaptive_batching": self.base.classify.adaptive_batching, "posts": len(latencies),
                "p50_ms": round(percentile(latencies, 0.50), 1), "p99_ms": round(percentile(latencies, 0.99), 1)}


def main(argv: Sequence[str] | None = None) -> dict:
    args = _arguments(argv)
    console = Console()
    console.print(f"generating {args.posts} posts ({args.image_size} px, photo={args.photo}) …")
    posts, hints = workload(args.posts, image_size=args.image_size, photo=args.photo, distinct=args.distinct)
    blobs = [p.image.raw_bytes() for p in posts[: args.distinct]]
    command = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
    with EmbeddedStack() as stack, tempfile.TemporaryDirectory() as registry_dir:
        _publish_model(Path(registry_dir), args.backbone, args.head, args.input_size)
        # The classifier has the host to itself here (the broker and Redis aside): the setting for that case.
        base = Settings.named(kafka=stack.bootstrap, redis_url=stack.redis_url, metrics_port=0, backbone=args.backbone,
                        head=args.head, model_dir=Path(registry_dir), hint_wait_ms=2000, device=args.device,
                        decode_idle_priority=True)
        bench = _Bench(args, base, posts, hints, blobs, command)
        bench.references()
        bench.sweep()
        bench.body["latency"], bench.body["complete"] = bench.latency(), True
        bench.save()
    print_table(console, bench.body)
    return bench.body


if __name__ == "__main__":
    main()
