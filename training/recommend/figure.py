"""The evaluation's picture: query photos with plain and diverse top-10s, and the metrics side by side."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from training.plots import pyplot
from training.recommend.photos import Embedded
from training.recommend.vectors import CATEGORY_PART, Layout

_SHOWN = ("precision", "garment_coverage", "part_coverage", "facet_coverage", "ild", "image_similarity")


def _thumb(path: str, size: int = 160, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    with Image.open(path) as img:
        img = img.convert("RGB")
        if box is not None:
            img = img.crop(box)
        img.thumbnail((size, size))
        canvas = Image.new("RGB", (size, size), "white")
        canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
        return np.asarray(canvas)


def _pick_query(data: Embedded, ranked: dict, diverse: str) -> int:
    """The query whose diverse list shows the most of its parts more than the plain list does (a telling example)."""
    items = ranked["items"]

    def parts(q: int, name: str) -> int:
        worn = set(data.truth[q])
        return len({CATEGORY_PART[c] for r, _ in ranked["results"][name][q] for c in data.truth[items[r]] if c in worn})
    return max(ranked["queries"], key=lambda q: (parts(q, diverse) - parts(q, "plain"), parts(q, diverse), -q))


def draw(path: Path, data: Embedded, ranked: dict, table: dict, diverse: str, layout: Layout) -> Path:
    plt = pyplot()

    q = _pick_query(data, ranked, diverse)
    items, worn = ranked["items"], set(data.truth[q])
    fig = plt.figure(figsize=(17, 9.5))
    grid = fig.add_gridspec(3, 12, height_ratios=[1, 1, 0.9], hspace=0.45, wspace=0.08)
    ax = fig.add_subplot(grid[0:2, 0:2])
    ax.imshow(_thumb(data.images[q], 240))
    ax.set_title("query", fontsize=9)
    ax.set_xlabel(textwrap.fill("wears: " + ", ".join(sorted(worn)), 45), fontsize=7)
    ax.set_xticks([]), ax.set_yticks([])
    for row, name in enumerate(("plain", diverse)):
        for col, (r, why) in enumerate(ranked["results"][name][q][:10]):
            cell = fig.add_subplot(grid[row, col + 2])
            cell.imshow(_thumb(data.images[items[r]], box=data.boxes[items[r]]))
            truth = data.truth[items[r]]
            hit = bool(set(truth) & worn)
            cell.set_title(f"{truth[0][:16]}" + (f"\nfor: {why}" if why else ""), fontsize=7,
                           color="green" if hit else "red")
            cell.set_xticks([]), cell.set_yticks([])
            if col == 0:
                cell.set_ylabel(name, fontsize=9)
    bars = fig.add_subplot(grid[2, 2:])
    names = list(table)
    width = 0.8 / len(names)
    for n, name in enumerate(names):
        values = [table[name][m] / max(1e-9, max(table[x][m] for x in names)) for m in _SHOWN]
        bars.bar(np.arange(len(_SHOWN)) + n * width, values, width, label=name, color=plt.cm.tab20(n % 20))
    bars.set_xticks(np.arange(len(_SHOWN)) + 0.4 - width / 2, _SHOWN)
    bars.set_ylabel("relative to the best ranking")
    bars.legend(fontsize=7, ncol=1, loc="center left", bbox_to_anchor=(-0.27, 0.5))
    fig.suptitle("Street photo → catalogue (held-out test photos): green = a garment the query wears", fontsize=11)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
