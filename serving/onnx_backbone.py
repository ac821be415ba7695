"""The served backbone through ONNX Runtime: a version's exported artifact, verified, as a pixels → features call.

A version may carry its backbone exported to ONNX (``training.onnx_export``): ``backbone.onnx`` (fp32)
and, where its real-photo mAP stayed within 0.01 of fp32, ``backbone.int8.onnx``, both listed with their
SHA-256 and the weights checksum they were built from in ``onnx.json`` (itself listed in the version's
``SHA256``: checked here before it is read, so every served byte is covered). The artifact takes the uint8
``[B, 3, S, S]`` batch the predictor stages (normalisation is inside the graph) and gives the pooled
features; the head stays in PyTorch (its hint routing is per sample, and it costs < 0.3% of a batch).

Which runtime serves is the ``runtime`` setting. A missing artifact, or a host without onnxruntime, serves
PyTorch eager; an artifact that does not match its checksum, or was built from other weights, refuses the
whole version (a hot-swap keeps the old one serving), as corrupt weights do.

On a CPU a batch is run in one of two ways (the ``cpu_parallelism`` setting): ``images`` gives each thread
whole images, one at a time from the batch, through a one-thread session (a thread that finishes takes the
next image, so a core lent for a moment to another process delays one image, not every operator of the
batch); ``ops`` runs the batch as one call whose every operator is split across the threads. A batch with
fewer images than threads always runs as ``ops``, the lower latency for a lone image.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from serving.checkpoint import WEIGHTS_FILE
from serving.registry import CHECKSUM_FILE, ONNX_MANIFEST_FILE, file_checksum, recorded_checksums
from streamcore.extras import install_hint, needs

log = logging.getLogger(__name__)

#: What lists a version's exported artifacts (written after them: a version without it has none).
MANIFEST_FILE = ONNX_MANIFEST_FILE
#: Runtime setting → the artifact it serves, in order of preference.
ARTIFACTS = {"onnx": ("onnx",), "onnx_int8": ("onnx_int8", "onnx"), "auto": ("onnx",)}
FILES = {"onnx": "backbone.onnx", "onnx_int8": "backbone.int8.onnx"}
INPUT, OUTPUT = "images", "features"
#: Execution providers on a CUDA device (those the installed onnxruntime has). TensorRT's is left to the GPU
#: benchmark: it builds an engine per new batch shape, seconds each, in the serving path.
_CUDA_PROVIDERS = ("CUDAExecutionProvider",)


def onnxruntime_installed() -> bool:
    """Whether ``onnxruntime`` can be imported (without importing it)."""
    return importlib.util.find_spec("onnxruntime") is not None


def read_manifest(directory: Path) -> dict | None:
    """A version's ``onnx.json`` checked against its ``SHA256`` and its weights; None when it has none.

    Raises:
        ValueError: does not match the checksum ``SHA256`` records, unreadable, or built from other weights than
            the version's.
    """
    path = Path(directory) / MANIFEST_FILE
    if not path.exists():
        return None
    recorded = recorded_checksums(directory)
    try:
        raw = path.read_bytes()  # the bytes checked are the bytes parsed: a rewrite in between cannot slip in
    except OSError as exc:
        raise ValueError(f"{path}: unreadable artifact list ({type(exc).__name__}: {exc})") from None
    if MANIFEST_FILE in recorded and hashlib.sha256(raw).hexdigest() != recorded[MANIFEST_FILE]:
        raise ValueError(f"{path}: checksum mismatch (not what {CHECKSUM_FILE} records)")
    try:
        manifest = json.loads(raw)
        built_from = manifest["weights_sha256"]
        artifacts = dict(manifest["artifacts"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: unreadable artifact list ({type(exc).__name__}: {exc})") from None
    if built_from != recorded[WEIGHTS_FILE]:
        raise ValueError(f"{path}: the artifacts were built from other weights than the version's")
    return {**manifest, "artifacts": artifacts}


def verified_artifact(directory: Path, kind: str) -> Path | None:
    """The artifact ``kind`` (``onnx`` or ``onnx_int8``) of a version after its checksum is verified; None
    when the version has none.

    Raises:
        ValueError: listed but missing, or its bytes do not match the listed checksum.
    """
    manifest = read_manifest(directory)
    listed = None if manifest is None else manifest["artifacts"].get(kind)
    if listed is None:
        return None
    path = Path(directory) / FILES[kind]
    if not path.exists():
        raise ValueError(f"{path} is listed in {MANIFEST_FILE} but missing")
    if file_checksum(path) != listed.get("sha256"):
        raise ValueError(f"{path}: checksum mismatch")
    return path


class OnnxBackbone:
    """One ONNX Runtime session of an exported backbone; called with the staged uint8 batch."""

    def __init__(self, path: Path, *, device: torch.device, kind: str = "onnx", threads: int | None = None,
                 providers: list[str] | None = None, parallelism: Literal["images", "ops"] = "images") -> None:
        """``providers``: ONNX Runtime's execution providers to try first (default: CUDA's on a CUDA device).
        ``parallelism``: how a CPU batch uses the ``threads`` (module docstring)."""
        with needs("cpu", "gpu"):
            import onnxruntime as ort

        threads = threads or torch.get_num_threads()
        available = ort.get_available_providers()
        wanted = providers if providers is not None else _CUDA_PROVIDERS if device.type == "cuda" else ()
        wanted = [p for p in wanted if p in available and p != "CPUExecutionProvider"]
        self.session = _session(ort, path, threads, [*wanted, "CPUExecutionProvider"])
        self.kind = kind
        self.device = device
        #: Whether inputs and outputs stay on the GPU (bound by pointer, no host copies).
        self.on_device = device.type == "cuda" and self.session.get_providers()[0] != "CPUExecutionProvider"
        self.providers = self.session.get_providers()
        self._features = int(self.session.get_outputs()[0].shape[1])
        self.parallelism = parallelism if threads > 1 and not self.on_device else "ops"
        self.threads = threads
        # One session serves every thread: with one intra-op thread a run computes on its caller's thread,
        # and ONNX Runtime allows concurrent runs of a session.
        self._single = _session(ort, path, 1, ["CPUExecutionProvider"]) if self.parallelism == "images" else None
        self._pool = ThreadPoolExecutor(threads, "onnx-image") if self._single is not None else None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, S, S]`` (on the predictor's device) → float32 features ``[B, F]`` on that device."""
        if self.on_device:
            return self._bound(images)
        pixels = images.cpu().contiguous().numpy()
        if self._pool is None or len(pixels) < self.threads:
            features = self.session.run([OUTPUT], {INPUT: pixels})[0]
        else:
            features = np.concatenate(list(self._pool.map(partial(self._one, pixels), range(len(pixels)))))
        return torch.from_numpy(features).to(self.device)

    def _one(self, pixels: np.ndarray, index: int) -> np.ndarray:
        return self._single.run([OUTPUT], {INPUT: pixels[index: index + 1]})[0]

    def _bound(self, images: torch.Tensor) -> torch.Tensor:
        images = images.contiguous()
        out = torch.empty((len(images), self._features), dtype=torch.float32, device=images.device)
        index = images.device.index or 0
        binding = self.session.io_binding()
        binding.bind_input(INPUT, "cuda", index, np.uint8, tuple(images.shape), images.data_ptr())
        binding.bind_output(OUTPUT, "cuda", index, np.float32, tuple(out.shape), out.data_ptr())
        # ONNX Runtime runs on its own stream: the batch must be complete on torch's first.
        torch.cuda.current_stream(images.device).synchronize()
        self.session.run_with_iobinding(binding)  # synchronises its stream before returning
        return out


