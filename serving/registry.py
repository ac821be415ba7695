"""Checkpoint registry: immutable version directories under ``model_dir``, published atomically."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from serving.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint
from serving.models import DynamicCNN
from streamcore.exceptions import StylestreamError

#: ``sha256sum`` format (``<hex>  <file>`` a line, the weights first): ``sha256sum -c SHA256`` checks a version.
CHECKSUM_FILE = "SHA256"
#: What lists a version's exported backbones with their SHA-256 (``serving.onnx_backbone`` reads it).
ONNX_MANIFEST_FILE = "onnx.json"
#: Files that change what a version serves, recorded after the weights where present. The exported backbones
#: are not: ``onnx.json`` records their SHA-256 and is checked before they are read.
COVERED_FILES = (CONFIG_FILE, ONNX_MANIFEST_FILE)
#: Versions that loaded, verified and served, oldest first (a dot name: never taken for a version).
VERIFIED_FILE = ".verified"
_VERIFIED_KEPT = 50
log = logging.getLogger(__name__)
_CHECKSUM_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *]([^/\\]+)")
_LEGACY_CHECKSUM = re.compile(r"[0-9a-fA-F]{64}")
_warned_uncovered: set[Path] = set()  # hot-swaps reload a version: its warning is logged once
#: Where a version is copied before it is renamed into place, and after how long such a copy is abandoned.
_PUBLISHING = ".publish-"
_ABANDONED_AFTER_S = 3600.0
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


def write_checksums(directory: Path) -> str:
    """Record the SHA-256 of the weights, then of each of :data:`COVERED_FILES` present, in ``directory``'s
    ``SHA256`` (replaced atomically: a reader sees the old list or the new one). Returns the weights' checksum.

    Every writer of ``SHA256`` goes through here, so what a version's checksum covers is decided in one place.
    """
    directory = Path(directory)
    names = [WEIGHTS_FILE, *(n for n in COVERED_FILES if (directory / n).is_file())]
    digests = {name: file_checksum(directory / name) for name in names}
    tmp = directory / f".{CHECKSUM_FILE}.tmp"
    try:
        tmp.write_text("".join(f"{digest}  {name}\n" for name, digest in digests.items()), encoding="utf-8")
        os.replace(tmp, directory / CHECKSUM_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    return digests[WEIGHTS_FILE]


def recorded_checksums(directory: Path) -> dict[str, str]:
    """File name → SHA-256 as ``directory``'s ``SHA256`` records them, the weights always among them. An
    older version's file, one bare digest, records the weights only.

    Raises:
        FileNotFoundError: no ``SHA256``.
        ValueError: a line is not ``<sha256>  <file name>``, a file is listed twice, or the weights are not listed.
    """
    path = Path(directory) / CHECKSUM_FILE
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) == 1 and _LEGACY_CHECKSUM.fullmatch(lines[0].strip()):
        return {WEIGHTS_FILE: lines[0].strip().lower()}
    recorded: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        match = _CHECKSUM_LINE.fullmatch(line)
        if match is None or match[2] in (".", "..") or match[2] in recorded:
            raise ValueError(f"{path}: line {number} is not '<sha256>  <file name>' of a file not listed before")
        recorded[match[2]] = match[1].lower()
    if WEIGHTS_FILE not in recorded:
        raise ValueError(f"{path}: {WEIGHTS_FILE} is not listed")
    return recorded


def verify_checksums(directory: Path, version: str) -> dict[str, str]:
    """Check every file ``directory``'s ``SHA256`` lists against its recorded SHA-256; the recorded checksums.

    A served file present but not listed (an older version's ``SHA256`` lists the weights alone) is warned
    about once and not checked: such versions kept loading before their config was covered.

    Raises:
        ValueError: a listed file is missing or does not match, or ``SHA256`` is malformed.
    """
    directory = Path(directory)
    try:
        recorded = recorded_checksums(directory)
    except ValueError as exc:
        raise ValueError(f"checkpoint {version}: {exc}") from None
    for name, expected in recorded.items():
        if not (directory / name).is_file():
            raise ValueError(f"checkpoint {version}: {name} is listed in {CHECKSUM_FILE} but missing")
        if file_checksum(directory / name) != expected:
            raise ValueError(f"checkpoint {version}: {name} checksum mismatch")
    uncovered = [n for n in COVERED_FILES if n not in recorded and (directory / n).is_file()]
    if uncovered and directory.resolve() not in _warned_uncovered:
        _warned_uncovered.add(directory.resolve())
        log.warning("checkpoint %s: %s not covered by its %s (published before they were); republish it to have "
                    "them verified", version, ", ".join(uncovered), CHECKSUM_FILE)
    return recorded


@dataclass(frozen=True)
class Entry:
    """One published version."""

    version: str
    path: Path

    def load(self, *, device: torch.device | str = "cpu") -> DynamicCNN:
        """Load after verifying every file the version's ``SHA256`` lists (weights, config, ONNX manifest).

        Raises:
            ValueError: a listed file is missing or does not match its recorded checksum.
        """
        verify_checksums(self.path, self.version)
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
            # mkstemp makes it 0600: classifiers running as another user on a shared registry must read it.
            os.fchmod(fd, 0o644)
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
        runtime artifact) is part of the version from its first appearance, and covered by its ``SHA256``.

        ``checkpoint_dir`` is checked before anything is copied: it must hold the weights and config as regular
        files, and nothing in it may be a symbolic link or another non-regular file (a FIFO, a socket, a device).
        A link is refused rather than copied as a link or followed: followed, it copies whatever it points to
        (a whole virtual environment), and kept, it points out of an immutable version at files that may change
        under its checksum. Refusing it is the one choice that publishes exactly the files the folder holds.

        Raises:
            StylestreamError: ``checkpoint_dir`` is not a checkpoint directory (no weights or config, or they are
                not regular files), or it holds a symbolic link or another non-regular file; or the checkpoint
                does not load (truncated weights, shapes its config does not build, an unreadable config).
                Nothing is published.
        """
        checkpoint_dir = Path(checkpoint_dir)
        version = check_version_name(name or datetime.now(UTC).strftime("v%Y%m%dT%H%M%S%fZ"))
        _check_source(checkpoint_dir, version)
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / version
        if target.exists():
            raise FileExistsError(f"version {version!r} already exists")
        _sweep_abandoned(self.root)
        tmp = Path(tempfile.mkdtemp(prefix=_PUBLISHING, dir=self.root))
        try:
            # symlinks=True: a link that appeared since the check is copied as a link, never followed.
            shutil.copytree(checkpoint_dir, tmp, symlinks=True, dirs_exist_ok=True)
            write_checksums(tmp)
            _loads(tmp, version)
            if build is not None:
                build(tmp)
                write_checksums(tmp)  # what the build added, or removed after a failed export
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Entry(version, target)


def _sweep_abandoned(root: Path) -> None:
    """Remove the copies of publishes that were killed before they finished (a publish takes seconds; one not
    touched for ``_ABANDONED_AFTER_S`` is nobody's). Versions never appear half-written, but the copies stayed."""
    now = datetime.now(UTC).timestamp()
    for tmp in root.glob(f"{_PUBLISHING}*"):
        try:
            if tmp.is_dir() and not tmp.is_symlink() and now - tmp.stat().st_mtime > _ABANDONED_AFTER_S:
                shutil.rmtree(tmp, ignore_errors=True)
                log.warning("removed %s, left by a publish that did not finish", tmp)
        except OSError:  # gone meanwhile, or not ours to remove: publishing goes on
            continue


def _check_source(directory: Path, version: str) -> None:
    """Refuse to publish ``directory`` unless it is a checkpoint directory of regular files and folders only."""
    if not directory.is_dir():
        raise StylestreamError(f"not published: {version}: {directory} is not a directory")
    missing = [n for n in (WEIGHTS_FILE, CONFIG_FILE) if not stat.S_ISREG(_mode(directory / n))]
    if missing:
        raise StylestreamError(f"not published: {version}: {directory} is not a checkpoint directory: "
                               f"{' and '.join(missing)} missing or not a regular file")
    for folder, dirs, files in os.walk(directory, onerror=_raise):  # never follows links to folders
        for entry in (*dirs, *files):
            mode = _mode(Path(folder) / entry)
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
                raise StylestreamError(f"not published: {version}: {Path(folder) / entry} is {kind}; a version "
                                       f"holds regular files only")


def _mode(path: Path) -> int:
    """``path``'s mode, of the link itself where it is one; 0 where nothing is there."""
    try:
        return path.lstat().st_mode
    except FileNotFoundError:
        return 0


def _raise(exc: OSError) -> None:
    raise exc


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
    """The packaged checkpoint as a registry entry (its version names the weights' checksum: the name labels and
    photo caches already carry, from before ``SHA256`` listed more than the weights).

    Raises:
        FileNotFoundError: the package ships without it (rebuild with ``python -m training.default_model``).
    """
    checksum = recorded_checksums(directory)[WEIGHTS_FILE]
    return Entry(f"default-{checksum[:12]}", directory)
