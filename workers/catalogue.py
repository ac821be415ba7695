"""Catalogue stage: shop items on ``catalogue`` → labels and fashion vectors of the serving model, for the repository.

A catalogue item is a ``post/v1`` record on the ``catalogue`` topic, keyed by its id: ``post_id`` is the item id,
``user`` the shop, ``caption`` its title (``stylestream catalogue add``, ``StylestreamClient.add_catalogue_item``).
The stage labels the item's photo with the serving model, as the classifier labels a post, and writes the label, its
vector record (marked as a catalogue item) and the ``labels`` record through the classifier's sink; the profiles
stage then adds the item to that model version's repository, and to no style profile.

Each model version has its own consumer group (``<group_prefix>-catalogue-<version>``). When the serving pointer
moves to a version that loads, the stage leaves its group and joins the new version's, which starts at the topic's
beginning: the whole catalogue (compacted: the latest record of each item) is labelled again in the new embedding
space, while recommendations keep coming from the previous version until the new repository is ready. A restart
resumes the group of the version it serves. A record is done once its label and vector record are stored.
A record keyed by anything but its ``post_id`` is dead-lettered (``bad_key``). The same item sent again (the same
id and content, a new ``created_at``) is a redo of its label, not a conflicting duplicate.

A shop removes an item with a tombstone (its id as the key, no value: ``stylestream catalogue remove``): the item
leaves every version's repository where it joined as an item (a removal entry on each stream; indexes drop it, and a
label of it still on its way does not bring it back), and its label and vector record are deleted, unless a post
has taken the id since the item's expired (the vector record there is a post's). A repository
entry that is a post's is never removed: when a post held the id there first (a reused id), and no repository held
the item, the tombstone is dead-lettered (``not_catalogue_item``) and deletes nothing. Sent again later, an item is
labelled and joins the repository again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter
from redis.exceptions import RedisError

from serving.hotswap import Fingerprint, load_last_good, version_fingerprint
from serving.images import make_preview
from serving.predict import Predictor, Scores
from serving.registry import check_version_name
from streamcore.exceptions import BadInput
from streamcore.health import HealthServer, Heartbeat
from streamcore.metrics import StageMetrics
from streamcore.redisconn import connect_async
from streamcore.schemas import Post, check_post_id
from streamcore.serde import decode_post
from streamcore.settings import Settings
from streamcore.sinks import LabelSink, RedisLookups, fingerprint
from streamcore.sources import load_bytes
from streamcore.stage import Stage
from training.recommend.store import ProfileWriter
from training.recommend.vectors import VectorRecord, encode_embeddings

log = logging.getLogger(__name__)
#: 9999-12-31T23:59:59.999Z, the latest instant a ``datetime`` holds.
_MAX_TIMESTAMP_MS = 253_402_300_799_999


class CatalogueStage(Stage):
    """Catalogue items → labels and vector records, with one model version (see the module docstring)."""

    name = "catalogue"
    inputs = ("catalogue",)
    outputs = ("labels", "posts.dlq")

    def __init__(self, settings: Settings, predictor: Predictor, *, refused: dict[str, Fingerprint] | None = None,
                 removed: Counter | None = None, labelled: Counter | None = None, **kwargs) -> None:
        super().__init__(settings, **kwargs)
        self.predictor = predictor
        self.group_suffix = f"{self.name}-{predictor.version}"
        #: Versions that failed their checks, and their files then: not tried again until those change (a repair).
        self.refused = dict(refused or {})
        #: The version to serve next, once this stage has left its group (None: stopping for good).
        self.next_version: str | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="catalogue")
        #: Items removed: the worker's counter, kept across the stages of its versions.
        self.removed = removed if removed is not None else removals(self.metrics)
        #: Items labelled: apart from the classifier's posts, whose count alerts and dashboards watch.
        self.labelled = labelled if labelled is not None else labellings(self.metrics)
        self._next_check = 0.0

    async def setup(self) -> None:
        self.lookups = RedisLookups(self.settings)
        self.sink = LabelSink(self.settings, self.producer)
        self.repository = ProfileWriter(connect_async(self.settings.redis), self.settings.redis.prefix,
                                        cluster=self.settings.redis.cluster)

    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        items = []  # in topic order: a removal applies after the items before it are labelled
        for record in records:
            if record.value is None:  # a removal (compaction tombstone), keyed by the item's id
                await self._label_all(items)
                items = []
                await self._remove(record)
                continue
            try:
                items.append((record, _keyed(record, decode_post(record.value, self.settings.limits))))
            except BadInput as exc:
                await self.dead_letter(record, exc)
        await self._label_all(items)

    async def _label_all(self, items: list[tuple[ConsumerRecord, Post]]) -> None:
        size = self.settings.classify.max_batch
        for start in range(0, len(items), size):
            await self._label(items[start: start + size])

    async def _remove(self, record: ConsumerRecord) -> None:
        """A shop removed an item: out of every repository, its label and vector record deleted."""
        try:
            item_id = check_post_id(record.key.decode() if record.key is not None else "")
        except (BadInput, UnicodeDecodeError):
            await self.dead_letter(record, BadInput("bad_key", "a catalogue removal names its item id as the key"))
            return
        version = self.predictor.version
        if not await self.retrying("catalogue_listed", lambda: self._listed(item_id)):
            if await self.retrying("catalogue_removed", lambda: self.repository.was_removed(item_id, also=[version])):
                self.done(record)  # removed before: the tombstone seen again (a new version's replay, a resend)
                return
            # Ids are shared with posts: a post (labelled or not, its records expired or never written) is not
            # the shop's to drop.
            await self.dead_letter(record, BadInput("not_catalogue_item", f"{item_id} is not listed by a shop "
                                                    "(a post's id, or an item never labelled)"))
            return
        gone = await self.retrying("catalogue_keys", lambda: self._item_keys(item_id))
        removed, held = await self.retrying("catalogue_remove",
                                            lambda: self.repository.remove_item(item_id, gone, also=[version]))
        if held and not removed:
            # The item never joined a repository where a post had the id first (an id reused after the post's label
            # expired): that entry is the post's, and nothing was deleted.
            await self.dead_letter(record, BadInput("not_catalogue_item", f"{item_id} is a post's id in the "
                                                    "repository, not the shop's item"))
            return
        self.removed.inc()
        self.done(record)

    async def _item_keys(self, item_id: str) -> list[str]:
        """The label keys under ``item_id`` that are the item's to delete: none when the vector record there is a
        post's (the item's expired, and a post took the id since; its label is not the shop's to drop)."""
        keys = self.settings.redis.keys
        raw = await self.repository.redis.get(keys.label_vector(item_id))
        try:
            if raw is not None and not VectorRecord.decode(raw).catalogue:
                return []
        except ValueError:  # unreadable: whoever wrote it, the item's tombstone clears it
            pass
        return keys.of_post(item_id)

    async def dead_letter(self, record: ConsumerRecord, error: BadInput) -> None:
        """One letter per bad record: a record an earlier version's group lettered (each group reads the whole
        topic again) is skipped."""
        key, mark = self.repository.keys.catalogue_lettered, _letter_mark(record)
        redis = self.repository.redis
        if await self.retrying("catalogue_letters", lambda: redis.sismember(key, mark)):
            self.skip(record, error)
            return
        await super().dead_letter(record, error)
        await self.retrying("catalogue_letters", lambda: redis.sadd(key, mark))

    async def _listed(self, item_id: str) -> bool:
        return await self.repository.listed(item_id) or await _listed_before(self.repository, item_id)

    async def _label(self, items: list[tuple[ConsumerRecord, Post]]) -> None:
        loop, predictor = asyncio.get_running_loop(), self.predictor
        prepared = await loop.run_in_executor(self._pool, self._prepare, [post for _, post in items])
        ready = []
        for (record, post), image in zip(items, prepared):
            if isinstance(image, BadInput):
                await self.dead_letter(record, image)
            else:
                ready.append((record, post, *image))
        if not ready:
            return
        scores = await loop.run_in_executor(self._pool, self._infer, [image for _, _, image, _ in ready])
        posts = [post for _, post, _, _ in ready]
        labels = predictor.label_json(scores, [p.post_id for p in posts], [_received_ms(r) for r, *_ in ready])
        vectors = _vector_records(scores, posts, predictor.version)
        prints = await self.retrying("catalogue_fingerprints", lambda: self._fingerprints(ready))
        batch, kept, kept_ids = self.sink.batch(predictor.version), [], []
        for n, ((record, post, _, preview), label) in enumerate(zip(ready, labels)):
            if isinstance(label, BadInput):
                await self.dead_letter(record, label)
                continue
            batch.add(post.post_id, label, prints[n], record.partition, vectors.get(n), preview)
            kept.append(record)
            kept_ids.append(post.post_id)
        if kept:  # an item sent again after its shop removed it may join the repository again
            ids = [post.post_id for (_, post, _, _) in ready]
            await self.retrying("catalogue_restore", lambda: self.repository.restore_items(ids, predictor.version))
        stored = await self.retrying("label_write", batch.flush) if kept else []
        listed = [item_id for item_id, value in zip(kept_ids, stored) if value is not None]
        await self.retrying("catalogue_listed", lambda: self.repository.mark_listed(listed))
        for record, value in zip(kept, stored):
            if value is None:
                await self.dead_letter(record, BadInput("duplicate_post_id", "item id was labelled from other content"))
                continue
            self.done(record)
            self.labelled.inc()

    async def _fingerprints(self, ready: list[tuple]) -> list[str]:
        """Per item, the fingerprint to store its label under: :func:`item_fingerprint`, or the whole record's
        where the stored label has that one (labelled before items were fingerprinted without their time)."""
        keys = self.settings.redis.keys
        async with self.repository.redis.pipeline(transaction=False) as pipe:
            for _, post, *_ in ready:
                pipe.hget(keys.post_meta(post.post_id), "fingerprint")
            stored = await pipe.execute()
        out = []
        for (record, post, *_), have in zip(ready, stored):
            whole = fingerprint(record.value)
            out.append(whole if have is not None and have.decode() == whole else item_fingerprint(post))
        return out

    def _prepare(self, posts: list[Post]) -> list:
        """Per item, its image ready for the model and what the review page shows of it, or why it is refused."""
        out = []
        for post in posts:
            try:
                data = load_bytes(post.image, self.settings)
                limit = self.settings.limits.max_image_pixels
                out.append((self.predictor.prepare(data, max_pixels=limit),
                            make_preview(data, post.caption, max_pixels=limit)))
            except BadInput as exc:
                out.append(exc)
        return out

    def _infer(self, images: list) -> Scores:
        staged = self.predictor.stage(images, [None] * len(images))
        return self.predictor.infer(staged, embeddings=True)

    async def tick(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.settings.serving.model_poll_s
        try:
            raw = await self.lookups.current_model()
            version = check_version_name(raw) if raw else None
        except RedisError:
            self.metrics.infra_errors.labels(self.name, "model_pointer").inc()
            return
        except (ValueError, UnicodeDecodeError):  # the classifier logs and counts a bad pointer
            return
        if version and version != self.predictor.version and (
                version not in self.refused or version_fingerprint(self.settings, version) != self.refused[version]):
            log.info("catalogue: serving pointer moved to %s; leaving the %s group", version, self.group_suffix)
            super().stop()
            self.next_version = version

    def stop(self) -> None:
        """Stop for good (SIGTERM, a test): no next version."""
        self.next_version = None
        super().stop()

    async def shutdown(self) -> None:
        await self.sink.close()
        await self.lookups.close()
        await self.repository.redis.aclose()
        self._pool.shutdown()


class CatalogueWorker:
    """Runs the catalogue stage of the serving model version, then the next version's after each hot-swap."""

    name = "catalogue"

    def __init__(self, settings: Settings, *, metrics: StageMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or StageMetrics(self.name)
        self.heartbeat = Heartbeat(60.0)
        self.removed, self.labelled = removals(self.metrics), labellings(self.metrics)
        self.stage: CatalogueStage | None = None
        self.versions: list[str] = []  # served so far, in order
        self._stopping = False

    def serve_health(self, port: int) -> int:
        """``/metrics``, ``/healthz``, ``/readyz`` of whichever stage runs now."""
        server = HealthServer(self.metrics.registry, heartbeat=self.heartbeat,
                              ready=lambda: self.stage is not None and self.stage.ready,
                              problem=lambda: self.stage.stuck() if self.stage is not None else None)
        return server.start(port, self.settings.metrics.health_host)

    async def run(self) -> None:
        loop, refused = asyncio.get_running_loop(), {}
        lookups = RedisLookups(self.settings)
        try:
            wanted = await lookups.current_model()
        finally:
            await lookups.close()
        while not self._stopping:
            predictor, failed = await loop.run_in_executor(None, load_last_good, self.settings, wanted, self.metrics)
            refused.update({v: version_fingerprint(self.settings, v) for v in failed})
            self.metrics.model.info({"version": predictor.version, "head": predictor.head, "runtime": predictor.runtime})
            if self._stopping:
                return
            self.stage = CatalogueStage(self.settings, predictor, refused=refused, removed=self.removed,
                                        labelled=self.labelled, metrics=self.metrics)
            self.stage.heartbeat = self.heartbeat
            self.versions.append(predictor.version)
            await self.stage.run()
            wanted = self.stage.next_version
            if wanted is None:
                return

    def stop(self) -> None:
        self._stopping = True
        if self.stage is not None:
            self.stage.stop()


def labellings(metrics: StageMetrics) -> Counter:
    """The counter of catalogue items labelled, on ``metrics``' registry (once per registry)."""
    return Counter("stylestream_catalogue_items_labeled_total",
                   "Catalogue items labelled (each version labels the catalogue again)", registry=metrics.registry)


def removals(metrics: StageMetrics) -> Counter:
    """The counter of catalogue items removed, on ``metrics``' registry (once per registry)."""
    return Counter("stylestream_catalogue_items_removed_total",
                   "Catalogue items their shop removed (tombstones on the catalogue topic)", registry=metrics.registry)


async def _listed_before(repository: ProfileWriter, item_id: str) -> bool:
    """Items labelled before shops' ids were kept in a set: their vector record says whether they are items."""
    [raw] = await repository.vectors([item_id])
    try:
        return raw is not None and VectorRecord.decode(raw).catalogue
    except ValueError:
        return False  # no evidence of a shop's item


def _letter_mark(record: ConsumerRecord) -> str:
    # Position, time and content: a broker that restarted empty reuses offsets for other records.
    digest = hashlib.sha256((record.key or b"") + b"\0" + (record.value or b"")).hexdigest()[:16]
    return f"{record.partition}:{record.offset}:{record.timestamp}:{digest}"


def item_fingerprint(post: Post) -> str:
    """Identity of a catalogue item's content: everything but ``created_at``, which every send stamps anew. The
    same item sent again (``catalogue add`` of one photo twice; the record compaction kept, read by a new
    version's group) is then a redo of its label, not a conflicting duplicate."""
    content = post.model_dump(mode="json", by_alias=True, exclude={"created_at"})
    return fingerprint(json.dumps(content, sort_keys=True, separators=(",", ":")).encode())


def _keyed(record: ConsumerRecord, post: Post) -> Post:
    """The item, if keyed by its id: tombstones and compaction go by the key, so an item under another key could
    never be removed (its record outlives every tombstone of its id, and each new version labels it again)."""
    if record.key != post.post_id.encode():
        raise BadInput("bad_key", f"a catalogue item is keyed by its post_id {post.post_id!r}")
    return post


def _received_ms(record: ConsumerRecord) -> int:
    """The record's broker timestamp, or now when a producer set one no ``datetime`` can hold."""
    if record.timestamp is None or not 0 <= record.timestamp <= _MAX_TIMESTAMP_MS:
        return int(time.time() * 1000)
    return record.timestamp


def _vector_records(scores: Scores, posts: list[Post], version: str) -> dict[int, bytes]:
    """Per item index with an embedding, its vector record, marked as a catalogue item."""
    if scores.embeddings is None or not scores.rows:
        return {}
    chosen = [posts[i] for i in scores.rows]
    records = encode_embeddings([p.post_id for p in chosen], [p.user for p in chosen],
                                [int(p.created_at.timestamp() * 1000) for p in chosen], version,
                                scores.embeddings[:, None, :], catalogue=True)
    return dict(zip(scores.rows, records))


def run(settings: Settings) -> None:
    """Run one catalogue consumer until SIGTERM/SIGINT."""
    worker = CatalogueWorker(settings)
    worker.serve_health(settings.metrics.stage_port("catalogue"))
    asyncio.run(worker.run())
