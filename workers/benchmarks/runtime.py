"""The served model alone on every runtime this host can run, side by side in one run, and their agreement.

    stylestream bench runtime                      # the packaged default (EfficientNet-Lite0 @288 + its head)
    stylestream bench runtime --pipeline           # + the realistic pipeline on PyTorch eager vs ONNX Runtime
    stylestream bench runtime --device cuda        # eager (AMP) vs ONNX Runtime's CUDA (and TensorRT) providers

On a CPU, ``onnx`` runs as the classifier does by default (``cpu_parallelism=images``) and ``onnx_ops`` with
every operator split across the threads.

Each runtime is a :class:`~serving.predict.Predictor` as the worker builds it (forward in chunks of
``cpu_forward_batch`` on a CPU, top-k, label JSON) on the committed fixture's real photos, already staged. The
runtimes take turns within each round (the order rotates every round), so a drift of the shared host hits
all of them alike: the report gives each one's median img/s, every round, and its ratio to PyTorch eager
paired by round. Agreement: per runtime, against eager on the same photos, the largest probability
difference (every level) and the share of photos whose top category is the same; and the fixture's category
mAP (text silent) on each runtime, with what the int8 build recorded on the test split.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from serving.onnx_backbone import OnnxBackbone, onnxruntime_installed, read_manifest, verified_artifact
from serving.ontology import load_ontology
from serving.predict import Predictor, Staged, resolve_device
from serving.registry import Entry, Registry, default_entry
from streamcore.reports import write_report
from streamcore.settings import Settings
from training.metrics import mean_average_precision
from training.plots import pyplot
from training.real.gate import fixture_photos

COMMAND = "stylestream bench runtime"
OUT = Path("reports/bench_runtime.json")


def runtimes(entry: Entry, device: torch.device) -> dict[str, Predictor]:
    """A predictor per runtime the version and host can run: eager, and each verified ONNX artifact (on CUDA:
    its CUDA provider, and TensorRT's where installed)."""
    ontology, settings = load_ontology(), Settings()
    out: dict[str, Predictor] = {}

    def add(name: str, backbone: OnnxBackbone | None) -> None:
        model = entry.load(device=device)
        out[name] = Predictor(model, ontology, version=entry.version, device=device,
                              cpu_forward_batch=settings.serving.cpu_forward_batch, backbone=backbone)

    add("torch", None)
    if not onnxruntime_installed():
        return out
    import onnxruntime as ort

    for kind in ("onnx", "onnx_int8") if device.type == "cpu" else ("onnx",):
        path = verified_artifact(entry.path, kind)
        if path is not None:
            add(kind, OnnxBackbone(path, device=device, kind=kind))
            if device.type == "cpu" and kind == "onnx":  # the served parallelism (images) against ops
                add("onnx_ops", OnnxBackbone(path, device=device, kind=kind, parallelism="ops"))
            if device.type == "cuda" and "TensorrtExecutionProvider" in ort.get_available_providers():
                providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
                add(f"{kind}_tensorrt", OnnxBackbone(path, device=device, kind=kind, providers=providers))
    return out


def _staged(predictor: Predictor, photos: torch.Tensor, batch: int) -> tuple[Staged, list[str]]:
    rows = [photos[i % len(photos)] for i in range(batch)]
    return predictor.stage(rows, [None] * batch), [f"m{i}" for i in range(batch)]


def _rate(predictor: Predictor, staged: Staged, ids: list[str], images: int) -> tuple[float, float]:
    """img/s and CPU ms per image of ``images`` images through the worker's model step (infer + label JSON)."""
    rounds = max(1, images // len(ids))
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        predictor.label_json(predictor.infer(staged), ids, [0] * len(ids))
    if predictor.cuda:
        torch.cuda.synchronize(predictor.device)
    done = rounds * len(ids)
    return done / (time.perf_counter() - wall), (time.process_time() - cpu) * 1000 / done


def model_alone(predictors: dict[str, Predictor], photos: torch.Tensor, batches: Sequence[int], *, rounds: int,
                images: int, console: Console) -> dict:
    """Per batch size and runtime: median img/s, every round, CPU ms/img, and the ratio to eager by round."""
    names = list(predictors)
    measured: dict[int, dict[str, list[tuple[float, float]]]] = {b: {n: [] for n in names} for b in batches}
    staged = {(b, n): _staged(p, photos, b) for b in batches for n, p in predictors.items()}
    for (b, n), (s, ids) in staged.items():  # warm-up: allocators, ONNX Runtime's first-run planning
        _rate(predictors[n], s, ids, b)
    for round_ in range(rounds):
        for batch in batches:
            order = names[round_ % len(names):] + names[: round_ % len(names)]
            for name in order:
                rate, cpu = _rate(predictors[name], *staged[(batch, name)], max(batch, images))
                measured[batch][name].append((rate, cpu))
                console.print(f"round {round_ + 1}/{rounds}, batch {batch}, {name}: {rate:.1f} img/s, {cpu:.1f} CPU ms/img")
    out = {}
    for batch, per in measured.items():
        eager = [r for r, _ in per["torch"]]
        out[str(batch)] = {name: {"images_per_s": round(statistics.median(r for r, _ in runs), 1),
                                  "rounds_images_per_s": [round(r, 1) for r, _ in runs],
                                  "cpu_ms_per_image": round(statistics.median(c for _, c in runs), 2),
                                  "speedup_vs_torch": round(statistics.median(r / e for (r, _), e in zip(runs, eager)), 2),
                                  "speedup_range": [round(min(r / e for (r, _), e in zip(runs, eager)), 2),
                                                    round(max(r / e for (r, _), e in zip(runs, eager)), 2)],
                                  # CPU time per image: what other processes on a shared host move least.
                                  "cpu_speedup_vs_torch": round(statistics.median(
                                      e / c for (_, c), (_, e) in zip(runs, per["torch"])), 2)}
                           for name, runs in per.items()}
    return out


@torch.inference_mode()
def probabilities(predictor: Predictor, photos: torch.Tensor, *, batch: int = 32) -> list[np.ndarray]:
    """Sigmoid/softmax probabilities of every level for ``photos`` (text silent), on the predictor's runtime."""
    levels: list[list[np.ndarray]] = [[], [], []]
    for start in range(0, len(photos), batch):
        staged, _ = _staged(predictor, photos[start: start + batch], min(batch, len(photos) - start))
        model = predictor.model
        if predictor.backbone is not None:
            out = model.classify(predictor.backbone(staged.images))
        else:
            out = model(model.preprocess(staged.images).contiguous(memory_format=torch.channels_last))
        cat = torch.sigmoid(out.categories.float()) if model.config.multi else torch.softmax(out.categories.float(), 1)
        for level, p in zip(levels, (cat, torch.sigmoid(out.subcategories.float()), torch.sigmoid(out.attributes.float()))):
            level.append(p.cpu().numpy())
    return [np.concatenate(level) for level in levels]


def agreement(predictors: dict[str, Predictor], photos: torch.Tensor, truth: torch.Tensor) -> dict:
    """Per runtime: largest probability difference to eager, top-1 category agreement, fixture mAP."""
    probs = {name: probabilities(p, photos) for name, p in predictors.items()}
    eager = probs["torch"]
    return {name: {"photos": len(photos),
                   "max_probability_difference": float(max(np.abs(a - b).max() for a, b in zip(p, eager))),
                   "top1_category_agreement": float((p[0].argmax(1) == eager[0].argmax(1)).mean()),
                   "fixture_category_map": round(mean_average_precision(torch.from_numpy(p[0]), truth), 4)}
            for name, p in probs.items()}


def _print(console: Console, body: dict) -> None:
    table = Table(title=f"model alone — {body['model']}, {body['device']} (median of {body['rounds']} rounds)")
    for column in ("runtime", "batch", "img/s", "× eager (range)", "CPU ms/img (× eager)", "top-1 =", "max |Δp|",
                   "fixture mAP"):
        table.add_column(column, justify="left" if column == "runtime" else "right")
    for batch, per in body["model_alone"].items():
        for name, m in per.items():
            a = body["agreement"][name]
            table.add_row(name, batch, f"{m['images_per_s']}", f"{m['speedup_vs_torch']} ({m['speedup_range'][0]}–"
                          f"{m['speedup_range'][1]})", f"{m['cpu_ms_per_image']} ({m['cpu_speedup_vs_torch']})", f"{a['top1_category_agreement']:.3f}",
                          f"{a['max_probability_difference']:.1e}", f"{a['fixture_category_map']}")
    console.print(table)


def plot(path: Path, body: dict) -> Path:
    """Bars: img/s per runtime at each batch size."""
    plt = pyplot()

    batches = list(body["model_alone"])
    names = list(body["model_alone"][batches[0]])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        rates = [body["model_alone"][b][name]["images_per_s"] for b in batches]
        ax.bar([j + i * width for j in range(len(batches))], rates, width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(batches))], [f"batch {b}" for b in batches])
    ax.set_ylabel("images / s")
    ax.set_title(f"{body['model']} alone, {body['device']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--version", help="a published version in --model-dir (default: the packaged model)")
    parser.add_argument("--model-dir", type=Path, default=Path("./models"))
    parser.add_argument("--batches", default="32,128", help="batch sizes (the worker's max_batch)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=128, help="images per timed run")
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--pipeline", action="store_true", help="also the realistic pipeline, eager vs ONNX Runtime")
    parser.add_argument("--pipeline-posts", type=int, default=1024)
    parser.add_argument("--pipeline-rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    console, device = Console(width=150), resolve_device(args.device)
    entry = Registry(args.model_dir).get(args.version) if args.version else default_entry()
    predictors = runtimes(entry, device)
    photos, truth = fixture_photos(load_ontology())
    command = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
    config = predictors["torch"].model.config
    body: dict = {"model": f"{config.backbone}@{config.preprocess.image_size} + {config.head}", "version": entry.version,
                  "device": str(device), "runtimes": list(predictors), "rounds": args.rounds,
                  "images_per_run": args.images, "cpu_forward_batch": Settings().serving.cpu_forward_batch,
                  "threads": torch.get_num_threads(), "photos": "the committed fixture's 100 real photos"}
    body["agreement"] = agreement(predictors, photos, truth)
    manifest = read_manifest(entry.path) or {}
    body["int8_build_check"] = {k: v for k, v in manifest.get("artifacts", {}).get("onnx_int8", {}).items()
                                if k not in ("file", "sha256")}
    batches = [int(b) for b in args.batches.split(",") if b]
    body["model_alone"] = model_alone(predictors, photos, batches, rounds=args.rounds, images=args.images,
                                      console=console)
    write_report(args.out, body, command=command, device=str(device))
    if args.pipeline:
        from workers.benchmarks.runtime_pipeline import pipeline_per_runtime

        del predictors  # the workers get the cores
        body["pipeline"] = pipeline_per_runtime(entry.path, body["model_alone"], posts=args.pipeline_posts,
                                                rounds=args.pipeline_rounds, console=console)
        write_report(args.out, body, command=command, device=str(device))
    _print(console, body)
    plot(args.out.with_suffix(".png"), body)
    return body


if __name__ == "__main__":
    main()