def _session(ort, path: Path, threads: int, providers: list[str]):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Idle pool threads sleep, as torch's OpenMP threads do here (streamcore.runtime): spinning ones
    # take the cores the decode threads need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=providers)


def load_backbone(directory: Path, runtime: str, device: torch.device, *,
                  parallelism: Literal["images", "ops"] = "images") -> OnnxBackbone | None:
    """The version's backbone through ONNX Runtime as ``runtime`` asks; None for PyTorch eager (the setting,
    a CUDA device under ``auto``, no artifact, or no onnxruntime).

    Raises:
        ValueError: the artifact is corrupt or from other weights (the version must be refused).
    """
    if runtime == "torch" or (runtime == "auto" and device.type != "cpu"):
        return None
    for kind in ARTIFACTS[runtime]:
        path = verified_artifact(directory, kind)
        if path is None:
            if kind != "onnx":
                log.warning("%s has no %s artifact: trying the next runtime", directory.name, kind)
            continue
        if not onnxruntime_installed():
            log.warning("onnxruntime is not installed (%s): %s serves on PyTorch eager", install_hint("cpu", "gpu"),
                        directory.name)
            return None
        return OnnxBackbone(path, device=device, kind=kind, parallelism=parallelism)
    log.info("%s has no exported backbone (stylestream export-onnx builds it): PyTorch eager", directory.name)
    return None
