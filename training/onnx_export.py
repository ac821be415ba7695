"""Export a version's backbone to ONNX (fp32, and int8 calibrated on real photos) as part of the version.

    stylestream export-onnx VERSION                      # a published version (or `default`, the packaged one)
    stylestream export-onnx default --int8-calibration /work/data/clothing/manifest.jsonl

The graph is the served path from the staged batch on: uint8 pixels → normalisation → backbone → pooled
features (``torch.onnx.export``, TorchScript exporter, opset 17, dynamic batch axis). It is checked against
PyTorch before it is kept. The trainer exports every version it publishes (``Registry.publish(build=...)``);
this command adds the artifacts to versions published before, or without, them.

int8 is static quantisation (QDQ, per-channel weights, MinMax activations) calibrated on photos of the
manifest's train split; it is kept only when its category mAP on that manifest's test split (text silent) is
within ``INT8_MAX_MAP_DROP`` of the fp32 artifact's, and both figures are recorded in ``onnx.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from serving.checkpoint import WEIGHTS_FILE
from serving.models import DynamicCNN
from serving.onnx_backbone import FILES, INPUT, MANIFEST_FILE, OUTPUT, OnnxBackbone
from serving.registry import Entry, file_checksum, recorded_checksums, write_checksums
from streamcore.extras import needs

log = logging.getLogger(__name__)

OPSET = 17
#: Largest drop of real-photo category mAP at which the int8 artifact is still offered.
INT8_MAX_MAP_DROP = 0.01
#: Largest difference between PyTorch's and the exported graph's features accepted at export.
_EXPORT_TOLERANCE = 1e-3


class _PixelsToFeatures(nn.Module):
    """What the artifact computes: the staged uint8 batch → normalised → backbone → pooled features."""

    def __init__(self, model: DynamicCNN) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.preprocess = model.preprocess

    def forward(self, images: Tensor) -> Tensor:
        return self.backbone(self.preprocess(images))


def export_backbone(model: DynamicCNN, path: Path) -> None:
    """Write ``model``'s preprocessing + backbone to ``path`` and check it against PyTorch.

    Raises:
        ValueError: the exported graph's features differ from PyTorch's.
    """
    # The wrapper in eval mode too: the exporter restores the wrapper's mode on every submodule afterwards.
    module = _PixelsToFeatures(model.cpu()).eval()
    size = model.preprocess.image_size
    example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        # The TorchScript exporter writes one self-contained file at opset 17; the torch.export one needs
        # opset 18 for this graph, splits the weights into a second file and takes 5x longer. The tracer's
        # warnings are about the resize branch, which staged batches (already at the side) never take.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), opset_version=OPSET, dynamo=False, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    # A malformed graph (wrong opset, dangling inputs) is refused here, with the checker's reason, before any
    # runtime session is built from it.
    onnx.checker.check_model(str(path), full_check=True)
    check = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = module(check)
    got = OnnxBackbone(path, device=torch.device("cpu"), threads=1)(check)
    error = float((got - expected).abs().max())
    if not error <= _EXPORT_TOLERANCE * max(1.0, float(expected.abs().max())):
        raise ValueError(f"exported backbone differs from PyTorch by {error:.3g}")


def quantize_int8(fp32: Path, out: Path, photos: np.ndarray, *, batch: int = 16) -> None:
    """Static int8 quantisation of an exported backbone, activations calibrated on ``photos`` (uint8 NCHW)."""
    with needs("cpu", "gpu"):
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process

    class Photos(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{INPUT: photos[i: i + batch]} for i in range(0, len(photos), batch)])

        def get_next(self) -> dict | None:
            return next(self._batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))  # shape inference + graph optimisation first, as advised
        quantize_static(str(prepared), str(out), Photos(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)


def category_map(model: DynamicCNN, backbone: OnnxBackbone, photos: np.ndarray, truth: np.ndarray,
                 *, batch: int = 32) -> float:
    """Category mAP (text silent) of ``model``'s head on ``backbone``'s features of ``photos``."""
    from training.metrics import mean_average_precision

    scores = []
    with torch.inference_mode():
        for start in range(0, len(photos), batch):
            out = model.classify(backbone(torch.from_numpy(photos[start: start + batch]))).categories.float()
            scores.append(torch.sigmoid(out) if model.config.multi else torch.softmax(out, 1))
    return mean_average_precision(torch.cat(scores), torch.from_numpy(truth))


def split_photos(manifest: Path, split: str, side: int, *, count: int | None = None,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 photos of one split of a manifest (``count`` drawn, or all) at ``side``, and their categories."""
    from serving.ontology import load_ontology
    from training.real.data import split_records, targets
    from training.real.images import load_records
    from training.real.manifest import read_manifest

    ontology = load_ontology()
    records = split_records(read_manifest(manifest, ontology))[split]
    if count is not None and count < len(records):
        rows = np.random.default_rng(seed).choice(len(records), count, replace=False)
        records = [records[i] for i in sorted(rows)]
    photos, errors = load_records(records, side, threads=os.cpu_count() or 1, desc=f"{split} photos")
    keep = [i for i, e in enumerate(errors) if not e]
    return photos[keep], targets([records[i] for i in keep], ontology)[0][keep]


