"""Start-up from the last good model: the registry's verified list, and the order of fallbacks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from serving.checkpoint import WEIGHTS_FILE
from serving.hotswap import ModelSlot, load_last_good
from serving.registry import VERIFIED_FILE, Registry, default_entry
from streamcore.metrics import StageMetrics
from streamcore.settings import Settings
from tests.support import publish_tiny


def _corrupt(entry_path: Path) -> None:
    data = bytearray((entry_path / WEIGHTS_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (entry_path / WEIGHTS_FILE).write_bytes(bytes(data))


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    for seed, name in enumerate(("v1", "v2", "v3")):
        publish_tiny(tmp_path, name, seed=seed)
    return Registry(tmp_path)


def _start(registry: Registry, pointer: str | None) -> tuple[str, set[str], float]:
    metrics = StageMetrics("classify")
    predictor, failed = load_last_good(Settings.named(model_dir=registry.root, device="cpu"), pointer, metrics)
    return predictor.version, failed, metrics.bad_model._value.get()


def test_the_verified_list_keeps_the_most_recent_last_and_ignores_garbage(registry):
    assert registry.verified() == []
    assert registry.mark_verified("v1") and registry.mark_verified("v2") and registry.mark_verified("v1")
    assert registry.verified() == ["v2", "v1"]
    assert (registry.root / VERIFIED_FILE).stat().st_mode & 0o777 == 0o644  # readable by classifiers of other users
    assert VERIFIED_FILE not in registry.versions()
    (registry.root / VERIFIED_FILE).write_text("{not json")
    assert registry.verified() == []
    (registry.root / VERIFIED_FILE).write_text('["v1", "../../etc", 7]')
    assert registry.verified() == ["v1"]


def test_a_registry_it_cannot_write_to_does_not_fail_the_worker(tmp_path):
    # Where the registry cannot be written (a read-only mount; here a path that is no directory), the
    # verified list stays as it is and the worker goes on.
    (tmp_path / "models").write_text("not a directory")
    unwritable = Registry(tmp_path / "models")
    assert unwritable.mark_verified("v1") is False
    assert unwritable.verified() == [] and list(tmp_path.iterdir()) == [tmp_path / "models"]


def test_a_good_pointer_serves_and_is_recorded_as_verified(registry):
    assert _start(registry, "v2") == ("v2", set(), 0)
    assert registry.verified() == ["v2"]


def test_a_corrupt_pointer_serves_the_last_good_version_not_the_newest(registry):
    registry.mark_verified("v1")  # served before; v2 was published but never served
    _corrupt(registry.root / "v3")
    assert _start(registry, "v3") == ("v1", {"v3"}, 1)


def test_without_a_verified_list_the_newest_valid_version_serves(registry):
    _corrupt(registry.root / "v3")
    assert _start(registry, "v3") == ("v2", {"v3"}, 1)
    assert _start(registry, None) == ("v2", {"v3"}, 0)  # no pointer: a bad newest is not a bad pointer


def test_the_packaged_default_serves_when_every_version_is_bad(registry):
    for name in ("v1", "v2", "v3"):
        _corrupt(registry.root / name)
    assert _start(registry, "v3") == (default_entry().version, {"v1", "v2", "v3"}, 1)


def test_a_pointer_to_a_version_that_is_not_there_is_a_bad_pointer(registry):
    assert _start(registry, "v9") == ("v3", {"v9"}, 1)


def test_a_live_swap_records_the_version_it_verified(registry):
    settings = Settings.named(model_dir=registry.root, device="cpu")
    predictor, _ = load_last_good(settings, "v1", StageMetrics("classify"))
    slot = ModelSlot(settings, predictor, StageMetrics("classify"), refused={"v3"})

    async def scenario():
        assert slot.offer("v3") is None  # failed at start-up: not tried again
        assert await slot.offer("v2")

    asyncio.run(scenario())
    assert registry.verified() == ["v1", "v2"]
