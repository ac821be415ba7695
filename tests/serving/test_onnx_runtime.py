"""The served backbone through ONNX Runtime: exported into the version, checksummed, verified at load, the same
labels as PyTorch eager, eager where the artifact or onnxruntime is missing, and hot-swaps as before."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from serving import onnx_backbone
from serving.checkpoint import WEIGHTS_FILE
from serving.hotswap import ModelSlot
from serving.onnx_backbone import FILES, MANIFEST_FILE
from serving.ontology import load_ontology
from serving.predict import Predictor
from serving.registry import DEFAULT_MODEL_DIR, file_checksum, recorded_checksums, write_checksums
from streamcore.metrics import StageMetrics
from streamcore.schemas import Hints, ScoredTerm
from streamcore.settings import Settings
from tests.support import publish_tiny
from training.metrics import mean_average_precision
from training.real.gate import fixture_photos

ONTOLOGY = load_ontology()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A registry with two exported tiny versions, and one published without the artifact."""
    root = tmp_path_factory.mktemp("registry")
    publish_tiny(root, "v1", seed=1, onnx=True)
    publish_tiny(root, "v2", seed=2, onnx=True)
    publish_tiny(root, "plain", seed=3)
    return root


@pytest.fixture
def registry_dir(exported: Path, tmp_path: Path) -> Path:
    shutil.copytree(exported, tmp_path / "models")
    return tmp_path / "models"


def _load(model_dir: Path, version: str, runtime: str = "auto") -> Predictor:
    return Predictor.load(Settings.named(model_dir=model_dir, device="cpu", runtime=runtime), version)


def _batch(size: int, n: int = 6) -> tuple[list[torch.Tensor], list[Hints | None]]:
    images = list(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(5)))
    hint = Hints(post_id="p", miner_version="t", categories=[ScoredTerm(term=ONTOLOGY.category_names[2], score=1.0)])
    return images, [hint if i % 2 else None for i in range(n)]


def test_an_exported_version_serves_on_onnx_runtime_with_eager_labels(registry_dir):
    manifest = json.loads((registry_dir / "v1" / MANIFEST_FILE).read_text())
    recorded = recorded_checksums(registry_dir / "v1")
    assert manifest["weights_sha256"] == recorded[WEIGHTS_FILE]
    assert recorded[MANIFEST_FILE] == file_checksum(registry_dir / "v1" / MANIFEST_FILE)  # covered once built
    assert manifest["artifacts"]["onnx"]["sha256"] == file_checksum(registry_dir / "v1" / FILES["onnx"])
    onnx, eager = _load(registry_dir, "v1"), _load(registry_dir, "v1", "torch")
    assert (onnx.runtime, eager.runtime) == ("onnx", "torch")
    images, hints = _batch(onnx.image_size)
    got, want = (p.infer(p.stage(images, hints)).table for p in (onnx, eager))
    assert np.abs(got - want).max() < 1e-4  # scores, indices, routes and hint columns of every level
    ids = [f"p{i}" for i in range(len(images))]
    assert [lab.categories for lab in onnx.predict(images, hints, ids, [0] * 6)] == \
        [lab.categories for lab in eager.predict(images, hints, ids, [0] * 6)]


def test_images_and_ops_parallelism_give_the_same_features(registry_dir):
    path = registry_dir / "v1" / FILES["onnx"]
    by_images = onnx_backbone.OnnxBackbone(path, device=torch.device("cpu"), threads=3, parallelism="images")
    by_ops = onnx_backbone.OnnxBackbone(path, device=torch.device("cpu"), threads=3, parallelism="ops")
    assert (by_images.parallelism, by_ops.parallelism) == ("images", "ops")
    single_runs = []
    by_images._single.run = _spy(by_images._single.run, single_runs)
    images = torch.stack(_batch(_load(registry_dir, "v1").image_size, n=7)[0])
    for n in (7, 3, 2, 1):  # fewer images than threads run as one call over every thread
        before = len(single_runs)
        got, want = by_images(images[:n]), by_ops(images[:n])
        assert got.shape == want.shape == (n, want.shape[1])
        assert torch.allclose(got, want, atol=1e-5)
        assert len(single_runs) - before == (n if n >= 3 else 0)
    one_thread = onnx_backbone.OnnxBackbone(path, device=torch.device("cpu"), threads=1, parallelism="images")
    assert one_thread.parallelism == "ops" and one_thread._single is None


