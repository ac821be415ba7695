"""What continuing the served head on corrections does, measured on validation photos only.

Half of the validation split's whole photos (by a hash of the file name) act as users' corrections (their true
labels, captions of the main text condition, mined); the other half are held out. The packaged model's head
continues on the corrections as the trainer continues it (:func:`training.real.retrain.continue_head`), with
and without the pull toward the starting head, at several learning rates; each candidate is scored by
category mAP on the held-out half (street photos and single garments apart, text silent and with captions)
and on the fixture, against the packaged model. Writes ``reports/trainer_corrections.json``::

    python -m training.real.corrections_probe --data clothing-dataset/manifest.jsonl \\
        --data clothing-co-parsing/manifest.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from serving.ontology import Ontology, load_ontology
from serving.registry import default_entry
from streamcore.reports import write_report
from training.data.benchmark import Split
from training.feedback import Example, to_split
from training.real.data import build_split, split_records
from training.real.gate import real_photo_map
from training.real.images import load_records
from training.real.manifest import read_manifest
from training.real.pipeline import STREET, category_probs
from training.real.retrain import RetrainConfig, continue_head, trunk_features
from training.real.scores import average_precisions

#: (anchor, learning rate) pairs tried; the trainer's setting is RetrainConfig's default.
GRID = [(anchor, lr) for anchor in (0.0, 1.0) for lr in (0.003, 0.01, 0.03)]


def _examples(manifests: list[Path], ontology: Ontology, size: int, split_name: str) -> tuple[list[Example], np.ndarray]:
    """Every whole photo of a split with a garment as a correction, and which of them are street photos."""
    records = [r for m in manifests for r in read_manifest(m, ontology)]
    chosen = [r for r in split_records(records)[split_name] if r.box is None and r.categories]
    images, errors = load_records(chosen, size, desc=f"{split_name} photos")
    keep = [i for i, e in enumerate(errors) if not e]
    chosen, images = [chosen[i] for i in keep], images[keep]
    split = build_split(chosen, images, ontology, condition="main", seed=0, heldout=False)
    examples = [Example(images[i], split.hint_categories[i], split.hint_attributes[i], split.categories[i],
                        split.subcategories[i], split.attributes[i], str(split.captions[i]),
                        hint_subcategories=split.hint_subcategories[i], post_id=Path(r.image).name)
                for i, r in enumerate(chosen)]
    return examples, np.array([r.source in STREET for r in chosen])


def _scores(model, held: Split, feats: torch.Tensor, street: np.ndarray, ontology: Ontology) -> dict:
    """Category mAP on the held-out photos (street and single garments, text silent and with captions), and on
    the fixture."""
    out = {"fixture_map": real_photo_map(model, ontology)}
    for text in ("silent", "captions"):
        probs = category_probs(model, held, feats, hints=text == "captions")
        for kind, rows in (("street", street), ("single_garment", ~street)):
            if not rows.any():
                continue
            aps = average_precisions(probs[rows], held.categories[rows], ontology.category_names)
            out[f"{kind}_map_{text}"] = float(np.nanmean(list(aps.values())))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", required=True, help="a manifest (repeatable)")
    parser.add_argument("--epochs", type=int, default=RetrainConfig.epochs)
    parser.add_argument("--split", default="val", help="the photos used (never the test split of a model's own data)")
    parser.add_argument("--out", type=Path, default=Path("reports/trainer_corrections.json"))
    args = parser.parse_args(argv)
    ontology, model = load_ontology(), default_entry().load()
    examples, street = _examples(args.data, ontology, model.config.preprocess.image_size, args.split)
    if len(examples) < 4:
        parser.error(f"{len(examples)} photos with a garment in the {args.split} split of {args.data}: too few")
    held = np.array([int(hashlib.sha256(e.post_id.encode()).hexdigest(), 16) % 2 == 0 for e in examples])
    train = [e for e, h in zip(examples, held) if not h]
    test = [e for e, h in zip(examples, held) if h]
    feats = trunk_features(model, test, device="cpu")  # one frozen trunk: the same features for every candidate
    split = to_split(test, images=False)
    rows = [{"candidate": "packaged", **_scores(model, split, feats, street[held], ontology)}]
    for anchor, lr in GRID:
        config = RetrainConfig(epochs=args.epochs, lr=lr, anchor=anchor)
        candidate, _ = continue_head(model, train, config, device="cpu")
        rows.append({"candidate": f"anchor {anchor:g}, lr {lr:g}", "anchor": anchor, "lr": lr,
                     **_scores(candidate, split, feats, street[held], ontology)})
        print(json.dumps(rows[-1]), flush=True)
    report = {"model_version": default_entry().version, "split": args.split, "corrections": len(train), "held_out": len(test),
              "held_out_street": int(street[held].sum()), "epochs": args.epochs, "rows": rows,
              "chosen": dataclasses.asdict(RetrainConfig())}
    write_report(args.out, report, command="python -m training.real.corrections_probe " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
