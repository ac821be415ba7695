"""Table II: every head and baseline × scenario × text condition, over several seeds, with paired 95% CIs.

Protocol (what makes the numbers hold up):

* Each seed regenerates the data (images, captions, mined hints) and retrains everything.
* Settings (hint dropout per head, the route threshold of the dynamic heads and of Base+mask) are
  chosen once per scenario on the *validation* split of seed 0's main text condition, by
  :func:`selection_score`; the test split is never looked at for a choice.
* Text conditions that differ only in their text share images and labels (``BenchmarkConfig.same_images``),
  so they reuse the frozen backbone's features and are compared paired.
* Every head's result on a seed is paired with Base's (and late fusion's) on the same seed; the report
  gives mean differences with t-based 95% intervals (:func:`training.metrics.paired_interval`).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from serving.models import build_model
from serving.models.heads import DYNAMIC_HEADS, ROUTE_THRESHOLD
from serving.ontology import Ontology, load_ontology
from streamcore.reports import report_meta
from training.data.benchmark import BenchmarkConfig, Split, load_benchmark
from training.metrics import hint_quality, paired_interval
from training.train import (
    LEVELS,
    FitConfig,
    evaluate_model,
    extract_features,
    frozen_features,
    train_head,
)

#: Rows of the table: the paper's heads plus the baselines a reviewer asks for.
ROW_HEADS = ("base", "text_only", "fusion", "base_masked", "dynamic_pruning", "dynamic_layers", "dynamic_layers_pure")
#: Heads that never read hints: reported once (``hints = "none"``), not as identical mined/none pairs.
HINT_FREE = ("base",)
#: Heads that read nothing but hints: there is no "hints removed" result to report.
TEXT_ONLY = ("text_only",)
#: The harder, honest text every condition starts from (the old benchmark's text is ``easy``).
MAIN_TEXT = {"mention_prob": 0.8, "distractor_prob": 0.3, "slang_prob": 0.3, "wrong_hint_rate": 0.0}
VARIANTS: dict[str, dict] = {
    "main": {},
    "mention_0.5": {"mention_prob": 0.5},
    "mention_0.3": {"mention_prob": 0.3},
    "wrong_0.25": {"wrong_hint_rate": 0.25},
    "wrong_0.5": {"wrong_hint_rate": 0.5},
    "easy": {"distractor_prob": 0.0, "slang_prob": 0.0},
    "visible": {"visible_materials": True},
}
HINT_DROPOUTS = (0.0, 0.5, 0.8)
#: How far (per metric, on validation) a dynamic head's silent-text score may fall below Base's and still be chosen.
SILENT_TOLERANCE = 0.01
ROUTE_THRESHOLDS = (0.05, 0.1, 0.3)


def variant_config(base: BenchmarkConfig, variant: str) -> BenchmarkConfig:
    """The benchmark config of one text/image condition."""
    return dataclasses.replace(base, **{**MAIN_TEXT, **VARIANTS[variant]})


def selection_score(mined: dict[str, dict], silent: dict[str, dict] | None) -> float:
    """Validation criterion: mean of P@1, P@3 and R@5 over the three levels, with mined hints and without.

    Both text conditions count equally, so a setting cannot win by leaning on hints and failing when
    the text is silent; R@5 keeps a recall loss from paying for precision.
    """
    runs = [mined] if silent is None else [mined, silent]
    return float(np.mean([r[level][m] for r in runs for level in LEVELS for m in ("P@1", "P@3", "R@5")]))


def silent_shortfall(silent: dict[str, dict], base: dict[str, dict]) -> float:
    """How far below Base a head falls with the text silent: the worst of the criterion's metrics (≤ 0 is a loss)."""
    return min(silent[level][m] - base[level][m] for level in LEVELS for m in ("P@1", "P@3", "R@5"))


def _trained_head(row_head: str) -> str:
    return {"text_only": "fusion", "base_masked": "base"}.get(row_head, row_head)