def _spy(run, calls: list):
    def spied(*args, **kwargs):
        calls.append(len(args[1]["images"]))
        return run(*args, **kwargs)
    return spied


def test_the_setting_reaches_the_served_backbone(registry_dir):
    for parallelism in ("images", "ops"):
        settings = Settings.named(model_dir=registry_dir, device="cpu", cpu_parallelism=parallelism)
        backbone = Predictor.load(settings, "v1").backbone
        assert backbone.parallelism == (parallelism if backbone.threads > 1 else "ops")


@pytest.fixture(scope="module")
def default_predictors(tmp_path_factory) -> dict[str, Predictor]:
    empty = tmp_path_factory.mktemp("empty")
    return {runtime: Predictor.load(Settings.named(model_dir=empty, device="cpu", runtime=runtime))
            for runtime in ("auto", "torch")}


def test_the_packaged_default_carries_its_artifact_and_serves_on_onnx(default_predictors):
    assert onnx_backbone.verified_artifact(DEFAULT_MODEL_DIR, "onnx") is not None
    assert (default_predictors["auto"].runtime, default_predictors["torch"].runtime) == ("onnx", "torch")


@torch.inference_mode()
def _probabilities(predictor: Predictor, images: torch.Tensor, hints: list[Hints | None]) -> list[np.ndarray]:
    staged = predictor.stage(list(images), hints)
    model = predictor.model
    if predictor.backbone is not None:
        out = model.classify(predictor.backbone(staged.images), staged.hint_categories, staged.hint_attributes,
                             staged.hint_subcategories)
    else:
        out = model(model.preprocess(staged.images), staged.hint_categories, staged.hint_attributes,
                    staged.hint_subcategories)
    return [torch.sigmoid(t.float()).numpy() for t in (out.categories, out.subcategories, out.attributes)]


def test_real_photo_labels_are_the_same_on_both_runtimes(default_predictors):
    photos, _ = fixture_photos(ONTOLOGY)  # the 100 committed real photos
    hint = Hints(post_id="p", miner_version="t", categories=[ScoredTerm(term="jeans", score=1.0)])
    hints = [hint if i % 3 == 0 else None for i in range(len(photos))]
    onnx = _probabilities(default_predictors["auto"], photos, hints)
    eager = _probabilities(default_predictors["torch"], photos, hints)
    for got, want in zip(onnx, eager):
        assert np.abs(got - want).max() < 1e-3
    same_top = (onnx[0].argmax(1) == eager[0].argmax(1)).mean()
    assert same_top >= 0.999, f"top-1 category differs on {1 - same_top:.1%} of the photos"


def _flip_byte(path: Path) -> None:
    artifact = path / FILES["onnx"]
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))


def _garbage_with_its_checksum(path: Path) -> None:
    (path / FILES["onnx"]).write_bytes(b"not an onnx graph")
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    manifest["artifacts"]["onnx"]["sha256"] = file_checksum(path / FILES["onnx"])
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    write_checksums(path)  # SHA256 alone would refuse it: onnxruntime must too


def _other_weights(path: Path) -> None:
    shutil.copy(path.parent / "v1" / MANIFEST_FILE, path / MANIFEST_FILE)
    shutil.copy(path.parent / "v1" / FILES["onnx"], path / FILES["onnx"])
    write_checksums(path)  # SHA256 alone would refuse it: the manifest's weights checksum must too


def _manifest_edited(path: Path) -> None:
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    manifest["artifacts"] = {}  # only SHA256 tells: without it the version would quietly serve eager
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))


def _listed_but_missing(path: Path) -> None:
    (path / FILES["onnx"]).unlink()


def _unreadable_list(path: Path) -> None:
    (path / MANIFEST_FILE).write_text("{not json")
    write_checksums(path)


