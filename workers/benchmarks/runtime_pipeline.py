"""The realistic classifier pipeline (1080 px photos in Kafka → labels in Redis) on PyTorch eager and on ONNX
Runtime (its CPU threads running whole images, and splitting every operator), in turns in one run, each
bracketed by the model alone on the same runtime.

The served version (with its artifacts) is copied into a fresh registry; a ``stylestream worker classify``
per run serves it with ``STYLESTREAM_RUNTIME`` set, on the same posts (fresh ids) and hints as
``stylestream bench pipeline --workload realistic`` makes (its helpers do the work here).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path

from rich.console import Console

from serving.predict import Predictor
from streamcore.embedded import EmbeddedStack
from streamcore.settings import Settings
from workers.benchmarks.pipeline import WORKLOADS, workload
from workers.benchmarks.pipeline_alone import measure_model_alone
from workers.benchmarks.pipeline_runs import run_saturated

#: The worker's runtimes compared, by the settings that choose them (int8 is offered, not served by default).
PIPELINE_RUNTIMES = {"torch": {"runtime": "torch"}, "onnx": {"runtime": "onnx"},
                     "onnx_ops": {"runtime": "onnx", "cpu_parallelism": "ops"}}


def pipeline_per_runtime(version_dir: Path, model_alone: dict, *, posts: int, rounds: int, console: Console,
                         max_batch: int = 32, distinct: int = 64, timeout: float = 900) -> dict:
    """Per runtime: the pipeline's steady-state img/s (median of ``rounds``), the model alone around each run,
    their ratio, and the ratio to the fastest model-alone figure of the side-by-side table."""
    preset = WORKLOADS["realistic"]
    console.print(f"generating {posts} realistic posts ({preset['image_size']} px) …")
    items, hints = workload(posts, image_size=preset["image_size"], photo=True, distinct=distinct)
    fastest = max(m["images_per_s"] for m in model_alone[str(max_batch)].values())
    runs: dict[str, list[dict]] = {name: [] for name in PIPELINE_RUNTIMES}
    with EmbeddedStack() as stack, tempfile.TemporaryDirectory() as registry:
        shutil.copytree(version_dir, Path(registry) / "bench-served")
        base = Settings.named(kafka=stack.bootstrap, redis_url=stack.redis_url, metrics_port=0, model_dir=Path(registry),
                        hint_wait_ms=2000, device="cpu", decode_idle_priority=True, max_batch=max_batch)
        for round_ in range(rounds):
            names = list(PIPELINE_RUNTIMES)
            for name in names if round_ % 2 == 0 else names[::-1]:
                settings = base.replace(**PIPELINE_RUNTIMES[name])
                predictor = Predictor.load(settings)
                if predictor.runtime != settings.serving.runtime:
                    raise RuntimeError(f"the served version cannot run on {name} (it runs on {predictor.runtime})")
                before = measure_model_alone(predictor, hints, max_batch, 4 * max_batch)[0]
                console.print(f"pipeline on {name}, max_batch {max_batch}, round {round_ + 1}/{rounds} …")
                run = run_saturated(settings, items, hints, max_batch, predictor.device, None, timeout)
                after = measure_model_alone(predictor, hints, max_batch, 4 * max_batch)[0]
                del predictor
                run["model_alone_images_per_s"] = [round(before, 1), round(after, 1)]
                run["ratio_to_model_alone"] = round(run["images_per_s"] / statistics.fmean((before, after)), 3)
                console.print(f"  {run}")
                runs[name].append(run)
    out: dict = {"workload": "realistic", "image_size": preset["image_size"], "posts": posts, "max_batch": max_batch,
                 "fastest_model_alone_images_per_s": fastest}
    for name, done in runs.items():
        rate = statistics.median(r["images_per_s"] for r in done)
        out[name] = {"images_per_s": round(rate, 1),
                     # The worker's CPU per label: what other load on a shared host moves least.
                     "cpu_ms_per_image": round(statistics.median(r["cpu_ms_per_image"] for r in done), 2),
                     "ratio_to_own_model_alone": round(statistics.median(r["ratio_to_model_alone"] for r in done), 3),
                     "ratio_to_fastest_model_alone": round(rate / fastest, 3), "rounds": done}
    out["onnx_over_torch"] = round(out["onnx"]["images_per_s"] / out["torch"]["images_per_s"], 2)
    out["images_over_ops"] = round(out["onnx"]["images_per_s"] / out["onnx_ops"]["images_per_s"], 2)
    return out