def fit_row(row_head: str, settings: dict, backbone, feats, splits, *, name, ontology, multi, fit, device, base=None):
    """Train (or derive) the model of one table row with its chosen settings; returns model and its features.

    ``base`` is the row Base model of the same data: the dynamic heads continue it, Base+mask reuses it.
    """
    if row_head == "text_only":  # late fusion on blank image features: the text alone
        feats = {k: torch.zeros_like(v) for k, v in feats.items()}
    config = dataclasses.replace(fit, hint_dropout=settings.get("hint_dropout", 0.0), lr=settings.get("lr", fit.lr))
    if row_head == "base_masked" and base is not None:
        model = base
    else:
        model, _ = train_head(_trained_head(row_head), backbone, feats, splits, name=name, ontology=ontology,
                              multi=multi, config=config, device=device, base=base,
                              route_threshold=settings.get("route_threshold", ROUTE_THRESHOLD))
    if row_head == "base_masked":  # Base's weights under DynamicPruning's test-time masks and boosts
        masked = build_model(backbone=name, head="dynamic_pruning", ontology=ontology, multi=multi, weights="random",
                             route_threshold=settings["route_threshold"], silent_fallback=False)
        masked.backbone = backbone
        masked.head.load_state_dict(model.head.state_dict())
        model = masked.to(device)
    return model, feats


def _grid(row_head: str, lrs: tuple[float, ...] = ()) -> list[dict]:
    """The settings tried for one row head; ``lrs`` adds the learning rate to every trained head's grid."""
    if row_head in DYNAMIC_HEADS:
        grid = [{"hint_dropout": d, "route_threshold": t} for d, t in itertools.product(HINT_DROPOUTS, ROUTE_THRESHOLDS)]
    elif row_head == "fusion":
        grid = [{"hint_dropout": d} for d in HINT_DROPOUTS]
    elif row_head == "base_masked":  # Base's weights: its learning rate is Base's choice
        return [{"route_threshold": t} for t in ROUTE_THRESHOLDS]
    else:
        grid = [{}]
    return [{**g, "lr": lr} for g in grid for lr in lrs] if lrs else grid


def select_settings(backbone, feats, splits, *, name: str, ontology: Ontology, multi: bool, fit: FitConfig,
                    device: str, lrs: tuple[float, ...] = (), rows: tuple[str, ...] = ROW_HEADS) -> dict[str, dict]:
    """Per row head, the grid point with the best :func:`selection_score` on the validation split.

    A dynamic head must also hold Base's level when the text is silent: only grid points whose
    :func:`silent_shortfall` on validation stays within ``SILENT_TOLERANCE`` compete (if none does, the
    one that falls least is taken).
    """
    chosen: dict[str, dict] = {}
    base, base_val = None, None  # the selected Base model (what the dynamic heads continue) and its scores
    for row_head in rows:
        best = None
        grid = _grid(row_head, lrs)
        if row_head == "base_masked" and lrs:
            grid = [{**g, "lr": chosen["base"]["lr"]} for g in grid]
        for settings in grid:
            model, used = fit_row(row_head, settings, backbone, feats, splits, name=name, ontology=ontology,
                                   multi=multi, fit=fit, device=device, base=base)
            mined = evaluate_model(model, splits["val"], features=used["val"], hints=True, device=device)
            silent = None if row_head in TEXT_ONLY else evaluate_model(model, splits["val"], features=used["val"],
                                                                        hints=False, device=device)
            score = selection_score(mined, silent)
            # Ranked by (holds Base when silent, score); among grid points that all fall short, by the shortfall.
            holds = True if row_head not in DYNAMIC_HEADS else silent_shortfall(silent, base_val) >= -SILENT_TOLERANCE
            key = (holds, score if holds else silent_shortfall(silent, base_val))
            if best is None or key > best[0]:
                best = (key, settings, model, score)
        chosen[row_head] = {**best[1], "val_score": round(best[3], 4)}
        if row_head in DYNAMIC_HEADS:
            chosen[row_head]["holds_base_when_silent"] = best[0][0]
        if row_head == "base":
            base = best[2]
            base_val = evaluate_model(base, splits["val"], features=feats["val"], hints=False, device=device)
        print(f"selected {row_head}: {chosen[row_head]}", file=sys.stderr)
    return chosen