@pytest.mark.parametrize("corrupt", [_flip_byte, _garbage_with_its_checksum, _other_weights, _listed_but_missing,
                                     _unreadable_list, _manifest_edited])
def test_a_corrupt_artifact_is_refused_and_the_old_version_keeps_serving(registry_dir, corrupt):
    corrupt(registry_dir / "v2")
    slot = ModelSlot(Settings.named(model_dir=registry_dir, device="cpu"), _load(registry_dir, "v1"), StageMetrics("classify"))

    async def scenario():
        assert await slot.offer("v2") is False
        assert slot.offer("v2") is None  # refused once

    asyncio.run(scenario())
    assert (slot.current.version, slot.current.runtime) == ("v1", "onnx") and "v2" in slot.refused
    images, hints = _batch(slot.current.image_size, 2)
    assert [lab.model_version for lab in slot.current.predict(images, hints, ["a", "b"], [0, 0])] == ["v1", "v1"]


def test_eager_serves_where_the_artifact_or_onnxruntime_is_missing(registry_dir, monkeypatch):
    assert _load(registry_dir, "plain").runtime == "torch"
    assert _load(registry_dir, "plain", "onnx").runtime == "torch"
    assert _load(registry_dir, "v1", "onnx_int8").runtime == "onnx"  # no int8 artifact: the fp32 one
    _flip_byte(registry_dir / "v2")
    assert _load(registry_dir, "v2", "torch").runtime == "torch"  # eager never reads the artifact
    monkeypatch.setattr(onnx_backbone, "onnxruntime_installed", lambda: False)
    predictor = _load(registry_dir, "v1")
    images, hints = _batch(predictor.image_size, 2)
    assert predictor.runtime == "torch" and len(predictor.predict(images, hints, ["a", "b"], [0, 0])) == 2


def test_a_hot_swap_between_exported_versions_under_load(registry_dir):
    slot = ModelSlot(Settings.named(model_dir=registry_dir, device="cpu"), _load(registry_dir, "v1"), StageMetrics("classify"))
    images, hints = _batch(slot.current.image_size, 8)
    ids = [f"p{i}" for i in range(len(images))]

    async def scenario() -> list[str]:
        loop, seen = asyncio.get_running_loop(), []
        task = slot.offer("v2")
        deadline = time.monotonic() + 120
        while seen.count("v2") < 3:  # batches keep coming while v2 loads, and after it swapped in
            assert time.monotonic() < deadline, f"v2 never served: {seen}"
            labels = await loop.run_in_executor(None, slot.current.predict, images, hints, ids, [0] * len(ids))
            assert len({lab.model_version for lab in labels}) == 1, "a batch mixed versions"
            seen.append(labels[0].model_version)
        assert await task
        return seen

    seen = asyncio.run(scenario())
    first_new = seen.index("v2")
    assert seen[0] == "v1" and set(seen[first_new:]) == {"v2"}
    assert (slot.current.version, slot.current.runtime) == ("v2", "onnx")
    assert slot.metrics.model._value == {"version": "v2", "head": "dynamic_layers", "runtime": "onnx"}


def test_export_onnx_adds_the_artifact_to_a_version_published_without_it(registry_dir):
    from training.onnx_export import main

    assert _load(registry_dir, "plain").runtime == "torch"
    assert main(["plain", "--model-dir", str(registry_dir)]) == 0
    assert _load(registry_dir, "plain").runtime == "onnx"


def test_the_packaged_int8_artifact_keeps_real_photo_map_within_001(default_predictors, tmp_path):
    int8 = Predictor.load(Settings.named(model_dir=tmp_path, device="cpu", runtime="onnx_int8"))
    assert int8.runtime == "onnx_int8"
    photos, truth = fixture_photos(ONTOLOGY)
    fp32_map, int8_map = (mean_average_precision(torch.from_numpy(_probabilities(p, photos, [None] * len(photos))[0]),
                                                 truth) for p in (default_predictors["auto"], int8))
    assert int8_map >= fp32_map - 0.01, f"int8 mAP {int8_map:.4f} vs fp32 {fp32_map:.4f}"
