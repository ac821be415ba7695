"""One micro-batch of decoded posts through the serving model and into the label sink.

Three steps overlap across batches: staging onto the device (prep thread), the forward (model thread),
and the label JSON plus the sink's flush. The model is read once per batch, so a hot-swap lands between
two batches, never inside one. An error of the model step fails the batch and the batcher retries its
items one by one (a poison post fails alone); an error of Redis or the broker is not the items' fault:
the whole flush is retried as one unit until it succeeds, so an outage costs one write per retry round.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from serving.hotswap import ModelSlot
from serving.predict import Scores
from streamcore.exceptions import BadInput
from streamcore.metrics import StageMetrics
from streamcore.preview import Preview
from streamcore.schemas import Hints
from streamcore.sinks import LabelSink
from training.recommend.vectors import encode_embeddings
from workers.classify.feeder import Place

#: What a post's batch gives back: its stored label JSON, ``None`` when the post id was labelled from other
#: content (a conflict), or why its image was refused on the device.
Outcome = bytes | BadInput | None
Retrying = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]


@dataclass(frozen=True)
class Item:
    image: Any
    hints: Hints | None
    post_id: str
    timestamp_ms: int
    fingerprint: str
    partition: int  # of the post: its label goes to the same partition of ``labels``
    place: Place
    user: str = ""  # the post's, for its fashion vector record (the label names no user)
    created_ms: int = 0
    preview: Preview | None = None  # what the review page shows of the post


class BatchRunner:
    """The batcher's handler: items in, one :data:`Outcome` per item out, in order."""

    def __init__(self, models: ModelSlot, sink: LabelSink, metrics: StageMetrics, retrying: Retrying,
                 model_pool: ThreadPoolExecutor, *, vectors: bool = False) -> None:
        self._models = models
        self._vectors = vectors  # fashion vector records beside the labels
        self._sink = sink
        self._metrics = metrics
        self._retrying = retrying
        self._model_pool = model_pool
        # One thread stages batch n+1 onto the device while the model thread runs batch n.
        self._prep_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prep")

    async def __call__(self, items: Sequence[Item]) -> list[Outcome]:
        self._metrics.batch_size.observe(len(items))
        for item in items:  # they leave the queue: the next images may be prepared
            item.place.give_back()
        loop = asyncio.get_running_loop()
        predictor = self._models.current
        staged = await loop.run_in_executor(self._prep_pool, predictor.stage, [i.image for i in items],
                                            [i.hints for i in items])
        infer = partial(predictor.infer, embeddings=True) if self._vectors else predictor.infer
        scores = await loop.run_in_executor(self._model_pool, infer, staged)
        results: list[Outcome] = await loop.run_in_executor(
            self._prep_pool, predictor.label_json, scores, [i.post_id for i in items], [i.timestamp_ms for i in items])
        vectors = _vector_records(scores, items, predictor.version)
        batch = self._sink.batch(predictor.version)
        kept = [n for n, r in enumerate(results) if not isinstance(r, BadInput)]
        for n in kept:
            batch.add(items[n].post_id, results[n], items[n].fingerprint, items[n].partition, vectors.get(n),
                      items[n].preview)
        if kept:
            # Outputs not written: the posts stay unfinished (uncommitted) while this retries.
            stored = await self._retrying("label_write", batch.flush)
            for n, value in zip(kept, stored):
                results[n] = value
        return results

    def close(self) -> None:
        self._prep_pool.shutdown()


def _vector_records(scores: Scores, items: Sequence[Item], version: str) -> dict[int, bytes]:
    """Per item index with an embedding, its encoded fashion vector record."""
    if getattr(scores, "embeddings", None) is None or not scores.rows:
        return {}
    chosen = [items[i] for i in scores.rows]
    records = encode_embeddings([i.post_id for i in chosen], [i.user for i in chosen], [i.created_ms for i in chosen],
                                version, scores.embeddings[:, None, :])
    return dict(zip(scores.rows, records))