def _features(backbone_name: str, ontology: Ontology, splits: dict[str, Split], *, multi: bool,
              pretrain: FitConfig | None, device: str, shared: dict | None, key: tuple):
    """Frozen backbone + features of every split; with ``shared``, the backbone is pretrained once per ``key``
    (scenario and image condition) and reused for later seeds' images."""
    if shared is None or key not in shared:
        backbone, feats = frozen_features(backbone_name, ontology, splits, multi=multi, pretrain=pretrain, device=device)
        if shared is not None:
            shared[key] = backbone
        return backbone, feats
    model = build_model(backbone=backbone_name, head="base", ontology=ontology, multi=multi, weights="random")
    model.backbone = shared[key]
    return shared[key], {n: extract_features(model, torch.from_numpy(s.images), device=device) for n, s in splits.items()}


def run_seed(*, seed: int, scenario: str, backbone_name: str, variants: list[str], bench: BenchmarkConfig,
             fit: FitConfig, pretrain: FitConfig | None, settings: dict[str, dict] | None, cache_dir: Path | None,
             device: str, shared: dict | None = None, lrs: tuple[float, ...] = ()) -> tuple[list[dict], dict[str, dict]]:
    """Every row head on every condition of one seed; selects settings first when ``settings`` is None.

    ``shared`` (a dict kept across calls) reuses one pretrained backbone per scenario and image condition
    instead of pretraining one per seed. Returns raw records ``{seed, scenario, backbone, variant, head,
    hints, level, metrics}`` and the settings.
    """
    ontology, multi = load_ontology(), scenario == "multi"
    base = dataclasses.replace(bench, multi=multi, seed=seed)
    fit = dataclasses.replace(fit, seed=seed)
    records, trained = [], []  # (config, test labels, backbone, features) per distinct image set
    for variant in variants:
        config = variant_config(base, variant)
        splits = load_benchmark(ontology, config, cache_dir=cache_dir)
        found = next((t for t in trained if t[0].same_images(config)), None)
        if found is None:
            found = (config, splits["test"].categories,
                     *_features(backbone_name, ontology, splits, multi=multi, pretrain=pretrain, device=device,
                                shared=shared, key=(scenario, backbone_name, config.visible_materials)))
            trained.append(found)
        _, labels, backbone, feats = found
        if not np.array_equal(labels, splits["test"].categories):
            raise RuntimeError(f"variant {variant} was expected to share images with {found[0]}")
        if settings is None:
            settings = select_settings(backbone, feats, splits, name=backbone_name, ontology=ontology, multi=multi,
                                       fit=fit, device=device, lrs=lrs)
        quality = hint_quality(torch.from_numpy(splits["test"].hint_categories), torch.from_numpy(splits["test"].categories))
        records.append({"seed": seed, "scenario": scenario, "backbone": backbone_name, "variant": variant,
                        "head": "_hints", "hints": "mined", "level": "category", "metrics": quality})
        base_model = None
        for row_head in ROW_HEADS:  # Base first: the dynamic heads continue it
            model, used = fit_row(row_head, settings[row_head], backbone, feats, splits, name=backbone_name,
                                   ontology=ontology, multi=multi, fit=fit, device=device, base=base_model)
            if row_head == "base":
                base_model = model
            conditions = ("none",) if row_head in HINT_FREE else ("mined",) if row_head in TEXT_ONLY else ("mined", "none")
            for hints in conditions:
                scores = evaluate_model(model, splits["test"], features=used["test"], hints=hints == "mined", device=device)
                records.extend({"seed": seed, "scenario": scenario, "backbone": backbone_name, "variant": variant,
                                "head": row_head, "hints": hints, "level": level, "metrics": metrics}
                               for level, metrics in scores.items())
    return records, settings


