"""The per-version index (dedupe, growth, snapshots) and the fashion vector records."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from serving.ontology import load_ontology
from training.recommend.index import VersionIndex
from training.recommend.vectors import Layout, VectorRecord, encode_embeddings


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_index_finds_exact_neighbours_holds_each_post_once_and_grows() -> None:
    rng = np.random.default_rng(0)
    vectors = _unit(rng, 3000, 24)
    index = VersionIndex("v1", 24, 5, capacity=1024)  # grows past its first capacity
    ids = [f"p{i}" for i in range(3000)]
    assert index.add(ids, ["u"] * 3000, vectors, np.zeros((3000, 5), np.float16)) == 3000
    assert index.add(ids[:10] + ["new", "new"], ["u"] * 12, _unit(rng, 12, 24), np.zeros((12, 5))) == 1
    assert len(index) == 3001 and index.post_ids[-1] == "new"
    query = vectors[17]
    found, scores = index.search(query, 10)
    exact = np.argsort(-(vectors @ query))[:10]
    assert len(set(found.tolist()) & set(exact.tolist())) >= 9
    assert found[0] == 17 and scores[0] == pytest.approx(1.0, abs=1e-4)


def test_a_snapshot_loads_back_to_the_same_answers(tmp_path) -> None:
    rng = np.random.default_rng(1)
    index = VersionIndex("v1", 16, 3)
    labels = rng.random((200, 3)).astype(np.float16)
    index.add([f"p{i}" for i in range(200)], [f"u{i % 7}" for i in range(200)], _unit(rng, 200, 16), labels)
    index.cursor = "1700000000000-5"
    index.save(tmp_path / "v1")
    index.save(tmp_path / "v1")  # over an existing snapshot
    back = VersionIndex.load(tmp_path / "v1")
    query = _unit(rng, 1, 16)[0]
    assert (back.cursor, back.post_ids, back.users) == (index.cursor, index.post_ids, index.users)
    assert np.array_equal(back.search(query, 15)[0], index.search(query, 15)[0])
    assert np.array_equal(back.labels(np.arange(200)), labels.astype(np.float32))
    (tmp_path / "v1" / "meta.json").write_text(json.dumps({**json.loads((tmp_path / "v1" / "meta.json").read_text()),
                                                           "post_ids": ["only-one"], "users": ["u"]}))
    with pytest.raises(ValueError):
        VersionIndex.load(tmp_path / "v1")


def test_a_removed_item_is_never_found_again_survives_a_snapshot_and_may_come_back(tmp_path) -> None:
    rng = np.random.default_rng(2)
    vectors = _unit(rng, 50, 16)
    index = VersionIndex("v1", 16, 3)
    labels = rng.random((50, 3)).astype(np.float16)
    index.add([f"p{i}" for i in range(50)], ["shop"] * 50, vectors, labels, catalogue=[True] * 50)
    assert index.remove("p7") and not index.remove("p7") and not index.remove("never")
    assert len(index) == 49 and index.position("p7") is None and 7 not in index.catalogue
    found, _ = index.search(vectors[7], 49)  # every item left, none of them the removed one
    assert sorted(found.tolist()) == [i for i in range(50) if i != 7]
    index.save(tmp_path / "v1")
    back = VersionIndex.load(tmp_path / "v1")
    assert len(back) == 49 and back.position("p7") is None and 7 not in back.search(vectors[7], 49)[0]
    back.save(tmp_path / "v1")  # saved again after a removal: every position keeps its vector and label
    back = VersionIndex.load(tmp_path / "v1")
    every = np.arange(50)
    assert np.array_equal(back.vectors(every), index.vectors(every))
    assert np.array_equal(back.labels(every), labels.astype(np.float32))
    assert back.add(["p7"], ["shop"], vectors[7:8], np.zeros((1, 3)), catalogue=[True]) == 1  # listed again
    assert back.position("p7") == 50 and back.search(vectors[7], 1)[0][0] == 50 and len(back) == 50


def _saved(folder) -> VersionIndex:
    rng = np.random.default_rng(4)
    index = VersionIndex("v1", 16, 3)
    index.add([f"p{i}" for i in range(40)], ["u"] * 40, _unit(rng, 40, 16), np.zeros((40, 3), np.float16))
    index.save(folder)
    return index


def test_a_snapshot_reaches_the_disk_before_its_renames_and_the_renames_after(tmp_path, monkeypatch) -> None:
    events = []
    fsync, rename = os.fsync, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 fsync(fd)))
    monkeypatch.setattr(os, "rename", lambda a, b: (events.append(("rename", str(a))), rename(a, b)))
    _saved(tmp_path / "v1")
    _saved(tmp_path / "v1")  # over an existing snapshot: two renames
    second = events[len(events) // 2:]
    renames = [n for n, (kind, _) in enumerate(second) if kind == "rename"]
    assert len(renames) == 2
    flushed = {Path(path).name for kind, path in second[: renames[0]] if kind == "fsync"}
    assert {"hnsw.bin", "labels.npy", "vectors.npy", "meta.json"} <= flushed
    assert any(name.startswith(".snapshot-") for name in flushed)  # the new folder's entries
    assert ("fsync", str(tmp_path)) in second[renames[-1]:]  # the renames themselves


def test_a_graph_hnswlib_cannot_read_raises_and_leaves_nothing_to_crash_on(tmp_path) -> None:
    """hnswlib frees the graph it was loading into when the load fails: reused, or collected, it crashes."""
    _saved(tmp_path / "v1")
    graph, meta = tmp_path / "v1" / "hnsw.bin", json.loads((tmp_path / "v1" / "meta.json").read_text())
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    with pytest.raises(ValueError, match="digest"):  # a graph cut short is not handed to hnswlib at all
        VersionIndex.load(tmp_path / "v1")
    # One whose digest matches (written so) reaches hnswlib: twice in one process, then collected at exit.
    meta["hnsw_sha256"] = hashlib.sha256(graph.read_bytes()).hexdigest()
    (tmp_path / "v1" / "meta.json").write_text(json.dumps(meta))
    script = textwrap.dedent(f"""
        import gc, sys
        from training.recommend.index import VersionIndex
        for _ in range(2):
            try:
                VersionIndex.load({str(tmp_path / "v1")!r})
                sys.exit("loaded")
            except RuntimeError as exc:
                print(type(exc).__name__, exc)
            gc.collect()
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False,
                          cwd=Path(__file__).resolve().parents[3])
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("RuntimeError") == 2


