"""``stylestream train --data MANIFEST``: train the real-photo model, write a checkpoint and its reports.

    stylestream train --data clothing.jsonl --data co_parsing.jsonl --out models/real \\
        --report reports/real_photos.json --table2 reports/table2_real.json --seeds 5

``--data`` takes a JSONL manifest or a folder per category (:mod:`training.real.manifest`), repeatable.
The checkpoint is the registry's layout (``stylestream promote DIR`` serves it); its ``metrics.json``
holds the held-out scores. ``--table2`` also runs Table II on the same photos and serves its winner
unless ``--head`` says otherwise.

Photos that fail to load (missing, unreadable, a box outside the photo) are logged and left out, and their
count per split is kept in ``config.json``; a split where none loaded, or more than ``--max-missing`` of them
failed, stops the run before any training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from serving.models.heads import HEADS
from training.real.finetune import TuneConfig
from training.real.pipeline import RealConfig

#: Table II's winner on real photos: the head with the best validation-selected score averaged over the
#: category and sub-category levels with mined hints and silent text (see ``pick_head``).
DEFAULT_HEAD = "fusion"
#: Blocks of each trunk ``--cut`` can split at (``--cut`` = the count fine-tunes only the head convolution).
TRUNK_BLOCKS = {"efficientnet_lite0": 16, "efficientnet_lite2": 21}
#: The smallest input a trunk's five halvings leave a pixel of.
MIN_IMAGE_SIZE = 32


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``low``, checked before any photo loads."""
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        return value
    return check


def _share(text: str) -> float:
    """An argparse type: a share from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a share between 0 and 1")
    return value


def _device(text: str) -> str:
    """An argparse type: ``auto`` (CUDA when this machine has it, else the CPU), ``cpu`` or a CUDA device that
    is there, checked before any photo loads."""
    import torch

    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: only cpu and cuda devices train here")
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has no such CUDA device")
    return str(device)


def parse(argv: list[str] | None) -> argparse.Namespace:
    from streamcore.helptext import parser_options  # the help as `stylestream ... --help` shows it

    parser = argparse.ArgumentParser(**parser_options("stylestream train --data", __doc__))
    parser.add_argument("--data", type=Path, action="append", required=True, help="manifest (JSONL) or folder")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument("--head", default=None, choices=sorted(HEADS),
                        help=f"served head (default: Table II's winner, else {DEFAULT_HEAD})")
    parser.add_argument("--backbone", default=RealConfig.backbone, choices=sorted(TRUNK_BLOCKS),
                        help="pretrained trunk (Lite2 needs the trunks extra; 1.6x Lite0's CPU per photo)")
    parser.add_argument("--image-size", type=_at_least(MIN_IMAGE_SIZE), default=RealConfig.image_size,
                        help=f"photo side in pixels (at least {MIN_IMAGE_SIZE})")
    parser.add_argument("--epochs", type=_at_least(1), default=TuneConfig.epochs, help="fine-tuning epochs")
    parser.add_argument("--cut", type=_at_least(0), default=TuneConfig.cut,
                        help="first trunk block that is fine-tuned (0 to the trunk's block count: "
                        + ", ".join(f"{k} {v}" for k, v in TRUNK_BLOCKS.items()) + ")")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=TuneConfig.augment,
                        help="fine-tune on photos redrawn each step (frame, aspect, light); --no-augment reads cached "
                        "activations instead: faster, for short fine-tunes of the last blocks")
    parser.add_argument("--negatives", type=_at_least(0), default=RealConfig.negatives, help="drawn no-garment images")
    parser.add_argument("--max-missing", type=_share, default=RealConfig.max_missing,
                        help="largest share of a split's photos that may fail to load (logged, left out and counted "
                        f"in config.json) before the run is refused (default {RealConfig.max_missing})")
    parser.add_argument("--hint-dropout", type=float, help="served head: share of samples trained without hints "
                        f"(default: Table II's choice, else {RealConfig.hint_dropout})")
    parser.add_argument("--route-threshold", type=float, help="dynamic heads: image probability that opens a range "
                        f"(default: Table II's choice, else {RealConfig.route_threshold})")
    parser.add_argument("--trunk-from", type=Path, help="reuse this checkpoint's fine-tuned trunk (same --image-size "
                        "and --cut) instead of fine-tuning: retrains the head only")
    parser.add_argument("--head-street-repeat", type=int, default=RealConfig.head_street_repeat,
                        help="street photos drawn this many times per epoch when the served head trains")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", type=_device, default="auto",
                        help="where the trunk is fine-tuned: auto (CUDA when there is one), cpu, cuda, cuda:N")
    parser.add_argument("--cache-dir", type=Path, default=Path("cache/real"),
                        help="keeps the frozen trunk's activations for reruns on the same photos")
    parser.add_argument("--report", type=Path, help="write the real-photo report (JSON + PNG) here")
    parser.add_argument("--table2", type=Path, help="also run Table II on these photos and write it here")
    parser.add_argument("--seeds", type=_at_least(1), default=5, help="Table II seeds")
    args = parser.parse_args(argv)
    if args.cut > TRUNK_BLOCKS[args.backbone]:
        parser.error(f"argument --cut: {args.backbone} has {TRUNK_BLOCKS[args.backbone]} blocks, got {args.cut}")
    for path in [*args.data, *([args.trunk_from] if args.trunk_from else [])]:
        if not path.exists():
            parser.error(f"argument {'--data' if path in args.data else '--trunk-from'}: no such file or folder: {path}")
    return args


def pick_head(table: dict) -> str:
    """The head Table II's *validation* selection scored best (the test split chooses nothing)."""
    settings = table["settings"]
    candidates = [h for h in ("fusion", "dynamic_pruning", "dynamic_layers", "base") if h in settings]
    return max(candidates, key=lambda h: settings[h]["val_score"])


