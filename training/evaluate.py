"""Table II: every head × backbone × scenario, with mined hints and with hints removed at test time."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from streamcore.reports import report_meta
from training.data.benchmark import BenchmarkConfig, load_benchmark
from training.ontology import load_ontology
from training.train import FitConfig, evaluate_model, frozen_features, train_head

HEADS = ("base", "dynamic_pruning", "dynamic_layers")


def run_table2(*, backbones: list[str], scenarios: list[str], bench: BenchmarkConfig, fit: FitConfig,
               pretrain: FitConfig, cache_dir: Path | None, device: str = "cpu") -> list[dict]:
    """Train every head on cached frozen features and evaluate it with and without hints."""
    ontology = load_ontology()
    rows = []
    for scenario in scenarios:
        multi = scenario == "multi"
        splits = load_benchmark(ontology, BenchmarkConfig(**{**bench.__dict__, "multi": multi}), cache_dir=cache_dir)
        for name in backbones:
            started = time.perf_counter()
            backbone, feats = frozen_features(name, ontology, splits, multi=multi,
                                              pretrain=pretrain if name == "tiny" else None, device=device)
            for head in HEADS:
                model, _ = train_head(head, backbone, feats, splits, name=name, ontology=ontology, multi=multi,
                                      config=fit, device=device)
                for hints in (True, False):
                    scores = evaluate_model(model, splits["test"], features=feats["test"], hints=hints, device=device)
                    for level, metrics in scores.items():
                        rows.append({"scenario": scenario, "backbone": name, "head": head,
                                     "hints": "mined" if hints else "none", "level": level,
                                     **{k: round(v, 4) for k, v in metrics.items()}})
            print(f"{scenario}/{name}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return rows


def plot_table2(rows: list[dict], path: Path) -> None:
    """Bar chart of attribute P@3 per scenario/backbone, one bar per head × hints."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attr = [r for r in rows if r["level"] == "attribute"]
    groups = sorted({(r["scenario"], r["backbone"]) for r in attr})
    series = [(h, s) for s in ("mined", "none") for h in HEADS]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(series)
    for i, (head, hints) in enumerate(series):
        values = [next((r["P@3"] for r in attr if (r["scenario"], r["backbone"], r["head"], r["hints"]) == (*g, head, hints)), 0) for g in groups]
        ax.bar([g + i * width for g in range(len(groups))], values, width, label=f"{head} ({hints} hints)",
               hatch="//" if hints == "none" else None)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], [f"{s}\n{b}" for s, b in groups])
    ax.set_ylabel("attribute P@3 (test)")
    ax.set_title("Table II: attribute P@3 by head, with mined hints and with hints removed")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """``stylestream eval``: run the Table II grid and write ``reports/table2.json`` + ``.png``."""
    parser = argparse.ArgumentParser(prog="evaluate", description=__doc__)
    parser.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "tiny"])
    parser.add_argument("--scenarios", nargs="+", default=["single", "multi"], choices=["single", "multi"])
    parser.add_argument("--n-train", type=int, default=10_000)
    parser.add_argument("--n-test", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--cache-dir", type=Path, default=Path("cache/benchmark"))
    parser.add_argument("--out", type=Path, default=Path("reports/table2.json"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hint-dropout", type=float, default=FitConfig.hint_dropout,
                        help="probability of training a sample without its hints")
    parser.add_argument("--notes", default=None, help="free text stored in the report")
    args = parser.parse_args(argv)
    rows = run_table2(
        backbones=args.backbones, scenarios=args.scenarios,
        bench=BenchmarkConfig(n_train=args.n_train, n_test=args.n_test, seed=args.seed),
        fit=FitConfig(epochs=args.epochs, seed=args.seed, hint_dropout=args.hint_dropout), pretrain=FitConfig(epochs=args.pretrain_epochs, seed=args.seed),
        cache_dir=args.cache_dir, device=args.device,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m training.evaluate", *(argv if argv is not None else sys.argv[1:])])
    report = {"rows": rows, **({"notes": args.notes} if args.notes else {}), **report_meta(command, device=args.device)}
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    plot_table2(rows, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
