"""Hot-swap: good checkpoints are swapped in, bad ones refused with the old model still serving."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
from pathlib import Path

import pytest

from serving.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from serving.hotswap import ModelSlot
from serving.predict import Predictor
from serving.registry import write_checksums
from streamcore.metrics import StageMetrics
from streamcore.settings import Settings
from tests.support import publish_tiny


@pytest.fixture
def registry_dir(tmp_path: Path) -> Path:
    publish_tiny(tmp_path, "v1", seed=1)
    publish_tiny(tmp_path, "v2", seed=2)
    return tmp_path


def _slot(model_dir: Path) -> ModelSlot:
    settings = Settings.named(model_dir=model_dir, device="cpu")
    return ModelSlot(settings, Predictor.load(settings, "v1"), StageMetrics("classify"))


def _count(slot: ModelSlot, result: str) -> float:
    return slot.metrics.swaps.labels(result)._value.get()


def test_a_good_version_is_swapped_in(registry_dir):
    slot = _slot(registry_dir)

    async def scenario():
        assert slot.offer("v1") is None  # already serving
        task = slot.offer("v2")
        assert task is not None and await task
        assert slot.offer("v2") is None

    asyncio.run(scenario())
    assert slot.current.version == "v2" and _count(slot, "success") == 1


def test_a_load_that_finishes_after_a_rollback_does_not_serve_what_the_rollback_undid(registry_dir):
    slot = _slot(registry_dir)

    async def scenario():
        task = slot.offer("v2")
        assert slot.offer("v1") is None  # rolled back while v2 loads: nothing new starts, v1 is wanted
        assert not await task
        assert slot.offer("v2") is not None  # promoted again: loaded again and served
        await slot._loading

    asyncio.run(scenario())
    assert slot.current.version == "v2" and _count(slot, "success") == 1 and _count(slot, "failure") == 0


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = "/tmp/stylestream-pickle-executed"


def _truncated(path: Path) -> None:
    data = (path / WEIGHTS_FILE).read_bytes()
    (path / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    write_checksums(path)  # the checksum alone would not catch it


def _wrong_shapes(path: Path) -> None:
    config = json.loads((path / CONFIG_FILE).read_text())
    config["model"]["hidden"] = 64  # weights were saved with hidden=256
    (path / CONFIG_FILE).write_text(json.dumps(config))
    write_checksums(path)  # the checksum alone would catch it: the strict shapes must too


def _pickle(path: Path) -> None:
    (path / WEIGHTS_FILE).write_bytes(pickle.dumps({"state": _Exploit()}))
    write_checksums(path)


def _checksum_mismatch(path: Path) -> None:
    data = bytearray((path / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (path / WEIGHTS_FILE).write_bytes(bytes(data))


@pytest.mark.parametrize("corrupt", [_truncated, _wrong_shapes, _pickle, _checksum_mismatch, None],
                         ids=["truncated", "wrong-shapes", "pickle", "checksum-mismatch", "unknown-version"])
def test_a_corrupt_checkpoint_is_refused_and_the_old_model_keeps_serving(registry_dir, corrupt):
    if os.path.exists(MARKER):
        os.remove(MARKER)
    if corrupt is not None:
        corrupt(registry_dir / "v2")
    slot = _slot(registry_dir)
    version = "v2" if corrupt is not None else "v9"

    async def scenario():
        assert await slot.offer(version) is False
        assert slot.offer(version) is None  # refused once, not retried every poll

    asyncio.run(scenario())
    assert slot.current.version == "v1" and version in slot.refused
    assert _count(slot, "failure") == 1 and _count(slot, "success") == 0
    assert not os.path.exists(MARKER), "a pickle in a checkpoint was executed"
    labels = slot.current.predict([_blank(slot)], [None], ["p"], [0])
    assert labels[0].model_version == "v1"


def _edit_config(version_dir: Path) -> bytes:
    """Edit a version's config on disk as an operator might, an hour ago (same size, checksum mismatch); returns
    what the file held before."""
    config = version_dir / CONFIG_FILE
    original = config.read_bytes()
    config.write_bytes(original.replace(b'"abstain_below": 0.0', b'"abstain_below": 0.5', 1))
    assert config.read_bytes() != original and config.stat().st_size == len(original)
    hour_ago = config.stat().st_mtime_ns - 3600 * 10**9
    os.utime(config, ns=(hour_ago, hour_ago))
    return original


def _rewritten(config: Path, original: bytes) -> None:
    config.write_bytes(original)  # in place: the same file and size, a new mtime


def _replaced_keeping_the_mtime(config: Path, original: bytes) -> None:
    # ``mv`` of a backup copied with ``cp -p``: the same size and mtime as the edited file, another inode.
    backup = config.with_name(".config.backup")
    backup.write_bytes(original)
    edited = config.stat()
    os.utime(backup, ns=(edited.st_atime_ns, edited.st_mtime_ns))
    os.replace(backup, config)


def _count_loads_and_hashes(monkeypatch) -> tuple[list[str], list[str]]:
    import serving.hotswap
    import serving.registry

    loads, hashes = [], []
    load, checksum = serving.hotswap._load_checked, serving.registry.file_checksum
    monkeypatch.setattr(serving.hotswap, "_load_checked", lambda s, v: loads.append(v) or load(s, v))
    monkeypatch.setattr(serving.registry, "file_checksum", lambda path: hashes.append(path) or checksum(path))
    return loads, hashes


def test_a_refused_version_is_not_loaded_or_hashed_again_while_its_files_are_unchanged(registry_dir, monkeypatch):
    _edit_config(registry_dir / "v2")
    slot = _slot(registry_dir)
    loads, hashes = _count_loads_and_hashes(monkeypatch)

    async def scenario():
        assert await slot.offer("v2") is False
        assert loads == ["v2"] and hashes
        hashes.clear()
        for _ in range(20):  # a poll each second: the pointer still names v2
            assert slot.offer("v2") is None

    asyncio.run(scenario())
    assert loads == ["v2"] and hashes == [] and _count(slot, "failure") == 1 and slot.current.version == "v1"


class _Lines(logging.Handler):
    """The messages one logger emits, caught on the logger itself: the repeat filter that stages install on the
    root logger's handlers (caplog's among them) holds back a line logged by an earlier test in the last 30 s."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.parametrize("repair", [_rewritten, _replaced_keeping_the_mtime])
