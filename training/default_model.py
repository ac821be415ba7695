"""The packaged default model: the real-photo model, served until the trainer promotes one, so labels are
right about photos from the first post.

It lives in ``serving/models/data/default/`` in the registry's own layout (``model.safetensors``,
``config.json``, ``metrics.json``, ``SHA256``, and the backbone exported for ONNX Runtime: ``backbone.onnx``,
``backbone.int8.onnx``, ``onnx.json``; docs/onnx-runtime.md) and is rebuilt, with ``reports/real_photos.json`` and
``reports/table2_real.json``, by one command from checkouts of the two public datasets::

    python -m training.default_model --clothing-dataset PATH --co-parsing PATH

(EfficientNet-Lite0 at 288 px, all but its first two blocks fine-tuned on the photos, Table II's winning head; see
``docs/real-photos.md``). ``--data MANIFEST`` trains on any other labelled photos instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamcore.runtime import tune_process

#: The input side the packaged model is trained at (measured against 224: docs/real-photos.md).
IMAGE_SIZE = 288


def main(argv: list[str] | None = None) -> int:
    """Import the datasets into manifests, train the real-photo model into the package, write its reports."""
    from serving.registry import DEFAULT_MODEL_DIR
    from training.real.cli import main as train_real
    from training.real.importers import import_clothing_dataset, import_co_parsing
    from training.real.manifest import write_manifest

    parser = argparse.ArgumentParser(prog="python -m training.default_model", description=main.__doc__)
    parser.add_argument("--clothing-dataset", type=Path, help="checkout of alexeygrigorev/clothing-dataset")
    parser.add_argument("--co-parsing", type=Path, help="checkout of bearpaw/clothing-co-parsing (0001-1004 read)")
    parser.add_argument("--data", type=Path, action="append", default=[], help="further manifests or folders")
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--reports", type=Path, default=Path("reports"), help="folder for the reports; '' for none")
    parser.add_argument("--cache-dir", type=Path, default=Path("cache/real"))
    parser.add_argument("--garment-crops", action="store_true",
                        help="also train on a region per large garment of each Co-Parsing training photo")
    args, rest = parser.parse_known_args(argv)
    data = list(args.data)
    for root, importer, name in ((args.clothing_dataset, import_clothing_dataset, "clothing_dataset"),
                                 (args.co_parsing, import_co_parsing, "co_parsing")):
        if root is not None:
            manifest = args.cache_dir / "manifests" / f"{name}.jsonl"
            report = importer(root, garment_crops=True) if args.garment_crops and name == "co_parsing" else importer(root)
            records = [r.model_copy(update={"image": str((root / r.image).resolve())}) for r in report.records]
            write_manifest(records, manifest)
            data.append(manifest)
    if not data:
        parser.error("give --clothing-dataset and --co-parsing (or --data MANIFEST)")
    forwarded = [a for path in data for a in ("--data", str(path))]
    forwarded += ["--out", str(args.out), "--cache-dir", str(args.cache_dir)]
    if "--image-size" not in rest:
        forwarded += ["--image-size", str(IMAGE_SIZE)]
    if str(args.reports) not in ("", "."):
        forwarded += ["--report", str(args.reports / "real_photos.json"), "--table2",
                      str(args.reports / "table2_real.json")]
    command = " ".join(["python -m training.default_model", *(argv if argv is not None else sys.argv[1:])])
    status = train_real([*forwarded, *rest], command=command)
    if status == 0:  # the ONNX backbone (and its int8 form, checked on the first manifest's photos) ship with it
        from training.onnx_export import build_artifacts

        build_artifacts(args.out, calibration=data[0])
    return status


if __name__ == "__main__":
    tune_process()  # as every `stylestream` command does; torch is not loaded yet (nothing above imports it)
    raise SystemExit(main())
