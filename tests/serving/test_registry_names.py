"""The serving pointer is checked as a version name before it is joined to a registry path."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from serving.hotswap import ModelSlot
from serving.predict import Predictor
from serving.registry import Registry, check_version_name
from streamcore.metrics import StageMetrics
from streamcore.settings import Settings
from tests.support import publish_tiny


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """A registry with v1, and beside it a folder holding a complete, valid checkpoint (checksum + weights)."""
    registry = tmp_path / "models"
    publish_tiny(registry, "v1", seed=1)
    publish_tiny(tmp_path / "elsewhere", "loot", seed=2)
    return registry, tmp_path / "elsewhere" / "loot"


def _pointers(outside: Path) -> list[str]:
    return [str(outside), "../elsewhere/loot", "..", ".", "v1/..", ".hidden", "", "v1\x00", "a" * 129, "v1/"]


def test_names_are_checked_before_the_file_system(layout):
    registry, outside = layout
    assert check_version_name("v20261130T101500123456Z") and check_version_name("tiny.dynamic_layers:2")
    for pointer in _pointers(outside):
        with pytest.raises(ValueError, match="version names"):
            Registry(registry).get(pointer)
    assert Registry(registry).get("v1").path == registry / "v1"


def test_temp_folders_of_a_publish_are_never_versions(layout):
    registry, _ = layout
    shutil.copytree(registry / "v1", registry / ".publish-abc")  # a publish caught half-way
    assert Registry(registry).versions() == ["v1"]


def test_a_publish_removes_the_copies_killed_publishes_left_and_not_one_in_progress(layout, tmp_path):
    import os
    import time

    registry, _ = layout
    for name in (".publish-killed", ".publish-running"):
        shutil.copytree(registry / "v1", registry / name)
    hours_ago = time.time() - 2 * 3600
    os.utime(registry / ".publish-killed", (hours_ago, hours_ago))
    Registry(registry).publish(publish_tiny(tmp_path / "src", "v2", seed=3).path, name="v2")
    assert sorted(p.name for p in registry.iterdir()) == [".publish-running", "v1", "v2"]


def test_a_pointer_outside_the_registry_is_refused_and_v1_keeps_serving(layout):
    registry, outside = layout
    settings = Settings.named(model_dir=registry, device="cpu")
    slot = ModelSlot(settings, Predictor.load(settings, "v1"), StageMetrics("classify"))

    async def scenario() -> list[bool]:
        return [await slot.offer(pointer) for pointer in (str(outside), "../elsewhere/loot")]

    assert asyncio.run(scenario()) == [False, False]
    assert slot.current.version == "v1"
    assert slot.metrics.swaps.labels("failure")._value.get() == 2
