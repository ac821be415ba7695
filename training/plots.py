"""PNG charts a reader would rather look at than read: training curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streamcore.extras import needs


def pyplot() -> Any:
    """``matplotlib.pyplot`` drawing to files (the Agg backend: no display needed); matplotlib is in the
    ``train`` extra."""
    with needs("train"):
        import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(history: Sequence[dict], path: Path, *, title: str) -> Path:
    """Train and validation loss per epoch (``fit``'s history) as a PNG."""
    plt = pyplot()

    epochs = [h["epoch"] + 1 for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation (hinted + no-hint mix)")
    best = min(history, key=lambda h: h["val_loss"])
    ax.axvline(best["epoch"] + 1, color="grey", linestyle=":", label=f"kept: epoch {best['epoch'] + 1}")
    ax.set(xlabel="epoch", ylabel="loss", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_table2(rows: Sequence[dict], quality: Sequence[dict], path: Path) -> Path:
    """Table II as a figure: every head's P@1 / attribute P@3 / sub-category R@5 with 95% CIs (main text),
    and the attribute-P@3 gain over Base and over late fusion against the hint precision of each condition."""
    plt = pyplot()

    scenarios = sorted({r["scenario"] for r in rows})
    # The backbone with the most conditions (the sweeps need them); the JSON holds every backbone.
    backbone = max(sorted({r["backbone"] for r in rows}), key=lambda b: len({r["variant"] for r in rows if r["backbone"] == b}))
    panels = (("attribute", "P@3"), ("subcategory", "R@5"), ("category", "P@1"))
    fig, axes = plt.subplots(len(scenarios), len(panels) + 1, figsize=(5 * (len(panels) + 1), 4.2 * len(scenarios)),
                             squeeze=False)
    heads = list(dict.fromkeys(r["head"] for r in rows))
    for i, scenario in enumerate(scenarios):
        main = [r for r in rows if r["scenario"] == scenario and r["backbone"] == backbone and r["variant"] == "main"]
        for j, (level, metric) in enumerate(panels):
            ax = axes[i][j]
            for k, hints in enumerate(("mined", "none")):
                got = [next((r for r in main if r["head"] == h and r["hints"] == hints and r["level"] == level), None)
                       for h in heads]
                xs = [n + (k - 0.5) * 0.38 for n, g in enumerate(got) if g]
                ax.bar(xs, [g[metric] for g in got if g], 0.38, yerr=[g["ci95"][metric] for g in got if g], capsize=3,
                       label=f"{hints} hints", hatch="//" if hints == "none" else None)
            ax.set_xticks(range(len(heads)), heads, rotation=35, ha="right", fontsize=7)
            ax.set_title(f"{scenario} · {backbone}: {level} {metric} (main text)", fontsize=9)
            ax.legend(fontsize=7)
        ax = axes[i][-1]
        precision = {q["variant"]: q["precision"] for q in quality if q["scenario"] == scenario and q["backbone"] == backbone}
        # Two sweeps: less text (mention rate) and wrong category hints (attribute hints stay true).
        families = {"mention": ("easy", "main", "mention_0.5", "mention_0.3"), "wrong": ("main", "wrong_0.25", "wrong_0.5")}
        for head, colour in (("dynamic_pruning", "tab:blue"), ("dynamic_layers", "tab:green")):
            for ref, marker in (("base", "o"), ("fusion", "s")):
                for family, variants in families.items():
                    pts = sorted((precision[r["variant"]], *r[f"diff_vs_{ref}"]["P@3"]) for r in rows
                                 if r["scenario"] == scenario and r["backbone"] == backbone and r["head"] == head
                                 and r["hints"] == "mined" and r["level"] == "attribute" and f"diff_vs_{ref}" in r
                                 and r["variant"] in precision and r["variant"] in variants)
                    if pts:
                        ax.errorbar([q[0] for q in pts], [q[1] for q in pts], yerr=[q[2] for q in pts], color=colour,
                                    marker=marker, linestyle="-" if family == "mention" else ":", capsize=3, markersize=4,
                                    label=f"{head} − {ref} ({family} sweep)")
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set(xlabel="hint precision (top hinted category is true)", ylabel="Δ attribute P@3 (mined hints)")
        ax.set_title(f"{scenario}: gain vs hint precision", fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
