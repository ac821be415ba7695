"""Reports of the real-photo model: ``reports/real_photos.json`` + ``.png`` and Table II on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from streamcore.reports import write_report
from training.models import DynamicCNN
from training.ontology import Ontology
from training.plots import pyplot
from training.real.pipeline import NEGATIVE, Prepared, category_probs
from training.real.scores import reliability


def write_table2(path: Path, table: dict, *, command: str) -> dict:
    """Table II on real photos (rows with CIs and paired differences; raw records left out)."""
    body = {"data": "real photos: Clothing Co-Parsing 0001-1004 (street) + clothing dataset (single garments), "
                    "held-out test split; captions generated from each photo's labels and mined",
            "settings": table["settings"], "rows": table["rows"], "hint_quality": table["hint_quality"]}
    return write_report(path, body, command=command)


def write_real_report(path: Path, model: DynamicCNN, prepared: Prepared, ontology: Ontology, metrics: dict, *,
                      command: str) -> dict:
    """The held-out scores, chance baselines and the calibration curve, as JSON and a PNG beside it."""
    test = prepared.splits["test"]
    sources = prepared.sources["test"]
    probs = category_probs(model, test, prepared.features["test"], hints=False)
    garment = ~np.isin(sources, NEGATIVE)
    curve = reliability(probs[garment], test.categories[garment])
    body = {
        "model": {"backbone": model.config.backbone, "head": model.config.head,
                  "image_size": model.config.preprocess.image_size, "abstain_below": model.config.abstain_below,
                  "label_floor": model.config.label_floor},
        "photos": {name: {str(s): int((prepared.sources[name] == s).sum()) for s in np.unique(prepared.sources[name])}
                   for name in prepared.sources},
        "metrics": metrics, "reliability_silent": curve,
        "notes": [("street = Clothing Co-Parsing photos 0001-1004 (test: numbers divisible by 5); single garment = "
                  "the clothing dataset's test split; no-garment = street-background regions and drawn images"),
                  "top_worn: the highest-ranked category other than bags, accessories and shoes is one the photo shows",
                  "calibration_error: expected calibration error (15 bins) over every photo x category pair"],
    }
    report = write_report(path, body, command=command)
    plot(path.with_suffix(".png"), metrics, curve, ontology)
    return report


def plot(path: Path, metrics: dict, curve: list[dict], ontology: Ontology) -> Path:
    """Per-category AP on street photos (silent text vs a caption naming one garment) and the reliability curve."""
    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    names = [n for n in ontology.category_names if n in metrics["silent"].get("street", {}).get("AP", {})]
    x = np.arange(len(names))
    for offset, condition in ((-0.2, "silent"), (0.2, "mention")):
        street = metrics.get(condition, {}).get("street", {})
        left.bar(x + offset, [street.get("AP", {}).get(n, 0) for n in names], width=0.4,
                 label=f"{condition} text (mAP {street.get('mAP', float('nan')):.2f})")
    chance = metrics["silent"]["street"]["chance_mAP"] if "street" in metrics["silent"] else None
    if chance is not None:
        left.axhline(chance, color="grey", linestyle=":", label=f"chance mAP {chance:.2f}")
    left.set_xticks(x, [n.replace("_", " ") for n in names], rotation=40, ha="right")
    left.set(ylabel="average precision", title="Street photos (held out): AP per category", ylim=(0, 1))
    left.legend(loc="upper left", fontsize="small", framealpha=0.9)
    right.plot([0, 1], [0, 1], color="grey", linestyle=":")
    right.plot([c["predicted"] for c in curve], [c["observed"] for c in curve], marker="o")
    right.set(xlabel="predicted probability", ylabel="observed frequency", title="Calibration (held-out photos)",
              xlim=(0, 1), ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