def main(argv: list[str] | None = None, *, command: str | None = None) -> int:
    """Train on real photos; see the module docstring. ``command``: what reports say produced them."""
    import torch

    from serving.checkpoint import save_checkpoint
    from serving.ontology import load_ontology
    from serving.registry import write_checksums
    from training.real.manifest import read_manifest
    from training.real.pipeline import prepare, scores, train_served

    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    command = command or " ".join(["stylestream train", *(argv if argv is not None else sys.argv[1:])])
    ontology = load_ontology()
    records = [r for path in args.data for r in read_manifest(path, ontology)]
    config = RealConfig(backbone=args.backbone, image_size=args.image_size, negatives=args.negatives, seed=args.seed,
                        cache_dir=args.cache_dir, head_street_repeat=args.head_street_repeat, max_missing=args.max_missing,
                        device=args.device,
                        tune=TuneConfig(cut=args.cut, epochs=args.epochs, augment=args.augment, seed=args.seed))
    torch.manual_seed(args.seed)
    started = time.monotonic()
    prepared = prepare(records, ontology, config, trunk_from=args.trunk_from)
    print(f"trunk ready in {time.monotonic() - started:.0f} s: {prepared.history}", file=sys.stderr)
    head, table, settings = args.head, None, {}
    if args.table2:
        from training.real.report import write_table2
        from training.real.table2 import run

        table = run(prepared, ontology, config, seeds=args.seeds)
        write_table2(args.table2, table, command=command)
        head = head or pick_head(table)
    head = head or DEFAULT_HEAD
    if table is not None and head in table["settings"]:
        settings = table["settings"][head]
        config = dataclasses.replace(config, hint_dropout=settings.get("hint_dropout", config.hint_dropout),
                                     route_threshold=settings.get("route_threshold", config.route_threshold))
    explicit = {k: v for k, v in (("hint_dropout", args.hint_dropout), ("route_threshold", args.route_threshold))
                if v is not None}
    config = dataclasses.replace(config, head=head, **explicit)
    model, history = train_served(prepared, ontology, config)
    metrics = scores(model, prepared, ontology)
    # What recipes are compared on: the test split is seen once, after the choice.
    validation = scores(model, prepared, ontology, split="val", conditions=("silent", "mention"))
    training = {"command": command, "config": _jsonable(dataclasses.asdict(config)),
                "photos": {name: len(recs) for name, recs in prepared.records.items()},
                "photos_dropped": prepared.dropped,
                "finetune": prepared.history, "head_fit": history, "table2_settings": settings,
                "validation": _jsonable(validation)}
    save_checkpoint(model.cpu(), args.out, config=training, metrics=metrics)
    write_checksums(args.out)
    if args.report:
        from training.real.report import write_real_report

        write_real_report(args.report, model, prepared, ontology, metrics, command=command)
    for kind, got in validation["silent"].items():
        print(f"validation {kind} (silent text): " + ", ".join(f"{k} {v:.3f}" for k, v in got.items()
                                                              if isinstance(v, float)), file=sys.stderr)
    street = metrics["silent"].get("street", {})
    print(f"{args.out}: head {head}, street mAP {street.get('mAP', float('nan')):.3f} (silent text)")
    return 0


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))
