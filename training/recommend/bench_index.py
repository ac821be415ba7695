"""Which vector index: hnswlib, usearch and FAISS on 100,000 items, one core, against exact search.

Items are synthetic vectors of the real item dimension (the 1280 trunk features plus the 112-term label
vector), drawn around the held-out real photos' own item vectors (a kernel density estimate with their
principal components), so that neighbourhoods look like a catalogue's, not like uniform noise (on which
every approximate index does badly and no repository looks like); without the photos, around 1,000
random centres. Queries come from the same distribution and are not in the index. Each library is timed on single queries, the
way the recommender asks, for top-10 and for the top-100 candidates the diverse ranking starts from.

``python -m training.recommend.bench_index [--items N] [--out reports/recommend_index.json]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from streamcore.helptext import parser_options
from streamcore.reports import write_report

DIM = 1280 + 112
LABELS = 112
EMBED_WEIGHT = 0.5
#: Indexes built by a run, by library (the service path is measured on hnswlib's).
BUILT: dict = {}


def clustered(n: int, dim: int, *, centres: int, seed: int) -> np.ndarray:
    """``n`` unit vectors drawn around ``centres`` random unit centres (float32)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = c[rng.integers(0, centres, n)] + rng.standard_normal((n, dim)).astype(np.float32) * (0.9 / np.sqrt(dim))
    x += rng.standard_normal((n, dim)).astype(np.float32) * (0.3 / np.sqrt(dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def around_photos(path: Path, n: int, *, seed: int, bandwidth: float = 0.5) -> np.ndarray:
    """``n`` unit vectors drawn around real photos' item vectors (a Gaussian kernel density estimate: a
    photo at random, plus noise shaped like the photos' own principal components, scaled by ``bandwidth``)."""
    from training.recommend.photos import Embedded
    from training.recommend.ranking import joint

    data = Embedded.load(path)
    real = joint(data.embeddings[:, 0], data.labels)
    centred = real - real.mean(axis=0)
    _, sigma, basis = np.linalg.svd(centred, full_matrices=False)
    scale = sigma / np.sqrt(len(real) - 1) * bandwidth
    rng = np.random.default_rng(seed)
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    for start in range(0, n, 10_000):
        m = min(10_000, n - start)
        noise = (rng.standard_normal((m, len(scale))) * scale) @ basis
        out[start: start + m] = real[rng.integers(0, len(real), m)] + noise
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def exact_top(items: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact inner-product top-k ids per query."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 256):
        sims = queries[start: start + 256] @ items.T
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.take_along_axis(sims, top, 1).argsort(axis=1)[:, ::-1]
        out[start: start + 256] = np.take_along_axis(top, order, 1)
    return out


def measure(search: Callable[[np.ndarray, int], np.ndarray], queries: np.ndarray, truth: np.ndarray) -> dict:
    """recall@10 and single-query latency percentiles (ms) for k = 10 and k = 100."""
    result = {}
    for k in (10, 100):
        times, hits = [], 0
        for q, t in zip(queries, truth):
            start = time.perf_counter()
            found = search(q, k)
            times.append((time.perf_counter() - start) * 1000)
            hits += len(set(found[:10].tolist()) & set(t[:10].tolist()))
        result[f"k{k}"] = {"p50_ms": round(float(np.percentile(times, 50)), 3),
                           "p99_ms": round(float(np.percentile(times, 99)), 3),
                           "recall_at_10": round(hits / (10 * len(queries)), 4)}
    return result


def bench_hnswlib(items: np.ndarray, m: int, ef_construction: int, efs: list[int]) -> tuple[float, list[tuple]]:
    """hnswlib as the recommender holds it (:class:`VersionIndex`), searched at several beam widths."""
    from training.recommend import index as vindex

    assert (m, ef_construction) == (vindex.M, vindex.EF_CONSTRUCTION), "measure what is served"
    held = vindex.VersionIndex("bench", items.shape[1], LABELS, capacity=len(items))
    start = time.perf_counter()
    held.add([str(i) for i in range(len(items))], [f"u{i % 5000}" for i in range(len(items))], items,
             _labels(items).astype(np.float16))
    build = time.perf_counter() - start
    BUILT["hnswlib"] = held

    def at(ef: int):
        def search(q, k):
            held._index.set_ef(max(ef, k))
            return held._index.knn_query(q, k=k, num_threads=1)[0][0]
        return search
    return build, [(f"hnswlib M={m} efC={ef_construction} ef={ef}", at(ef)) for ef in efs]


def _labels(vectors: np.ndarray) -> np.ndarray:
    """The label half of joint vectors, back in label units (probabilities are never negative)."""
    return np.clip(vectors[:, -LABELS:] / np.sqrt(1 - EMBED_WEIGHT), 0.0, 1.0)


def service_path(index, queries: np.ndarray) -> list[dict]:
    """Latency of whole answers (search, ranking, explanations) as ``recommend`` gives them, per ranking."""
    from serving.ontology import load_ontology
    from training.recommend.service import RANKINGS, answer
    from training.recommend.vectors import Layout

    layout, rows = Layout(load_ontology()), []
    embeddings, labels = queries[:, :-LABELS][:, None, :], _labels(queries)
    for ranking in RANKINGS:
        times = []
        for n in range(len(queries)):
            start = time.perf_counter()
            answer(layout, "bench", index, embeddings[n], labels[n], 10, ranking, index.of_user(f"u{n % 5000}"))
            times.append((time.perf_counter() - start) * 1000)
        rows.append({"ranking": ranking, "p50_ms": round(float(np.percentile(times, 50)), 3),
                     "p99_ms": round(float(np.percentile(times, 99)), 3)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_usearch(items: np.ndarray, m: int, ef_construction: int, efs: list[int], dtype: str) -> tuple[float, list]:
    from usearch.index import Index

    index = Index(ndim=items.shape[1], metric="ip", dtype=dtype, connectivity=m, expansion_add=ef_construction)
    start = time.perf_counter()
    index.add(np.arange(len(items)), items, threads=1)
    build = time.perf_counter() - start

    def at(ef: int):
        def search(q, k):
            index.expansion_search = max(ef, k)
            return index.search(q, k, threads=1).keys
        return search
    return build, [(f"usearch {dtype} M={m} efC={ef_construction} ef={ef}", at(ef)) for ef in efs]


def bench_faiss(items: np.ndarray, m: int, ef_construction: int, efs: list[int]) -> tuple[float, list]:
    import faiss

    faiss.omp_set_num_threads(1)
    index = faiss.IndexHNSWFlat(items.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    start = time.perf_counter()
    index.add(items)
    build = time.perf_counter() - start
    flat = faiss.IndexFlatIP(items.shape[1])
    flat.add(items)

    def at(ef: int):
        def search(q, k):
            index.hnsw.efSearch = max(ef, k)
            return index.search(q[None], k)[1][0]
        return search
    exact = ("faiss exact (IndexFlatIP, brute force)", lambda q, k: flat.search(q[None], k)[1][0])
    return build, [(f"faiss HNSW M={m} efC={ef_construction} ef={ef}", at(ef)) for ef in efs] + [exact]


def run(n_items: int, n_queries: int, *, photos: Path | None, m: int = 16, ef_construction: int = 100,
        seed: int = 0) -> dict:
    if photos is not None and photos.exists():
        both, source = around_photos(photos, n_items + n_queries, seed=seed), f"around the real photos of {photos}"
    else:  # one distribution, fresh draws: queries near the items, never among them
        both, source = clustered(n_items + n_queries, DIM, centres=1000, seed=seed), "1,000 random cluster centres"
    items, queries = both[:n_items], both[n_items:]
    truth = exact_top(items, queries, 100)
    efs = [32, 64, 128]
    rows, builds = [], {}
    for name, make in (("hnswlib", lambda: bench_hnswlib(items, m, ef_construction, efs)),
                       ("usearch", lambda: bench_usearch(items, m, ef_construction, efs, "f16")),
                       ("faiss", lambda: bench_faiss(items, m, ef_construction, efs))):
        build, searches = make()
        builds[name] = round(build, 1)
        print(f"{name}: built in {build:.0f} s", flush=True)
        for label, search in searches:
            rows.append({"index": label, **measure(search, queries, truth)})
            print(json.dumps(rows[-1]), flush=True)
        if name == "hnswlib":
            answers = service_path(BUILT.pop("hnswlib"), queries[:300])
    return {"items": n_items, "queries": n_queries, "dim": items.shape[1], "vectors": source, "threads": 1,
            "hnsw": {"M": m, "ef_construction": ef_construction}, "build_seconds_one_core": builds, "rows": rows,
            "recommend_path": answers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(**parser_options("stylestream bench recommend-index", __doc__))
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("reports/recommend_index.json"))
    parser.add_argument("--photos", type=Path, default=Path("cache/recommend/test_photos.npz"),
                        help="embedded test photos (training.recommend.evaluate writes them); else clustered noise")
    args = parser.parse_args(argv)
    with threadpool_limits(1):  # one core: BLAS threads fighting over small matrices cost 50x on a busy machine
        report = run(args.items, args.queries, photos=args.photos)
    write_report(args.out, report, command="python -m training.recommend.bench_index " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