def aggregate(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """Table rows (mean, 95% CI, paired differences to Base and to late fusion) and hint-quality rows."""
    by_key: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for r in records:
        by_key[(r["scenario"], r["backbone"], r["variant"], r["head"], r["hints"], r["level"])][r["seed"]] = r["metrics"]

    def reference(key: tuple, head: str) -> dict[int, dict] | None:
        scenario, backbone, variant, _, hints, level = key
        ref_hints = "none" if head in HINT_FREE else hints
        return by_key.get((scenario, backbone, variant, head, ref_hints, level))

    rows, quality = [], []
    for key, per_seed in sorted(by_key.items()):
        scenario, backbone, variant, head, hints, level = key
        seeds = sorted(per_seed)
        metrics = list(per_seed[seeds[0]])
        if head == "_hints":
            quality.append({"scenario": scenario, "backbone": backbone, "variant": variant, "n_seeds": len(seeds),
                            **{m: round(float(np.mean([per_seed[s][m] for s in seeds])), 4) for m in metrics}})
            continue
        row = {"scenario": scenario, "backbone": backbone, "variant": variant, "head": head, "hints": hints,
               "level": level, "n_seeds": len(seeds)}
        row.update({m: round(float(np.mean([per_seed[s][m] for s in seeds])), 4) for m in metrics})
        row["ci95"] = {m: round(paired_interval([per_seed[s][m] for s in seeds])[1], 4) for m in metrics}
        for ref in ("base", "fusion"):
            other = reference(key, ref)
            if ref == head or other is None:
                continue
            common = [s for s in seeds if s in other]
            row[f"diff_vs_{ref}"] = {m: [round(v, 4) for v in paired_interval([per_seed[s][m] - other[s][m] for s in common])]
                                     for m in metrics}
        rows.append(row)
    return rows, quality


def verdicts(rows: list[dict]) -> dict[str, list[str]]:
    """The issue's questions answered from the rows, as plain sentences (no thresholds tuned on test)."""
    out: dict[str, list[str]] = {"dynamic_vs_fusion_attribute_P@3": [], "dynamic_worse_than_base": [],
                                 "silent_text_vs_base": []}
    for r in rows:
        if r["variant"] != "main" or r["head"] not in DYNAMIC_HEADS:
            continue
        where = f"{r['scenario']}/{r['backbone']}/{r['head']}"
        if r["hints"] == "mined" and r["level"] == "attribute" and "diff_vs_fusion" in r:
            mean, half = r["diff_vs_fusion"]["P@3"]
            beats = mean - half > 0
            out["dynamic_vs_fusion_attribute_P@3"].append(
                f"{where}: {mean:+.4f} ± {half:.4f} → {'beats late fusion beyond its CI' if beats else 'does NOT beat late fusion beyond its CI'}")
        if r["hints"] == "mined" and "diff_vs_base" in r:
            for m, (mean, half) in r["diff_vs_base"].items():
                if mean + half < 0:
                    out["dynamic_worse_than_base"].append(f"{where} {r['level']} {m}: {mean:+.4f} ± {half:.4f}")
        if r["hints"] == "none" and "diff_vs_base" in r:
            for m, (mean, half) in r["diff_vs_base"].items():
                if mean < -0.01:
                    out["silent_text_vs_base"].append(f"{where} {r['level']} {m}: {mean:+.4f} ± {half:.4f} (below Base − 1 point)")
    return out


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    from streamcore.helptext import parser_options  # the help as `stylestream ... --help` shows it

    parser = argparse.ArgumentParser(**parser_options("stylestream eval", __doc__))
    parser.add_argument("--backbones", nargs="+", default=["tiny"])
    parser.add_argument("--scenarios", nargs="+", default=["single", "multi"], choices=["single", "multi"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--n-train", type=int, default=2_000)
    parser.add_argument("--n-test", type=int, default=1_000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=Path("cache/benchmark"))
    parser.add_argument("--raw", type=Path, default=None, help="per-seed results (JSON lines); default: <out>.raw.jsonl")
    parser.add_argument("--aggregate-only", action="store_true")
    parser.add_argument("--share-backbone", action="store_true",
                        help="pretrain the backbone once per scenario/image condition (first seed) instead of per seed")
    parser.add_argument("--lrs", nargs="+", type=float, default=[],
                        help="also select each head's learning rate on validation from these values")
    parser.add_argument("--out", type=Path, default=Path("reports/table2.json"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--notes", default=None, help="free text stored in the report")
    return parser.parse_args(argv)


def _run_seeds(args: argparse.Namespace, raw: Path, done: list[dict], selected: dict[str, dict]) -> None:
    """Every (seed, backbone, scenario) not yet in ``raw``, appended to it as it finishes."""
    # A later invocation may add conditions (e.g. the visible-material ablation on fewer seeds) to the same raw file.
    finished = {(e["seed"], e["scenario"], e["backbone"], tuple(e["variants"])) for e in done if e.get("kind") == "seed"}
    bench = BenchmarkConfig(n_train=args.n_train, n_test=args.n_test)
    fit = FitConfig(epochs=args.epochs)
    raw.parent.mkdir(parents=True, exist_ok=True)
    shared: dict | None = {} if args.share_backbone else None
    # Seeds outermost: a run stopped early still covers every scenario with its first seeds.
    for seed, name, scenario in itertools.product(args.seeds, args.backbones, args.scenarios):
        if (seed, scenario, name, tuple(args.variants)) in finished:
            continue
        started = time.perf_counter()
        pretrain = FitConfig(epochs=args.pretrain_epochs, seed=seed) if name == "tiny" else None
        records, settings = run_seed(seed=seed, scenario=scenario, backbone_name=name, variants=args.variants,
                                     bench=bench, fit=fit, pretrain=pretrain,
                                     settings=selected.get(f"{scenario}/{name}"), cache_dir=args.cache_dir,
                                     device=args.device, shared=shared, lrs=tuple(args.lrs))
        with raw.open("a", encoding="utf-8") as fh:
            if f"{scenario}/{name}" not in selected:
                selected[f"{scenario}/{name}"] = settings
                fh.write(json.dumps({"kind": "selection", "scenario": scenario, "backbone": name, "settings": settings}) + "\n")
            fh.write(json.dumps({"kind": "seed", "seed": seed, "scenario": scenario, "backbone": name,
                                 "variants": args.variants, "records": records}) + "\n")
        done.append({"kind": "seed", "records": records})
        print(f"{scenario}/{name}/seed {seed}: {time.perf_counter() - started:.0f} s", file=sys.stderr)


def _protocol(args: argparse.Namespace) -> dict:
    return {"variants": {v: {**MAIN_TEXT, **VARIANTS[v]} for v in VARIANTS},
            "selection": selection_score.__doc__.split("\n")[0] + " Chosen on seed 0's validation split "
                         "(main text); test never used for a choice. Dynamic heads: only settings whose "
                         f"silent-text validation scores stay within {SILENT_TOLERANCE} of Base's on every "
                         "criterion metric compete. Dynamic heads continue the selected Base (trunk and "
                         "category layer frozen). alpha=0.1, beta=0.01 as in the paper.",
            "ci": "mean ± t(0.975, n-1)·sd/√n over seeds; diff_vs_* are [mean, half-width] of paired per-seed differences",
            "n_train": args.n_train, "n_test": args.n_test, "epochs": args.epochs,
            "pretrain_epochs": args.pretrain_epochs,
            "backbone_pretraining": "once per scenario and image condition, on the first seed's data; later "
                                    "seeds regenerate data and retrain every head on that frozen backbone"
                                    if args.share_backbone else "per seed"}


def main(argv: list[str] | None = None) -> int:
    """``stylestream eval``: run Table II over seeds and write ``reports/table2.json`` + ``.png``.

    Raw per-seed results are appended to ``--raw`` as they finish, so an interrupted run resumes, and
    ``--aggregate-only`` rebuilds the report from them.
    """
    args = _arguments(argv)
    raw = args.raw or args.out.with_suffix(".raw.jsonl")
    done = [json.loads(line) for line in raw.read_text().splitlines()] if raw.exists() else []
    selected = {f"{e['scenario']}/{e['backbone']}": e["settings"] for e in done if e.get("kind") == "selection"}
    if not args.aggregate_only:
        _run_seeds(args, raw, done, selected)
    records = [r for e in done if e.get("kind") == "seed" for r in e["records"]]
    rows, quality = aggregate(records)
    command = " ".join(["stylestream eval", *(argv if argv is not None else sys.argv[1:])])
    report = {"rows": rows, "hint_quality": quality, "selected_settings": selected, "verdicts": verdicts(rows),
              "protocol": _protocol(args), **({"notes": args.notes} if args.notes else {}),
              **report_meta(command, device=args.device)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    from training.plots import plot_table2

    plot_table2(rows, quality, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
