"""A version's ``SHA256`` covers everything that changes what it serves (weights, config, the ONNX manifest and
through it the exported backbones), in ``sha256sum``'s format, and every listed file is verified at load."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from serving import onnx_backbone
from serving.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from serving.onnx_backbone import MANIFEST_FILE
from serving.registry import (
    CHECKSUM_FILE,
    DEFAULT_MODEL_DIR,
    Registry,
    default_entry,
    recorded_checksums,
    verify_checksums,
    weights_checksum,
)
from tests.support import publish_tiny

#: The packaged version's name: labels and photo caches carry it, so covering more files must not change it.
PACKAGED_VERSION = "default-75edd29fd4d5"


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A registry holding one published tiny version, ``v1``."""
    publish_tiny(tmp_path / "models", "v1", seed=1)
    return tmp_path / "models"


@pytest.fixture
def packaged_copy(tmp_path: Path) -> Path:
    """The packaged default copied into a registry as version ``copy`` (config, weights, ONNX artifacts)."""
    shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / "models" / "copy")
    return tmp_path / "models"


def _sha256sum_check(directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sha256sum", "--check", "--quiet", CHECKSUM_FILE], cwd=directory, check=False,
                          capture_output=True, text=True, timeout=60)


def test_a_published_version_lists_the_weights_first_then_its_config(tiny):
    lines = (tiny / "v1" / CHECKSUM_FILE).read_text().splitlines()
    assert [line.split("  ", 1)[1] for line in lines] == [WEIGHTS_FILE, CONFIG_FILE]
    assert lines[0] == f"{weights_checksum(tiny / 'v1')}  {WEIGHTS_FILE}"
    assert list(verify_checksums(tiny / "v1", "v1")) == [WEIGHTS_FILE, CONFIG_FILE]


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="no sha256sum on this host")
def test_sha256sum_checks_a_published_version_and_the_packaged_one(tiny):
    for directory in (tiny / "v1", DEFAULT_MODEL_DIR):
        done = _sha256sum_check(directory)
        assert done.returncode == 0, done.stdout + done.stderr
    config = tiny / "v1" / CONFIG_FILE
    config.write_text(config.read_text().replace("{", "{ ", 1))  # same JSON, other bytes: sha256sum sees it too
    assert _sha256sum_check(tiny / "v1").returncode != 0


def test_the_packaged_default_verifies_every_served_file_and_keeps_its_name():
    recorded = verify_checksums(DEFAULT_MODEL_DIR, "default")
    assert list(recorded) == [WEIGHTS_FILE, CONFIG_FILE, MANIFEST_FILE]
    assert recorded[WEIGHTS_FILE] == weights_checksum(DEFAULT_MODEL_DIR)
    assert default_entry().version == PACKAGED_VERSION == f"default-{weights_checksum(DEFAULT_MODEL_DIR)[:12]}"


def _abstain_everything(config: dict) -> None:
    config["model"]["abstain_below"] = 0.999


def _other_route_threshold(config: dict) -> None:
    config["model"]["route_threshold"] = 0.01


@pytest.mark.parametrize("edit", [_abstain_everything, _other_route_threshold])
def test_a_tampered_config_is_refused(packaged_copy, edit):
    path = packaged_copy / "copy" / CONFIG_FILE
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config, indent=2))
    with pytest.raises(ValueError, match=r"^checkpoint copy: config\.json checksum mismatch$"):
        Registry(packaged_copy).get("copy").load()


def test_a_tampered_onnx_manifest_is_refused_by_the_loader_and_the_onnx_path(packaged_copy):
    path = packaged_copy / "copy" / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    del manifest["artifacts"]["onnx_int8"]  # would quietly serve fp32 where int8 was asked for
    path.write_text(json.dumps(manifest, indent=2))
    with pytest.raises(ValueError, match=r"^checkpoint copy: onnx\.json checksum mismatch$"):
        Registry(packaged_copy).get("copy").load()
    with pytest.raises(ValueError, match=r"onnx\.json: checksum mismatch"):
        onnx_backbone.verified_artifact(packaged_copy / "copy", "onnx")


@pytest.mark.parametrize("name", [CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE])
def test_a_missing_listed_file_is_refused(packaged_copy, name):
    (packaged_copy / "copy" / name).unlink()
    with pytest.raises(ValueError, match=rf"^checkpoint copy: {name} is listed in SHA256 but missing$"):
        Registry(packaged_copy).get("copy").load()


def test_a_legacy_single_digest_still_loads_with_one_warning(tiny, caplog):
    (tiny / "v1" / CHECKSUM_FILE).write_text(weights_checksum(tiny / "v1") + "\n")
    assert recorded_checksums(tiny / "v1") == {WEIGHTS_FILE: weights_checksum(tiny / "v1")}
    with caplog.at_level(logging.WARNING, logger="serving.registry"):
        for _ in range(2):  # a hot-swap loads the version again
            assert Registry(tiny).get("v1").load().config.backbone == "tiny"
    warned = [r.getMessage() for r in caplog.records if "not covered" in r.getMessage()]
    assert len(warned) == 1 and "config.json" in warned[0], caplog.text
    data = bytearray((tiny / "v1" / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (tiny / "v1" / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"^checkpoint v1: model\.safetensors checksum mismatch$"):
        Registry(tiny).get("v1").load()  # the legacy digest still guards the weights


@pytest.mark.parametrize("text", ["not a checksum\n", f"{'0' * 64}  {CONFIG_FILE}\n",
                                  f"{'0' * 64}  {WEIGHTS_FILE}\n{'0' * 64}  {WEIGHTS_FILE}\n",
                                  f"{'0' * 64}  ../{WEIGHTS_FILE}\n"],
                         ids=["garbage", "no-weights", "listed-twice", "outside-the-version"])
def test_a_malformed_checksum_file_is_refused(tiny, text):
    (tiny / "v1" / CHECKSUM_FILE).write_text(text)
    with pytest.raises(ValueError, match=r"^checkpoint v1: .*SHA256: "):
        Registry(tiny).get("v1").load()
