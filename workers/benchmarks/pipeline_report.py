"""The pipeline benchmark's report: rounds combined into medians and ranges, summary fields, the printed table."""


from __future__ import annotations

import itertools
import statistics

from rich.console import Console
from rich.table import Table


def combine_rounds(max_batch: int, rounds: list[dict]) -> dict:
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


def summarise(body: dict) -> None:
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


def print_table(console: Console, body: dict) -> None:
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
