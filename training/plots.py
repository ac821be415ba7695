"""PNG charts a reader would rather look at than read: training curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def plot_training_curves(history: Sequence[dict], path: Path, *, title: str) -> Path:
    """Train and validation loss per epoch (``fit``'s history) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
