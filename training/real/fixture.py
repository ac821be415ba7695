"""The committed fixture: ~100 downscaled CC0 photos of the clothing dataset, for tests and the demo.

Rebuilt with ``python -m training.real.fixture CLOTHING_DATASET_DIR``: photos of the dataset's *test*
split (never trained on), the same number per category, longer side 320 px, JPEG quality 85, with a
manifest of their labels. See ``training/real/data/fixture/ATTRIBUTION.md``.
"""

from __future__ import annotations

import argparse
import io
import random
from collections import defaultdict
from pathlib import Path

from PIL import Image

from training.real.importers import import_clothing_dataset
from training.real.manifest import Record, read_manifest, write_manifest

FIXTURE_DIR = Path(__file__).parent / "data" / "fixture"
FIXTURE_MANIFEST = FIXTURE_DIR / "manifest.jsonl"


def fixture_records(ontology) -> list[Record]:
    """The fixture's records (absolute image paths), in manifest order."""
    return read_manifest(FIXTURE_MANIFEST, ontology)


def _downscale(path: Path, side: int, quality: int) -> bytes:
    with Image.open(path) as img:
        img = img.convert("RGB")
        img.thumbnail((side, side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        img.save(out, "JPEG", quality=quality, optimize=True)
        return out.getvalue()


def build(root: Path, out: Path = FIXTURE_DIR, *, count: int = 100, side: int = 320, quality: int = 85,
          seed: int = 0) -> int:
    """Write the fixture from the clothing dataset at ``root``; returns the number of photos."""
    by_category: dict[str, list[Record]] = defaultdict(list)
    for record in import_clothing_dataset(root).records:
        if record.split_of() == "test":
            by_category[record.categories[0]].append(record)
    rng = random.Random(seed)
    chosen: list[Record] = []
    while len(chosen) < count and any(by_category.values()):
        for name in sorted(by_category):
            if by_category[name] and len(chosen) < count:
                chosen.append(by_category[name].pop(rng.randrange(len(by_category[name]))))
    (out / "images").mkdir(parents=True, exist_ok=True)
    kept = []
    for record in chosen:
        name = Path(record.image).name
        (out / "images" / name).write_bytes(_downscale(root / record.image, side, quality))
        kept.append(record.model_copy(update={"image": f"images/{name}", "split": "test"}))
    return write_manifest(kept, out / "manifest.jsonl")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.real.fixture", description=__doc__.splitlines()[0])
    parser.add_argument("clothing_dataset", type=Path, help="a checkout of alexeygrigorev/clothing-dataset")
    parser.add_argument("--count", type=int, default=100)
    args = parser.parse_args(argv)
    print(f"fixture: {build(args.clothing_dataset, count=args.count)} photos in {FIXTURE_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