def test_vector_records_round_trip_with_their_documented_size() -> None:
    emb = _unit(np.random.default_rng(2), 2, 1280)[:, None, :]
    raw = encode_embeddings(["p1", "p2"], ["ana", "bo"], [1, 2], "v7", emb)
    record = VectorRecord.decode(raw[1])
    assert (record.post_id, record.user, record.created_ms, record.model_version) == ("p2", "bo", 2, "v7")
    assert record.embedding.shape == (1, 1280) and record.embedding.dtype == np.float16
    assert 2560 < len(raw[0]) < 2560 + 200  # 1280 float16 + header
    with pytest.raises(ValueError):
        VectorRecord.decode(b"SSV1\x05\x00\x00\x00{bad}")


def test_label_vectors_follow_the_ontology_order() -> None:
    layout = Layout(load_ontology())
    label = {"categories": [{"term": "bags", "score": 0.8}], "subcategories": [{"term": "handbag", "score": 0.5}],
             "attributes": [{"term": "leather", "score": 0.7}, {"term": "unknown-term", "score": 0.9}]}
    vec = layout.label_vector(label)
    assert vec.shape == (112,) and np.count_nonzero(vec) == 3
    assert {layout.names[i]: round(float(vec[i]), 2) for i in np.flatnonzero(vec)} == \
        {"bags": 0.8, "handbag": 0.5, "leather": 0.7}
    assert layout.shows_part("bag", vec[None]).tolist() == [True]
    assert layout.shows_part("upper", vec[None]).tolist() == [False]
    assert sum(m.sum() for m in layout.facet_masks.values()) == 112  # every position in exactly one facet
