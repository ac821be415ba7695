"""One model version's repository in a vector index: hnswlib HNSW, in process, with durable snapshots.

Chosen by measurement (``reports/recommend_index.json``, docs/recommendations.md): at 100,000 items of
the real dimension on one core, hnswlib, usearch and FAISS's HNSW reach the same recall at the same
latency; hnswlib is the one that replaces an item in place, resizes, and saves to one file.

A snapshot is a folder written beside the live one and renamed over it: the graph, the post ids, users
and label vectors (for explanations), and the stream cursor it covers. Loading a snapshot and reading
the repository stream past its cursor gives the same items as rebuilding from the stream's start (the
graph may differ a little: hnswlib does not save its level generator).
Its files are flushed to disk before the renames, and the graph's digest is checked before hnswlib reads
it: hnswlib can crash the process on a graph file it half-read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import hnswlib
import numpy as np

#: HNSW parameters (see the benchmark): graph degree, build and search beam widths.
M, EF_CONSTRUCTION, EF_SEARCH = 16, 100, 128


class VersionIndex:
    """Items of one model version: vectors in HNSW, and per item its post id, user and label vector."""

    def __init__(self, version: str, dim: int, label_dim: int, *, capacity: int = 1024) -> None:
        self.version = version
        self.dim = dim
        self.cursor = "0-0"  # the repository stream's last entry indexed
        #: Which repository it indexes (prefix and the stream's first entry): a snapshot is of that one only.
        self.origin = ""
        self._index = hnswlib.Index(space="ip", dim=dim)
        self._index.init_index(max_elements=capacity, M=M, ef_construction=EF_CONSTRUCTION, random_seed=0)
        self._index.set_ef(EF_SEARCH)
        self._index.set_num_threads(1)
        self.post_ids: list[str] = []
        self.users: list[str] = []
        self.catalogue: set[int] = set()  # positions of shops' catalogue items (the rest are posts)
        self._labels = np.zeros((capacity, label_dim), dtype=np.float16)
        # hnswlib's get_items costs ~0.3 ms an item: the ranking reads candidates from this float16 copy.
        self._vectors = np.zeros((capacity, dim), dtype=np.float16)
        self._position: dict[str, int] = {}
        self._by_user: dict[str, list[int]] = {}
        #: Positions of items removed (marked deleted in the graph, which no search returns).
        self.removed: set[int] = set()

    def __len__(self) -> int:
        """Items a search can return (removed ones are not)."""
        return len(self.post_ids) - len(self.removed)

    def position(self, post_id: str) -> int | None:
        return self._position.get(post_id)

    def of_user(self, user: str) -> set[int]:
        """Positions of one user's posts (a shop's catalogue items are not its posts)."""
        return set(self._by_user.get(user, ()))

    def label(self, position: int) -> np.ndarray:
        return self._labels[position].astype(np.float32)

    def vector(self, position: int) -> np.ndarray:
        return self.vectors(np.array([position]))[0]

    def vectors(self, positions: np.ndarray) -> np.ndarray:
        """``[n, dim]`` float32 vectors of items by position (their float16 copies)."""
        return self._vectors[np.asarray(positions, dtype=np.int64)].astype(np.float32)

    def labels(self, positions: np.ndarray) -> np.ndarray:
        """``[n, L]`` float32 label vectors of items by position."""
        return self._labels[np.asarray(positions, dtype=np.int64)].astype(np.float32)

    def add(self, post_ids: list[str], users: list[str], vectors: np.ndarray, labels: np.ndarray,
            catalogue: list[bool] | None = None) -> int:
        """Add items (an id already present is skipped: the repository holds each post once); ``catalogue`` marks
        shops' items. Returns how many were added."""
        fresh, batch = [], set()
        for n, post_id in enumerate(post_ids):
            if post_id not in self._position and post_id not in batch:
                batch.add(post_id)
                fresh.append(n)
        if not fresh:
            return 0
        used = len(self.post_ids)
        need = used + len(fresh)
        if need > self._index.get_max_elements():
            capacity = max(need, 2 * self._index.get_max_elements())
            self._index.resize_index(capacity)
            self._labels = _grown(self._labels, capacity, used)
            self._vectors = _grown(self._vectors, capacity, used)
        positions = np.arange(used, need)
        self._index.add_items(vectors[fresh].astype(np.float32), positions, num_threads=1)
        self._labels[positions] = labels[fresh]
        self._vectors[positions] = vectors[fresh]
        for n, position in zip(fresh, positions):
            self._position[post_ids[n]] = int(position)
            if catalogue is not None and catalogue[n]:
                self.catalogue.add(int(position))
            else:
                self._by_user.setdefault(users[n], []).append(int(position))
            self.post_ids.append(post_ids[n])
            self.users.append(users[n])
        return len(fresh)

    def remove(self, post_id: str) -> bool:
        """Take an item out of every later search (a shop removed it); False when it is not indexed. The same id
        added again later gets a new position."""
        position = self._position.pop(post_id, None)
        if position is None:
            return False
        self._index.mark_deleted(position)
        self.removed.add(position)
        self.catalogue.discard(position)
        if position in self._by_user.get(self.users[position], ()):
            self._by_user[self.users[position]].remove(position)
        return True

    def search(self, vector: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``n`` nearest positions and their inner products, best first."""
        n = min(n, len(self))
        if n == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        self._index.set_ef(max(EF_SEARCH, n))
        found, distances = self._index.knn_query(vector.astype(np.float32), k=n, num_threads=1)
        return found[0].astype(np.int64), (1.0 - distances[0]).astype(np.float32)

    # -- snapshots -------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Write a snapshot to ``folder`` atomically (a new folder renamed over the old one), durably: after a
        crash or power loss the folder holds this snapshot or the one before, whole."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".snapshot-", dir=folder.parent))
        try:
            self._index.save_index(str(tmp / "hnsw.bin"))
            # Every position, removed ones included: positions index these arrays, and len(self) counts only
            # the items still searchable.
            np.save(tmp / "labels.npy", self._labels[: len(self.post_ids)])
            np.save(tmp / "vectors.npy", self._vectors[: len(self.post_ids)])
            meta = {"version": self.version, "dim": self.dim, "cursor": self.cursor, "post_ids": self.post_ids,
                    "users": self.users, "catalogue": sorted(self.catalogue), "removed": sorted(self.removed),
                    "hnsw_sha256": _digest(tmp / "hnsw.bin"), "origin": self.origin}
            (tmp / "meta.json").write_text(json.dumps(meta))
            # A rename can reach the disk before the data it names: without these, a power loss could leave
            # the new name on empty files, and the old snapshot already gone.
            for name in ("hnsw.bin", "labels.npy", "vectors.npy", "meta.json", "."):
                _fsync(tmp / name)
            old = folder.with_name(folder.name + ".old")
            if folder.exists():
                os.rename(folder, old)
            os.rename(tmp, folder)
            _fsync(folder.parent)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, folder: Path) -> VersionIndex:
        """A snapshot written by :meth:`save`.

        Raises:
            OSError, ValueError, KeyError, TypeError, IndexError, EOFError, RuntimeError: a missing or broken
                snapshot (files cut short, a graph that does not match its digest, meta without a field).
        """
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        if _digest(folder / "hnsw.bin") != meta["hnsw_sha256"]:
            raise ValueError(f"snapshot {folder}: the graph file does not match its digest")
        labels = np.load(folder / "labels.npy")
        vectors = np.load(folder / "vectors.npy")
        count = len(meta["post_ids"])
        if not len(labels) == len(vectors) == len(meta["users"]) == count:
            raise ValueError(f"snapshot {folder}: {len(labels)} labels and {len(vectors)} vectors for {count} items")
        # A fresh graph object: hnswlib frees an initialised one before loading into it, and if that load fails
        # the object is left pointing at freed memory (a crash when it is collected).
        graph = hnswlib.Index(space="ip", dim=int(meta["dim"]))
        graph.load_index(str(folder / "hnsw.bin"), max_elements=max(1024, count))
        if graph.get_current_count() != count:
            raise ValueError(f"snapshot {folder}: graph holds {graph.get_current_count()} items, meta {count}")
        out = cls(meta["version"], int(meta["dim"]), labels.shape[1], capacity=1)
        out._index = graph
        out._index.set_ef(EF_SEARCH)
        out._index.set_num_threads(1)
        out.post_ids, out.users, out.cursor = list(meta["post_ids"]), list(meta["users"]), str(meta["cursor"])
        out.origin = str(meta.get("origin", ""))
        out._labels = _grown(labels.astype(np.float16), graph.get_max_elements(), count)
        out._vectors = _grown(vectors.astype(np.float16), graph.get_max_elements(), count)
        out.removed = set(meta.get("removed", ()))
        out._position = {p: n for n, p in enumerate(out.post_ids) if n not in out.removed}
        out.catalogue = set(meta.get("catalogue", ()))
        for n, user in enumerate(out.users):
            if n not in out.catalogue and n not in out.removed:
                out._by_user.setdefault(user, []).append(n)
        return out


def _digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's (its entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _grown(array: np.ndarray, capacity: int, used: int) -> np.ndarray:
    out = np.zeros((capacity, array.shape[1]), dtype=array.dtype)
    out[:used] = array[:used]
    return out
