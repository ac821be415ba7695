"""Forward time of each head at batch 64, relative to Base and to the paper's per-sample loop.

All heads share one backbone module (same weights), so the full-model ratio differs only by the head;
the head alone is also timed on the backbone's features, where its cost is not buried in the
backbone's and its noise. The paper-faithful baseline runs DynamicPruning one sample at a time and
writes ``weight.data`` of the dependent layers before each forward (Algorithm 1 as the authors
implemented it), both through the whole model and through the head alone: on a CPU a convolutional
backbone costs about the same per image at batch 1 as at batch 64, so only the head-only comparison
isolates what per-sample weight rewriting costs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from serving.models import DynamicCNN, build_model
from serving.models.heads import HEADS
from serving.ontology import Ontology, load_ontology
from streamcore.reports import report_meta


def _time_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _round_robin_ms(fns: dict[str, Callable[[], object]], repeats: int, inner: int = 1) -> dict[str, float]:
    """Median ms per call of each ``fn``, interleaved so load drift on a shared machine hits all alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            times[name].append((time.perf_counter() - start) * 1000 / inner)
    return {name: statistics.median(t) for name, t in times.items()}


def naive_per_sample(model: DynamicCNN, inputs: torch.Tensor, hints: torch.Tensor, ontology: Ontology, *,
                     features: bool = False) -> list:
    """Algorithm 1 as the authors ran it: per sample, overwrite dependent weight rows, then forward.

    ``features=True``: ``inputs`` are backbone features and only the head runs (the head-only baseline).
    """
    layer = model.head.attributes.linear
    outs = []
    for i in range(len(inputs)):
        allowed = set(ontology.attribute_ranges[int(hints[i].argmax())])
        for k in range(layer.out_features):  # no attribute hint here (Sa = -1): zero or beta
            layer.weight.data[k] = model.config.beta if k in allowed else 0.0
        outs.append(model.classify(inputs[i : i + 1], hints[i : i + 1]) if features else model(inputs[i : i + 1]))
    return outs


def bench(backbones: list[str], *, batch: int, repeats: int, image_size: int | None) -> dict:
    ontology = load_ontology()
    torch.manual_seed(0)
    hints = torch.zeros(batch, len(ontology.category_names))
    hints[torch.arange(batch), torch.randint(0, len(ontology.category_names), (batch,))] = 1.0
    rows, naive_ms, naive_head_ms = [], None, None
    for name in backbones:
        models = {h: build_model(backbone=name, head=h, ontology=ontology, weights="random", image_size=image_size).eval() for h in HEADS}
        for model in models.values():
            model.backbone = models["base"].backbone
        size = models["base"].preprocess.image_size
        images = torch.rand(batch, 3, size, size)
        with torch.no_grad():
            features = models["base"].backbone(images)
            full = _round_robin_ms({h: lambda m=m, x=images: m(x, hints) for h, m in models.items()}, repeats)
            # The head alone takes ~1 ms: many calls per sample so timer resolution and jitter average out.
            head = _round_robin_ms({h: lambda m=m, f=features: m.classify(f, hints) for h, m in models.items()}, repeats, inner=50)
            if naive_ms is None:
                # On a copy: the loop overwrites weights, and the timed heads must keep theirs.
                naive = copy.deepcopy(models["dynamic_pruning"])
                naive_ms = _time_ms(lambda m=naive, x=images: naive_per_sample(m, x, hints, ontology), max(1, repeats // 3))
                naive_head_ms = _time_ms(lambda m=naive, f=features: naive_per_sample(m, f, hints, ontology, features=True),
                                         repeats)
        for h in HEADS:
            # Base's full time plus this head's extra head-only time: the same ratio, without the backbone's
            # jitter (on a loaded machine it swings the full-model ratio by more than any head costs).
            from_parts = (full["base"] + head[h] - head["base"]) / full["base"]
            rows.append({"head": h, "backbone": name, "ms_per_batch": round(full[h], 3), "ratio_to_base": round(full[h] / full["base"], 4),
                         "head_ms_per_batch": round(head[h], 4), "head_ratio_to_base": round(head[h] / head["base"], 4),
                         "ratio_to_base_from_parts": round(from_parts, 4)})
    for row in rows:
        if row["backbone"] == backbones[0]:
            row["head_ratio_to_naive_head"] = round(row["head_ms_per_batch"] / naive_head_ms, 4)
    return {"batch": batch, "rows": rows, "naive_per_sample_ms_per_batch": round(naive_ms, 3),
            "naive_head_per_sample_ms_per_batch": round(naive_head_ms, 3), "naive_backbone": backbones[0]}


def main(argv: list[str] | None = None) -> int:
    """``stylestream bench heads``: write ``reports/bench_heads.json``."""
    from streamcore.helptext import parser_options  # the help as `stylestream ... --help` shows it

    parser = argparse.ArgumentParser(**parser_options("stylestream bench heads", __doc__))
    parser.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "tiny"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("reports/bench_heads.json"))
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    report = bench(args.backbones, batch=args.batch, repeats=args.repeats, image_size=args.image_size)
    rows = report["rows"]
    report["naive_ratio_of_dynamic_pruning"] = round(
        next(r["ms_per_batch"] for r in rows if r["head"] == "dynamic_pruning") / report["naive_per_sample_ms_per_batch"], 4)
    # Timings on a shared machine mean little without the load they were taken under.
    report["load_average_1_5_15"] = {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]}
    report.update(report_meta(" ".join(["stylestream bench heads", *(argv if argv is not None else sys.argv[1:])])))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
