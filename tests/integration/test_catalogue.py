"""Shops' catalogue items on the embedded broker and Redis: the client sends them, the real catalogue stage labels
them with the serving model (the tiny test model), the real profiles stage adds them to the repository, and the
recommending client (and the review page) return them to a user whose posts the real classifier labelled; a shop
removes an item with a tombstone and no answer names it again."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import urlopen

import numpy as np
import pytest
from kafka import KafkaProducer
from PIL import Image
from typer.testing import CliRunner

from streamcore.redisconn import connect, connect_async
from streamcore.schemas import ImageSource, Post
from streamcore.serde import encode
from streamcore.settings import Settings
from tests.support import publish_tiny, running_stage, wait_until
from training.real.fixture import FIXTURE_DIR
from training.recommend.client import RecommendClient
from training.recommend.profile import Member
from training.recommend.service import Recommender
from training.recommend.store import Keys, ProfileWriter, RepoPost
from training.recommend.vectors import VectorRecord
from workers.catalogue import CatalogueWorker
from workers.cli import app
from workers.profiles import ProfilesStage
from workers.ui.server import serving
from workers.ui.sheets import CELL

pytestmark = pytest.mark.integration

PHOTOS = sorted((FIXTURE_DIR / "images").glob("*.jpg"))


def _count(stage: ProfilesStage, outcome: str) -> int:
    return int(stage.outcomes.labels(outcome)._value.get())


def _labelled(worker: CatalogueWorker) -> int:
    assert worker.metrics.labeled._value.get() == 0  # posts' counter: alerts watch the classifier's alone
    return int(worker.labelled._value.get())


def _add_items(settings, photos: list[Path]) -> list[str]:
    with RecommendClient(settings) as client:
        ids = [client.add_catalogue_item(p, title=f"item {n}", shop="atelier").post_id for n, p in enumerate(photos)]
    assert len(set(ids)) == len(photos)
    return ids


def _post_photos(settings, user: str, photos: list[Path]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
    for n, photo in enumerate(photos):
        post = Post(post_id=f"{user}-{n}", created_at=datetime(2024, 5, n + 1, tzinfo=UTC), user=user,
                    image=ImageSource(b64=base64.b64encode(photo.read_bytes()).decode()))
        producer.send(settings.kafka.topic("posts"), key=post.post_id.encode(), value=encode(post))
    producer.flush()
    producer.close()


def test_catalogue_items_are_labelled_indexed_and_recommended(make_settings, tmp_path) -> None:
    from workers.classify.stage import ClassifyStage

    settings = make_settings(hint_wait_ms=0, ui_port=0, recommend_index_dir=tmp_path / "index")
    _post_photos(settings, "ana", PHOTOS[:3])
    items = _add_items(settings, PHOTOS[3:7])
    with running_stage(ProfilesStage(settings)) as profiles:
        with running_stage(ClassifyStage(settings)) as classify:
            wait_until(lambda: classify.metrics.labeled._value.get() == 3, timeout=120, what="ana's labels")
        with running_stage(CatalogueWorker(settings)) as catalogue:
            wait_until(lambda: _labelled(catalogue) == 4, timeout=120, what="the items' labels")
        wait_until(lambda: (_count(profiles, "added"), _count(profiles, "catalogue_item")) == (3, 4), timeout=60,
                   what="posts in the profile, items in the repository")
    redis = connect(settings.redis)
    record = VectorRecord.decode(redis.get(settings.redis.keys.label_vector(items[0])))
    assert record.catalogue and record.user == "atelier" and record.model_version == "tiny-test"
    assert redis.xlen(Keys(settings.redis.prefix).repo("tiny-test")[1]) == 7

    with RecommendClient(settings) as client:
        answer = client.recommend("ana", 4)
        assert answer.model_version == "tiny-test"
        assert sorted(i.post_id for i in answer.items) == sorted(items)  # her own posts never come back
        assert all(i.catalogue and i.user == "atelier" for i in answer.items)
        like = client.more_like_this("ana-0", 6)
        assert {i.post_id for i in like.items} == {*items, "ana-1", "ana-2"}
        assert [i.catalogue for i in like.items if i.post_id.startswith("ana")] == [False, False]
    assert Recommender(settings).profile("atelier", "tiny-test") is None  # a shop's items make no profile
    with serving(settings) as url:  # the review page's "more like this", with the items' thumbnails
        page = json.loads(urlopen(f"{url}api/recommend?like=ana-0&k=6", timeout=30).read())
        assert len(page["items"]) == 6 and sum(i["catalogue"] for i in page["items"]) == 4
        with urlopen(f"{url}api/thumb/{items[0]}", timeout=10) as thumb:
            assert thumb.headers["content-type"] == "image/jpeg"
        with urlopen(f"{url}api/thumbs?ids={items[0]},{items[1]},nobody", timeout=10) as sheet:  # the live list's
            assert sheet.headers["content-type"] == "image/jpeg"
            assert Image.open(io.BytesIO(sheet.read())).size == (3 * CELL[0], CELL[1])
        for refused_url in ("api/recommend?like=ana-0&user=ana", "api/thumbs?ids=a,b%2Fc", "api/thumbs?ids=" + ",".join(
                "x" * 13)):
            with pytest.raises(HTTPError) as refused:
                urlopen(f"{url}{refused_url}", timeout=10)
            assert refused.value.code == 400


def test_a_hot_swap_labels_the_whole_catalogue_again_in_the_new_space(make_settings) -> None:
    settings = make_settings(model_poll_s=0.5)
    publish_tiny(settings.serving.model_dir, "tiny-next", seed=1)
    redis = connect(settings.redis)
    redis.set(settings.redis.keys.model_current, "tiny-test")
    items = _add_items(settings, PHOTOS[:4])
    with running_stage(ProfilesStage(settings)) as profiles, running_stage(CatalogueWorker(settings)) as catalogue:
        wait_until(lambda: _count(profiles, "catalogue_item") == 4, timeout=120, what="the items in tiny-test")
        redis.set(settings.redis.keys.model_current, "tiny-next")  # the promotion
        wait_until(lambda: _count(profiles, "catalogue_item") == 8, timeout=120, what="the items again, in tiny-next")
        assert catalogue.versions == ["tiny-test", "tiny-next"]
        assert catalogue.stage.group_suffix == "catalogue-tiny-next"
    keys = Keys(settings.redis.prefix)
    assert [redis.xlen(keys.repo(v)[1]) for v in ("tiny-test", "tiny-next")] == [4, 4]
    assert {VectorRecord.decode(redis.get(settings.redis.keys.label_vector(i))).model_version for i in items} == {"tiny-next"}
    with RecommendClient(settings) as client:
        answer = client.more_like_this(items[0], 3)
    assert answer.model_version == "tiny-next" and len(answer.items) == 3  # one space: the new one, whole


def test_the_same_photo_added_twice_is_one_item_in_every_version_and_a_foreign_key_is_refused(make_settings) -> None:
    settings = make_settings(model_poll_s=0.5)
    publish_tiny(settings.serving.model_dir, "tiny-next", seed=1)
    redis, keys = connect(settings.redis), Keys(settings.redis.prefix)
    redis.set(settings.redis.keys.model_current, "tiny-test")
    items = _add_items(settings, PHOTOS[:2])
    assert _add_items(settings, PHOTOS[:1]) == items[:1]  # the same photo, shop and title; sent later
    # A producer's typo: keyed item-a, naming item-b (whose tombstones, keyed item-b, could never remove it).
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
    post = Post(post_id="item-b", created_at=datetime(2024, 5, 1, tzinfo=UTC), user="atelier",
                image=ImageSource(b64=base64.b64encode(PHOTOS[2].read_bytes()).decode()))
    producer.send(settings.kafka.topic("catalogue"), key=b"item-a", value=encode(post))
    producer.close()
    with running_stage(ProfilesStage(settings)) as profiles, running_stage(CatalogueWorker(settings)) as catalogue:
        letters = catalogue.metrics.dead_letters
        wait_until(lambda: (_labelled(catalogue), letters.labels("catalogue", "bad_key")._value.get()) == (3, 1),
                   timeout=120, what="both adds labelled, the foreign key refused")
        wait_until(lambda: _count(profiles, "catalogue_item") == 2, timeout=60, what="two items in tiny-test")
        redis.set(settings.redis.keys.model_current, "tiny-next")  # its group reads both adds again
        wait_until(lambda: _labelled(catalogue) == 6, timeout=120, what="both adds labelled in tiny-next")
        wait_until(lambda: _count(profiles, "catalogue_item") == 4, timeout=60, what="the items in tiny-next")
        assert letters.labels("catalogue", "duplicate_post_id")._value.get() == 0
        # tiny-next's group read the foreign-keyed record again: lettered once, by tiny-test's, then skipped.
        skipped = catalogue.metrics.skipped.labels("catalogue", "bad_key")
        wait_until(lambda: skipped._value.get() == 1, timeout=60, what="the lettered record skipped")
        assert letters.labels("catalogue", "bad_key")._value.get() == 1
    assert {i for i in items if redis.sismember(keys.repo("tiny-next")[0], i)} == set(items)
    assert redis.get(settings.redis.keys.label("item-b")) is None


def test_a_removed_item_leaves_the_repository_and_every_answer_and_may_be_listed_again(make_settings) -> None:
    settings = make_settings()
    items = _add_items(settings, PHOTOS[:4])
    redis, keys = connect(settings.redis), Keys(settings.redis.prefix)
    env = {"STYLESTREAM_KAFKA": settings.kafka.bootstrap, "STYLESTREAM_TOPIC_PREFIX": settings.kafka.topic_prefix}
    with running_stage(ProfilesStage(settings)) as profiles, running_stage(CatalogueWorker(settings)) as catalogue:
        wait_until(lambda: _count(profiles, "catalogue_item") == 4, timeout=120, what="the items in the repository")
        with RecommendClient(settings) as client:  # an index built before the removal, caught up after it
            assert items[0] in {i.post_id for i in client.more_like_this(items[1], 3).items}
            redis.delete(settings.redis.keys.label_vector(items[0]))  # as the label's TTL would: still the shop's item
            removed = CliRunner().invoke(app, ["catalogue", "remove", items[0]], env=env)
            assert removed.exit_code == 0 and removed.stdout.strip() == f"removal of {items[0]} sent", removed.output
            wait_until(lambda: catalogue.removed._value.get() == 1, timeout=60, what="the removal")
            # The tombstone seen again (a resend, a new version's replay) is done with, and removes nothing more;
            # the id is no longer the shop's, so a post given it later would not be removed by it.
            done = catalogue.metrics.processed.labels("catalogue")
            before = done._value.get()
            client.remove_catalogue_item(items[0]).wait()
            wait_until(lambda: done._value.get() == before + 1, timeout=60, what="the tombstone seen again")
            assert catalogue.removed._value.get() == 1 and not redis.sismember(keys.catalogue_items, items[0])
            assert catalogue.metrics.dead_letters.labels("catalogue", "not_catalogue_item")._value.get() == 0
            assert [i.post_id for i in client.more_like_this(items[1], 3).items] != [] and items[0] not in {
                i.post_id for i in client.more_like_this(items[1], 3).items}
            assert client.more_like_this(items[0], 3).items == []
        assert redis.get(settings.redis.keys.label(items[0])) is None
        assert redis.get(settings.redis.keys.label_vector(items[0])) is None
        # A label of it still on its way (redelivered to the profiles stage) does not bring it back.
        assert redis.sismember(keys.repo("tiny-test")[2], items[0]) and not redis.sismember(keys.repo("tiny-test")[0],
                                                                                            items[0])
        assert _add_items(settings, PHOTOS[:1]) == items[:1]  # listed again: the same photo, the same id
        wait_until(lambda: _count(profiles, "catalogue_item") == 5, timeout=120, what="the item back")
    fields = [entry[1] for entry in redis.xrange(keys.repo("tiny-test")[1])]
    assert [(f[b"post_id"].decode(), b"removed" in f) for f in fields[4:]] == [(items[0], True), (items[0], False)]
    with RecommendClient(settings) as client:  # a fresh index, rebuilt from the stream
        assert items[0] in {i.post_id for i in client.more_like_this(items[1], 3).items}
    bad = CliRunner().invoke(app, ["catalogue", "remove", items[1], "not an id"], env=env)  # nothing is sent
    assert bad.exit_code != 0 and "not a post id" in bad.output and "sent" not in bad.output


def test_a_removal_naming_a_post_is_dead_lettered_and_the_post_stays(make_settings) -> None:
    from workers.classify.stage import ClassifyStage

    settings = make_settings(hint_wait_ms=0)
    _post_photos(settings, "ana", PHOTOS[:1])
    redis = connect(settings.redis)
    with running_stage(ClassifyStage(settings)) as classify:
        wait_until(lambda: classify.metrics.labeled._value.get() == 1, timeout=120, what="ana's label")
    # Neither a post whose vector record is gone (expired, or never written) nor one not labelled yet is the
    # shop's to drop.
    redis.delete(settings.redis.keys.label_vector("ana-0"))
    with RecommendClient(settings) as client:
        client.remove_catalogue_item("ana-0")
        client.remove_catalogue_item("ana-1")
    with running_stage(CatalogueWorker(settings)) as catalogue:
        wait_until(lambda: catalogue.metrics.dead_letters.labels("catalogue", "not_catalogue_item")._value.get() == 2,
                   timeout=60, what="the removals dead-lettered")
        assert catalogue.removed._value.get() == 0
    assert redis.get(settings.redis.keys.label("ana-0")) is not None
    assert not any(redis.sismember(key, "ana-1") for key in redis.scan_iter(f"*{settings.redis.prefix}:repo:*:removed"))


def test_a_removal_of_an_item_given_a_posts_expired_id_leaves_the_post_in_the_repository(make_settings) -> None:
    """Post ana-0 joins the repository; its label, meta and vector record expire; a shop sends an item with the same
    id (labelled: nothing is left to conflict with), then removes it. The repository's entry is the post's: the
    tombstone is dead-lettered and neither the post nor its stream entry goes."""
    from tests.integration.test_recommend_stream import OUTFIT, Space, _classifier_output, _label

    settings = make_settings()
    redis, keys = connect(settings.redis), Keys(settings.redis.prefix)
    post = ("ana-0", "ana", _label("ana-0", "tiny-test", *OUTFIT), Space(128, seed=0).embed({"top": 1}))
    asyncio.run(_classifier_output(settings, "tiny-test", [post]))
    with running_stage(ProfilesStage(settings)) as profiles:
        wait_until(lambda: _count(profiles, "added") == 1, timeout=60, what="ana's post in the repository")
        redis.delete(*settings.redis.keys.of_post("ana-0"))  # as the label's TTL would
        item = Post(post_id="ana-0", created_at=datetime(2024, 6, 1, tzinfo=UTC), user="atelier",
                    image=ImageSource(b64=base64.b64encode(PHOTOS[0].read_bytes()).decode()))
        producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
        producer.send(settings.kafka.topic("catalogue"), key=b"ana-0", value=encode(item))
        producer.send(settings.kafka.topic("catalogue"), key=b"ana-0", value=None)
        producer.close()
        with running_stage(CatalogueWorker(settings)) as catalogue:
            letters = catalogue.metrics.dead_letters.labels("catalogue", "not_catalogue_item")
            wait_until(lambda: letters._value.get() + catalogue.removed._value.get() == 1, timeout=120,
                       what="the removal taken")
            assert (_labelled(catalogue), letters._value.get(), catalogue.removed._value.get()) == (1, 1, 0)
        wait_until(lambda: _count(profiles, "already_added") == 1, timeout=60, what="the item's label taken")
    ids, stream, removed = keys.repo("tiny-test")
    assert redis.sismember(ids, "ana-0") and not redis.sismember(removed, "ana-0")
    assert [(f[b"post_id"], f[b"user"]) for _, f in redis.xrange(stream)] == [(b"ana-0", b"ana")]
    assert not redis.exists(keys.repo_catalogue("tiny-test")[0])


def test_a_removal_of_an_item_whose_id_a_post_took_since_leaves_the_posts_label(make_settings) -> None:
    """Item ana-0 is labelled and joins the repository; its label keys expire; a post takes the id and is labelled;
    then the shop removes the item. The item leaves the repository; the post's label stays."""
    from tests.integration.test_recommend_stream import OUTFIT, Space, _classifier_output, _label

    settings = make_settings()
    redis, keys = connect(settings.redis), settings.redis.keys
    item = Post(post_id="ana-0", created_at=datetime(2024, 6, 1, tzinfo=UTC), user="atelier",
                image=ImageSource(b64=base64.b64encode(PHOTOS[0].read_bytes()).decode()))
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
    producer.send(settings.kafka.topic("catalogue"), key=b"ana-0", value=encode(item))
    producer.flush()
    with running_stage(CatalogueWorker(settings)) as catalogue:
        wait_until(lambda: _labelled(catalogue) == 1, timeout=120, what="the item labelled")
        redis.delete(*keys.of_post("ana-0"))  # as the label's TTL would
        post = ("ana-0", "ana", _label("ana-0", "tiny-test", *OUTFIT), Space(128, seed=0).embed({"top": 1}))
        asyncio.run(_classifier_output(settings, "tiny-test", [post]))
        producer.send(settings.kafka.topic("catalogue"), key=b"ana-0", value=None)
        producer.close()
        wait_until(lambda: catalogue.removed._value.get() == 1, timeout=60, what="the removal taken")
    assert json.loads(redis.get(keys.label("ana-0")))["post_id"] == "ana-0"
    assert VectorRecord.decode(redis.get(keys.label_vector("ana-0"))).user == "ana"


