"""Checkpoint registry: immutable version directories under ``model_dir``, published atomically."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from serving.checkpoint import WEIGHTS_FILE, load_checkpoint
from serving.models import DynamicCNN
from streamcore.exceptions import StylestreamError

CHECKSUM_FILE = "SHA256"
#: Versions that loaded, verified and served, oldest first (a dot name: never taken for a version).
VERIFIED_FILE = ".verified"
_VERIFIED_KEPT = 50
log = logging.getLogger(__name__)
_VERSION_NAME = re.compile(r"[A-Za-z0-9_:-][A-Za-z0-9_.:-]{0,127}")


def check_version_name(version: str) -> str:
    """``version`` if it is a registry version name (1-128 of ``[A-Za-z0-9_.:-]``, no leading dot).

    Versions come from Redis (the serving pointer) and the CLI: the check runs before the name is joined
    to a path, so ``/abs``, ``../x`` or ``.`` can never name a folder outside the registry.

    Raises:
        ValueError: not a version name.
    """
    if not isinstance(version, str) or not _VERSION_NAME.fullmatch(version):
        raise ValueError(f"version names are 1-128 of [A-Za-z0-9_.:-], not starting with '.', got {version!r:.200}")
    return version


def file_checksum(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_checksum(directory: Path) -> str:
    """SHA-256 of a checkpoint's weights file."""
    return file_checksum(directory / WEIGHTS_FILE)


@dataclass(frozen=True)
class Entry:
    """One published version."""

    version: str
    path: Path

    def load(self, *, device: torch.device | str = "cpu") -> DynamicCNN:
        """Load after verifying the weights checksum.

        Raises:
            ValueError: the weights do not match the recorded checksum.
        """
        expected = (self.path / CHECKSUM_FILE).read_text().strip()
        if weights_checksum(self.path) != expected:
            raise ValueError(f"checkpoint {self.version}: weights checksum mismatch")
        return load_checkpoint(self.path, device=device)


class Registry:
    """Versions are directories ``<model_dir>/<version>``; which one serves is a Redis pointer (``promotion``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def versions(self) -> list[str]:
        """Published versions, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if _VERSION_NAME.fullmatch(p.name) and p.is_dir() and (p / CHECKSUM_FILE).exists())

    def get(self, version: str) -> Entry:
        """The entry of ``version``; ``KeyError`` if it is not published, ``ValueError`` if not a version name."""
        path = self.root / check_version_name(version)
        if not (path / CHECKSUM_FILE).exists():
            raise KeyError(f"no published checkpoint {version!r} in {self.root}")
        return Entry(version, path)

    def newest(self) -> Entry | None:
        """The most recently published version (what a worker serves when no pointer is set)."""
        versions = self.versions()
        return self.get(versions[-1]) if versions else None

    def unpromoted(self) -> Entry:
        """What a worker serves when no pointer is set: the newest published version, else the packaged default."""
        return self.newest() or default_entry()

    def verified(self) -> list[str]:
        """Versions that loaded, passed verification and served, least recently verified first.

        What to serve when the wanted version fails its checks: the last good one. An unreadable list
        counts as empty (the versions are checked again at load anyway).
        """
        try:
            names = json.loads((self.root / VERIFIED_FILE).read_text())
        except (OSError, ValueError):
            return []
        return [n for n in names if isinstance(n, str) and _VERSION_NAME.fullmatch(n)] if isinstance(names, list) else []

    def mark_verified(self, version: str) -> bool:
        """Remember ``version`` as the most recently verified and served one; False where the registry is
        read-only to this process (a classifier's mount may be: then promotion's marks are the ones kept)."""
        names = [n for n in self.verified() if n != check_version_name(version)] + [version]
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=".verified-", dir=self.root)
            with os.fdopen(fd, "w") as fh:
                json.dump(names[-_VERIFIED_KEPT:], fh)
            os.replace(tmp, self.root / VERIFIED_FILE)  # atomic: replicas sharing the registry never read half
        except OSError as exc:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            log.info("cannot record %s as verified in %s (%s)", version, self.root, exc)
            return False
        return True

    def publish(self, checkpoint_dir: Path, *, name: str | None = None,
                build: Callable[[Path], object] | None = None) -> Entry:
        """Copy a checkpoint into the registry as a new immutable version (temp dir + rename).

        ``build`` runs on the copy before it becomes visible: what it derives from the weights (an exported
        runtime artifact) is part of the version from its first appearance.

        Raises:
            StylestreamError: the checkpoint does not load (truncated weights, shapes its config does not build,
                an unreadable config); nothing is published.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        version = check_version_name(name or datetime.now(UTC).strftime("v%Y%m%dT%H%M%S%fZ"))
        target = self.root / version
        if target.exists():
            raise FileExistsError(f"version {version!r} already exists")
        tmp = Path(tempfile.mkdtemp(prefix=".publish-", dir=self.root))
        try:
            shutil.copytree(checkpoint_dir, tmp, dirs_exist_ok=True)
            (tmp / CHECKSUM_FILE).write_text(weights_checksum(tmp) + "\n")
            _loads(tmp, version)
            if build is not None:
                build(tmp)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Entry(version, target)


def _loads(directory: Path, version: str) -> None:
    # A checksum taken of a truncated file is a valid checksum: only loading tells that no classifier could serve it.
    try:
        load_checkpoint(directory)
    except Exception as exc:  # safetensors, torch and json each raise their own kind
        raise StylestreamError(f"not published: checkpoint {version} does not load: {type(exc).__name__}: "
                               f"{str(exc)[:300]}") from exc


#: The packaged default model (``python -m training.default_model`` rebuilds it), in the registry's layout.
DEFAULT_MODEL_DIR = Path(__file__).parent / "models" / "data" / "default"


def default_entry(directory: Path = DEFAULT_MODEL_DIR) -> Entry:
    """The packaged checkpoint as a registry entry (its version names the weights' checksum).

    Raises:
        FileNotFoundError: the package ships without it (rebuild with ``python -m training.default_model``).
    """
    checksum = (directory / CHECKSUM_FILE).read_text().strip()
    return Entry(f"default-{checksum[:12]}", directory)
