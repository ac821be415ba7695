"""Before/after throughput: one benchmark run from two checkouts, interleaved (before, after, before, after...).

On a shared machine the load moves between runs; interleaving puts both trees under the same drift, and the
ratio of each pair (after / before) is what the report compares. Each run is the tree's own pipeline benchmark
(``python -m workers.benchmarks.pipeline``, the same arguments for both), started in that tree so that it and
the workers it spawns import that tree's code.

    python -m workers.benchmarks.before_after --before /tmp/before --pairs 3 --out reports/bench_refactor.json \
        -- --workload realistic --input-size 288 --head fusion --max-batches 32 --rounds 1 --posts 512 \
        --latency-posts 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from streamcore.reports import write_report


def _sha(tree: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True,
                          check=True).stdout.strip()


def run_once(tree: Path, bench_args: Sequence[str], out: Path) -> dict:
    """One pipeline benchmark from ``tree``: its pipeline rate, the model alone, the load around it."""
    load_before, started = os.getloadavg()[0], time.monotonic()
    subprocess.run([sys.executable, "-m", "workers.benchmarks.pipeline", *bench_args, "--out", str(out)],
                   cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, check=True)
    return {**measures(json.loads(out.read_text())), "load_avg_1m_before": round(load_before, 2),
            "load_avg_1m_after": round(os.getloadavg()[0], 2), "wall_s": round(time.monotonic() - started, 1)}


def measures(body: dict) -> dict:
    """What one pipeline benchmark report says of its run: the rate, the classifier's CPU time per image (the
    figure a loaded machine moves least), the model alone."""
    run = body["pipeline"][0]
    return {"images_per_s": body["pipeline_images_per_s"], "cpu_ms_per_image": run["cpu_ms_per_image"],
            "images_per_s_by_third": run["rounds"][0]["images_per_s_by_third"],
            "model_alone_images_per_s": body["model_only_images_per_s"]}


def summarise(rounds: list[dict]) -> dict:
    """Per tree its rates; per pair the ratios after / before (rate, CPU time per image, the model alone)."""
    by = {tree: [r for r in rounds if r["tree"] == tree] for tree in ("before", "after")}
    pairs = list(zip(by["before"], by["after"]))
    ratios = [round(a["images_per_s"] / b["images_per_s"], 3) for b, a in pairs]
    model_ratios = [round(a["model_alone_images_per_s"] / b["model_alone_images_per_s"], 3) for b, a in pairs]
    cpu_ratios = [round(a["cpu_ms_per_image"] / b["cpu_ms_per_image"], 3) for b, a in pairs]
    loads = [r[k] for r in rounds for k in ("load_avg_1m_before", "load_avg_1m_after")]
    return {
        "before_images_per_s": [r["images_per_s"] for r in by["before"]],
        "after_images_per_s": [r["images_per_s"] for r in by["after"]],
        "pair_ratios": ratios, "ratio_median": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)],
        "cpu_ms_per_image_before": [r["cpu_ms_per_image"] for r in by["before"]],
        "cpu_ms_per_image_after": [r["cpu_ms_per_image"] for r in by["after"]],
        "cpu_pair_ratios": cpu_ratios, "cpu_ratio_median": statistics.median(cpu_ratios),
        "model_alone_pair_ratios": model_ratios,
        "load_avg_1m_range": [min(loads), max(loads)],
    }


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m workers.benchmarks.before_after",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout of the earlier commit")
    parser.add_argument("--after", type=Path, default=Path.cwd(), help="checkout of the later commit (here)")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--keep", type=Path, help="keep each run's own report in this folder")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="after --: the pipeline benchmark's arguments")
    args = parser.parse_args(argv)
    bench_args = [a for a in args.bench_args if a != "--"]
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.keep or Path(tmp)
        for pair in range(args.pairs):
            for tree, path in trees.items():
                row = {"tree": tree, "pair": pair, **run_once(path, bench_args, runs / f"{tree}{pair}.json")}
                print(json.dumps(row), flush=True)
                rounds.append(row)
    body = {"before_sha": _sha(trees["before"]), "after_sha": _sha(trees["after"]), "benchmark_args": bench_args,
            "rounds": rounds, **summarise(rounds)}
    command = "python -m workers.benchmarks.before_after " + " ".join(argv if argv is not None else sys.argv[1:])
    return write_report(args.out, body, command=command)


if __name__ == "__main__":
    main()