def _entry(post_id: str, user: str, *, catalogue: bool) -> bytes:
    record = VectorRecord(post_id, user, 1_714_521_600_000, "v0", np.ones((1, 4), np.float16) / 2, catalogue)
    return Member(np.zeros(4, np.float32), record).encode()


def test_a_repository_written_before_catalogue_membership_was_kept_removes_its_items_only(infra) -> None:
    """Old data: a repository without the catalogue set. A tombstone finds its items on the stream (once), removes
    them, and leaves posts (one of them holding an id an item was labelled under later) where they are."""
    settings = Settings.named(redis_url=infra[1], redis_prefix=f"r{uuid.uuid4().hex[:8]}")
    keys, redis = Keys(settings.redis.prefix), connect(settings.redis)
    entries = [("p-1", "ana", False), ("item-1", "atelier", True), ("item-2", "atelier", True), ("p-2", "ana", False)]

    async def run() -> list:
        old, writer = (ProfileWriter(connect_async(settings.redis), settings.redis.prefix) for _ in range(2))
        try:
            await old.add([RepoPost(p, u, "v0", 0, None if c else b"m", _entry(p, u, catalogue=c), c)
                           for p, u, c in entries], 200)
            await old.add([RepoPost("p-2", "atelier", "v0", 0, None, _entry("p-2", "atelier", catalogue=True), True)],
                          200)
            await old.remove_item("item-2", [])
            redis.delete(*keys.repo_catalogue("v0"))  # what a repository written before the set looks like
            return [await writer.remove_item(i, [keys.label(i)]) for i in ("item-1", "p-1", "p-2", "item-2")]
        finally:
            await old.redis.aclose()
            await writer.redis.aclose()

    redis.set(keys.label("p-2"), b"the shop's label")
    assert asyncio.run(run()) == [(1, 0), (0, 1), (0, 1), (0, 0)]
    assert redis.smembers(keys.repo("v0")[0]) == {b"p-1", b"p-2"} and redis.get(keys.label("p-2"))
    assert redis.smembers(keys.repo_catalogue("v0")[0]) == set() and redis.get(keys.repo_catalogue("v0")[1]) == b"1"


def test_a_version_refused_at_start_is_served_once_its_files_are_repaired(make_settings) -> None:
    settings = make_settings()
    publish_tiny(settings.serving.model_dir, "v2", seed=5)
    config = settings.serving.model_dir / "v2" / "config.json"
    good = config.read_text()
    config.write_text(good + " ")  # fails its checksum
    connect(settings.redis).set(settings.redis.keys.model_current, "v2")
    with running_stage(CatalogueWorker(settings)) as worker:
        wait_until(lambda: worker.stage is not None and worker.stage.ready, timeout=60, what="the stage running")
        assert worker.versions == ["tiny-test"]  # the last good one
        config.write_text(good)  # repaired
        wait_until(lambda: worker.versions[-1] == "v2", timeout=60, what="the repaired version served")