def test_a_refused_version_repaired_on_disk_is_loaded_and_served_at_the_next_offer(registry_dir, repair):
    original = _edit_config(registry_dir / "v2")
    slot = _slot(registry_dir)
    caught, logger = _Lines(), logging.getLogger("serving.hotswap")

    async def scenario():
        assert await slot.offer("v2") is False
        assert slot.offer("v2") is None
        repair(registry_dir / "v2" / CONFIG_FILE, original)  # sha256sum -c SHA256: OK; promoted again
        task = slot.offer("v2")
        assert task is not None and await task
        assert slot.offer("v2") is None  # serving it

    logger.addHandler(caught)
    try:
        asyncio.run(scenario())
    finally:
        logger.removeHandler(caught)
    assert slot.current.version == "v2" and "v2" not in slot.refused
    assert _count(slot, "failure") == 1 and _count(slot, "success") == 1
    assert "model v2 was refused and its files changed since: loading it again" in caught.lines
    assert slot.current.predict([_blank(slot)], [None], ["p"], [0])[0].model_version == "v2"


def test_a_change_that_repairs_nothing_is_refused_and_counted_once_more(registry_dir):
    original = _edit_config(registry_dir / "v2")
    settings = Settings.named(model_dir=registry_dir, device="cpu")
    slot = ModelSlot(settings, Predictor.load(settings, "v1"), StageMetrics("classify"), refused={"v2"})
    config = registry_dir / "v2" / CONFIG_FILE

    async def scenario():
        assert slot.offer("v2") is None  # failed at start-up, unchanged since
        os.utime(config, ns=(10**18, 10**18))  # touched, still edited
        assert await slot.offer("v2") is False
        assert slot.offer("v2") is None
        _rewritten(config, original)
        assert await slot.offer("v2")

    asyncio.run(scenario())
    assert slot.current.version == "v2" and _count(slot, "failure") == 1 and _count(slot, "success") == 1


def _blank(slot: ModelSlot):
    import torch

    size = slot.current.model.preprocess.image_size
    return torch.zeros(3, size, size, dtype=torch.uint8)


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


RSS_BOUND_MIB = 64


def test_fifty_swaps_do_not_grow_memory(registry_dir, capsys):
    slot = _slot(registry_dir)
    samples = []

    async def scenario():
        for i in range(50):
            assert await slot.swap_to("v2" if i % 2 == 0 else "v1")
            samples.append(_rss_mib())

    asyncio.run(scenario())
    warm = samples[4]  # allocator pools settle over the first swaps
    growth = max(samples[5:]) - warm
    with capsys.disabled():
        print(f"\nRSS over 50 swaps: after 5 {warm:.1f} MiB, max {max(samples):.1f} MiB, "
              f"last {samples[-1]:.1f} MiB, growth {growth:.1f} MiB (bound {RSS_BOUND_MIB} MiB)")
    assert growth < RSS_BOUND_MIB
    assert _count(slot, "success") == 50