def build_artifacts(directory: Path, *, calibration: Path | None = None, calibration_photos: int = 256) -> dict:
    """Export the backbone of the checkpoint in ``directory`` (and its int8 form when ``calibration`` names a
    manifest) next to its weights, then list them in ``onnx.json`` (written atomically) and record its
    checksum in the version's ``SHA256`` (last).

    Raises:
        ValueError: the version's files do not match their checksums, or the export does not match PyTorch.
    """
    directory = Path(directory)
    model = Entry(directory.name, directory).load()  # every recorded checksum verified first
    manifest = {"weights_sha256": recorded_checksums(directory)[WEIGHTS_FILE], "opset": OPSET,
                "input": {"name": INPUT, "dtype": "uint8", "shape": ["batch", 3, *[model.preprocess.image_size] * 2]},
                "output": {"name": OUTPUT, "dtype": "float32", "shape": ["batch", model.backbone.out_features]},
                "torch": torch.__version__, "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "artifacts": {}}
    fp32 = directory / FILES["onnx"]
    _atomic(fp32, lambda tmp: export_backbone(model, tmp))
    manifest["artifacts"]["onnx"] = {"file": fp32.name, "sha256": file_checksum(fp32), "bytes": fp32.stat().st_size}
    if calibration is not None:
        int8 = _int8(model, directory, fp32, calibration, calibration_photos)
        if int8 is not None:
            manifest["artifacts"]["onnx_int8"] = int8
        else:
            manifest["int8_refused"] = True
    _atomic(directory / MANIFEST_FILE, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n"))
    write_checksums(directory)  # a version loads only while onnx.json matches what SHA256 records
    return manifest


def _int8(model: DynamicCNN, directory: Path, fp32: Path, calibration: Path, count: int) -> dict | None:
    """The int8 artifact's entry, or None (and no file) when its real-photo mAP drops too far."""
    side = model.preprocess.image_size
    photos, _ = split_photos(calibration, "train", side, count=count)
    path = directory / FILES["onnx_int8"]
    _atomic(path, lambda tmp: quantize_int8(fp32, tmp, photos))
    test, truth = split_photos(calibration, "test", side)
    cpu = torch.device("cpu")
    scores = {kind: category_map(model, OnnxBackbone(p, device=cpu, kind=kind), test, truth)
              for kind, p in (("onnx", fp32), ("onnx_int8", path))}
    check = {"calibration": {"manifest": f"{calibration.parent.name}/{calibration.name}", "split": "train", "photos": len(photos),
                             "method": "static QDQ, per-channel int8 weights, MinMax uint8 activations"},
             "test_photos": len(test), "category_map_fp32": round(scores["onnx"], 4),
             "category_map_int8": round(scores["onnx_int8"], 4)}
    log.info("int8 backbone: %s", check)
    if scores["onnx_int8"] < scores["onnx"] - INT8_MAX_MAP_DROP:
        path.unlink()
        log.warning("int8 refused: category mAP %.4f vs %.4f fp32", scores["onnx_int8"], scores["onnx"])
        return None
    return {"file": path.name, "sha256": file_checksum(path), "bytes": path.stat().st_size, **check}


def _atomic(path: Path, write) -> None:
    """``write(tmp)`` then rename over ``path``: a reader sees the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def build_or_skip(directory: Path) -> None:
    """:func:`build_artifacts` for a version being published: a failed export leaves the version without the
    artifact (it serves on PyTorch eager), never unpublished."""
    try:
        build_artifacts(directory)
    except Exception as exc:  # noqa: BLE001 - the version stays publishable; eager serves it
        log.warning("ONNX export failed (%s: %s): the version serves on PyTorch eager", type(exc).__name__, exc)
        for leftover in (MANIFEST_FILE, *FILES.values()):
            (Path(directory) / leftover).unlink(missing_ok=True)


def main(argv: list[str] | None = None, *, model_dir: Path | None = None) -> int:
    """``stylestream export-onnx``: add the exported backbone (and int8 form) to a version."""
    from serving.registry import DEFAULT_MODEL_DIR, Registry
    from streamcore.helptext import parser_options  # the help as `stylestream ... --help` shows it

    parser = argparse.ArgumentParser(**parser_options("stylestream export-onnx", main.__doc__))
    parser.add_argument("version", help="a published version, or 'default' for the packaged model")
    parser.add_argument("--model-dir", type=Path, default=model_dir, help="the registry (default: the setting)")
    parser.add_argument("--int8-calibration", type=Path, help="a manifest of real photos: calibrate int8 on its "
                        "train split, check its mAP on its test split")
    parser.add_argument("--calibration-photos", type=int, default=256)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.version == "default":
        directory = DEFAULT_MODEL_DIR
    else:
        try:
            directory = Registry(args.model_dir or Path("./models")).get(args.version).path
        except (KeyError, ValueError) as exc:  # not published, or not a version name: the command line is wrong
            parser.error(str(exc.args[0] if exc.args else exc))
    manifest = build_artifacts(directory, calibration=args.int8_calibration,
                               calibration_photos=args.calibration_photos)
    print(json.dumps({"version": args.version, "path": str(directory), **manifest["artifacts"]}, indent=2))
    return 0
