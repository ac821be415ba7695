"""Table II on real photos: every head and baseline x text condition, over several seeds, paired 95% CIs.

Protocol: the trunk is fine-tuned once (:func:`training.real.pipeline.prepare`; fine-tuning per seed is
beyond a CPU's budget, and every head shares it, so the comparison stays paired); settings (hint dropout,
route threshold) are chosen once on the validation split with seed 0 (:func:`training.evaluate.select_settings`);
each seed then draws new captions for every split and retrains every head; a head that fuses the hints into its
category layer has their weight fitted on that seed's validation split, as the served head has
(:func:`training.real.pipeline.weigh_hints`). Test photos are held out from fine-tuning, selection and
calibration alike. Sub-category scores count a sub-category nobody labelled as absent (real labels often stop
at the category), so they understate every head alike.
"""

from __future__ import annotations

import dataclasses

import torch

from serving.ontology import Ontology
from training.evaluate import HINT_FREE, TEXT_ONLY, aggregate, fit_row, select_settings
from training.metrics import hint_quality
from training.real.data import with_condition
from training.real.pipeline import Prepared, RealConfig, weigh_hints
from training.train import evaluate_model

#: Rows: the paper's heads and the baselines that make the comparison (text alone, late fusion).
REAL_ROWS = ("base", "text_only", "fusion", "dynamic_pruning", "dynamic_layers")
TEST_CONDITIONS = ("main", "mention", "wrong_0.25")


def seed_splits(prepared: Prepared, ontology: Ontology, seed: int) -> dict:
    """Every split with the captions of ``seed`` (main condition), plus the test split under each condition."""
    splits = {name: with_condition(split, prepared.records[name], ontology, "main", seed=seed, heldout=name == "test")
              for name, split in prepared.splits.items()}
    tests = {c: with_condition(splits["test"], prepared.records["test"], ontology, c, seed=seed, heldout=True)
             for c in TEST_CONDITIONS}
    return {"splits": splits, "tests": tests}


def run(prepared: Prepared, ontology: Ontology, config: RealConfig, *, seeds: int = 5) -> dict:
    """Raw per-seed records, the aggregated rows (mean, CI, paired differences) and the chosen settings."""
    fit = config.fit
    kw = {"name": config.backbone, "ontology": ontology, "multi": True, "device": "cpu"}
    first = seed_splits(prepared, ontology, 0)
    settings = select_settings(prepared.base.backbone, prepared.features, first["splits"], fit=fit, rows=REAL_ROWS, **kw)
    records = []
    for seed in range(seeds):
        data = first if seed == 0 else seed_splits(prepared, ontology, seed)
        base = None
        for name, test in data["tests"].items():
            quality = hint_quality(torch.from_numpy(test.hint_categories), torch.from_numpy(test.categories))
            records.append(_record(config.backbone, seed, name, "_hints", "mined", "category", quality))
        for head in REAL_ROWS:
            model, used = fit_row(head, settings[head], prepared.base.backbone, prepared.features, data["splits"],
                                  fit=dataclasses.replace(fit, seed=seed), base=base, **kw)
            if head == "base":
                base = model
            weigh_hints(model, data["splits"]["val"], used["val"])  # as the served head is: the text's weight on unseen photos
            for name, test in data["tests"].items():
                modes = ("none",) if head in HINT_FREE else ("mined",) if head in TEXT_ONLY else ("mined", "none")
                if name != "main" and head not in HINT_FREE:  # silent text is one row (under main) per head
                    modes = ("mined",)
                for hints in modes:
                    scores = evaluate_model(model, test, features=used["test"], hints=hints == "mined")
                    records.extend(_record(config.backbone, seed, name, head, hints, level, m) for level, m in scores.items())
    table, quality = aggregate(records)
    return {"settings": settings, "rows": table, "hint_quality": quality, "records": records}


def _record(backbone: str, seed: int, variant: str, head: str, hints: str, level: str, metrics: dict) -> dict:
    return {"seed": seed, "scenario": "multi", "backbone": backbone, "variant": variant, "head": head,
            "hints": hints, "level": level, "metrics": metrics}
