"""Labels → profiles → recommendations on the embedded broker and Redis.

A real classifier is slow on a 2-core machine, so most tests here stand in for it at its output (the last
one runs it, with the tiny test model): labels and fashion vector records go through the real label sink (:class:`streamcore.sinks.LabelSink`, which writes
the label, its vector record beside it and the ``labels`` topic exactly as the classifier's batches do),
with synthetic image embeddings: one cluster per kind of garment. Everything after the sink is real: the
profiles stage consuming ``labels``, its Redis scripts, the per-version index and the recommender.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import numpy as np
import pytest

from streamcore.kafka import make_producer
from streamcore.redisconn import connect
from streamcore.sinks import LabelSink, fingerprint
from tests.support import running_stage, wait_until
from training.recommend.service import Recommender
from training.recommend.vectors import VectorRecord
from workers.profiles import ProfilesStage

pytestmark = pytest.mark.integration

#: Kinds of repository item: label terms (category, sub-category, attributes) and embedding cluster.
KINDS = {
    "striped-top": ({"tops_and_tshirts": 0.9}, {"t_shirt": 0.7}, {"striped": 0.85, "cotton": 0.5}, "top"),
    "plain-top": ({"tops_and_tshirts": 0.9}, {"t_shirt": 0.7}, {"plain": 0.8, "cotton": 0.6}, "top"),
    "leather-bag": ({"bags": 0.9}, {"handbag": 0.7}, {"leather": 0.85}, "bag"),
    "jeans": ({"jeans": 0.9}, {"skinny_jeans": 0.6}, {"denim": 0.9}, "jeans"),
    "sneakers": ({"shoes": 0.9}, {"sneaker": 0.8}, {"synthetic": 0.6}, "shoe"),
}
#: Ana's photos: a striped top and a leather bag, the top filling most of the picture.
OUTFIT = ({"tops_and_tshirts": 0.9, "bags": 0.7}, {"t_shirt": 0.6}, {"striped": 0.8, "leather": 0.6})


def _terms(scores: dict[str, float]) -> list[dict]:
    return [{"term": t, "score": s} for t, s in sorted(scores.items(), key=lambda x: -x[1])]


def _label(post_id: str, version: str, cats: dict, subs: dict, atts: dict) -> bytes:
    now = datetime(2024, 5, 1, tzinfo=UTC).isoformat()
    return json.dumps({"schema": "label/v1", "post_id": post_id, "model_version": version, "head": "fusion",
                       "categories": _terms(cats), "subcategories": _terms(subs), "attributes": _terms(atts),
                       "hints_used": {"source": "none", "categories": []}, "received_at": now,
                       "labeled_at": now}, separators=(",", ":")).encode()


class Space:
    """One model version's embedding space: a random unit centre per cluster."""

    def __init__(self, dim: int, seed: int) -> None:
        self.dim, self.rng = dim, np.random.default_rng(seed)
        self.centres = {c: self._unit(self.rng.standard_normal(dim)) for c in ("top", "bag", "jeans", "shoe")}

    @staticmethod
    def _unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x)

    def embed(self, mix: dict[str, float]) -> np.ndarray:
        x = sum(w * self.centres[c] for c, w in mix.items()) + 0.15 * self.rng.standard_normal(self.dim)
        return self._unit(x)[None].astype(np.float16)


def _posts(version: str, space: Space, *, per_kind: int = 12) -> list[tuple[str, str, bytes, np.ndarray]]:
    """``(post id, user, label, embedding)``: the shops' catalogue, then Ana's three outfit photos."""
    out = []
    for kind, (cats, subs, atts, cluster) in KINDS.items():
        for n in range(per_kind):
            post_id = f"{kind}-{n}"
            out.append((post_id, f"shop-{n % 3}", _label(post_id, version, cats, subs, atts), space.embed({cluster: 1})))
    for n in range(3):
        out.append((f"ana-{n}", "ana", _label(f"ana-{n}", version, *OUTFIT), space.embed({"top": 1, "bag": 0.45})))
    return out


async def _classifier_output(settings, version: str, posts) -> None:
    """What the classifier's batches hand the sink: labels with their vector records, one flush."""
    producer = make_producer(settings)
    await producer.start()
    sink = LabelSink(settings, producer)
    try:
        batch = sink.batch(version)
        for n, (post_id, user, label, embedding) in enumerate(posts):
            record = VectorRecord(post_id, user, 1_714_521_600_000 + n * 3_600_000, version, embedding).encode()
            batch.add(post_id, label, fingerprint(post_id.encode()), n % settings.kafka.partitions, record)
        await batch.flush()
    finally:
        await sink.close()
        await producer.stop()




def _count(stage: ProfilesStage, outcome: str) -> int:
    return int(stage.outcomes.labels(outcome)._value.get())


def _state(settings) -> dict[bytes, object]:
    """Every profile and repository key under the test's prefix, with its full contents."""
    redis, out = connect(settings.redis), {}
    for key in redis.scan_iter(match=f"{{{settings.redis.prefix}:*"):
        kind = redis.type(key)
        out[key] = (redis.get(key) if kind == b"string" else redis.hgetall(key) if kind == b"hash"
                    else redis.zrange(key, 0, -1, withscores=True) if kind == b"zset"
                    else redis.smembers(key) if kind == b"set" else redis.xlen(key))
    return {k: v for k, v in out.items() if b":user:" in k or b":repo:" in k}


def test_a_striped_top_and_leather_bag_user_gets_both_and_a_replay_changes_no_byte(make_settings) -> None:
    """Ana posts three photos of a striped top with a leather bag (labels and vector records made as the
    classifier makes them, through its sink); the real profiles stage and recommender do the rest."""
    settings = make_settings()
    posts = _posts("v1", Space(32, seed=1))
    asyncio.run(_classifier_output(settings, "v1", posts))
    with running_stage(ProfilesStage(settings)) as stage:
        wait_until(lambda: _count(stage, "added") == len(posts), timeout=60, what="every label in a profile")
    recommender = Recommender(settings)
    recommender.sync()

    diverse = recommender.recommend("ana", 10)
    kinds = [item.post_id.rsplit("-", 1)[0] for item in diverse.items]
    assert diverse.model_version == "v1" and len(kinds) == 10
    assert "striped-top" in kinds and "leather-bag" in kinds, kinds
    assert not any(item.user == "ana" for item in diverse.items)  # never her own photos
    why = {(item.facet, tuple(item.terms)) for item in diverse.items}
    assert ("upper", ("tops_and_tshirts", "striped", "t_shirt")) in why and ("bag", ("bags", "leather")) in why
    plain = recommender.recommend("ana", 10, ranking="plain")
    assert "leather-bag" not in [i.post_id.rsplit("-", 1)[0] for i in plain.items]  # what diversity adds

    before = _state(settings)
    assert len(before) > 10
    replay = ProfilesStage(settings.replace(group_prefix=settings.kafka.group_prefix + "-replay"))
    with running_stage(replay):
        wait_until(lambda: _count(replay, "already_added") == len(posts), timeout=60, what="the replay")
        assert _count(replay, "added") == 0
    assert _state(settings) == before


def test_a_post_that_names_no_user_is_recommended_to_others_and_joins_no_profile(make_settings) -> None:
    """An empty ``user`` is a valid post, but nobody can ask for that name's recommendations: its post goes into
    the repository as a post (not as a shop's item, which a tombstone could remove) and into no profile."""
    from training.recommend.store import Keys

    settings = make_settings()
    posts = [*_posts("v1", Space(32, seed=4), per_kind=4),
             ("anon-0", "", _label("anon-0", "v1", *KINDS["leather-bag"][:3]), Space(32, seed=4).embed({"bag": 1}))]
    asyncio.run(_classifier_output(settings, "v1", posts))
    with running_stage(ProfilesStage(settings)) as stage:
        wait_until(lambda: _count(stage, "added") == len(posts), timeout=60, what="every label added")
    redis, keys = connect(settings.redis), Keys(settings.redis.prefix)
    assert not any(redis.exists(key) for key in keys.user("", "v1"))
    assert redis.sismember(keys.repo("v1")[0], "anon-0") and not redis.sismember(keys.repo_catalogue("v1")[0], "anon-0")
    recommender = Recommender(settings)
    recommender.sync()
    assert recommender.profile("ana", "v1").posts == 3
    liked = recommender.more_like_this("leather-bag-0", 10, ranking="plain")
    assert "anon-0" in {item.post_id for item in liked.items}


def test_a_hot_swap_to_another_embedding_space_rebuilds_without_mixing(make_settings, tmp_path) -> None:
    settings = make_settings()
    redis = connect(settings.redis)
    old, new = _posts("v1", Space(32, seed=1)), _posts("v2", Space(48, seed=2))
    asyncio.run(_classifier_output(settings, "v1", old))
    redis.set(settings.redis.keys.model_current, "v1")
    with running_stage(ProfilesStage(settings)) as stage:
        wait_until(lambda: _count(stage, "added") == len(old), timeout=60, what="v1 labels in profiles")
        recommender = Recommender(settings, index_dir=tmp_path / "index")
        recommender.sync()
        assert recommender.recommend("ana").model_version == "v1"

        redis.set(settings.redis.keys.model_current, "v2")  # the promotion: new labels come in v2's space
        asyncio.run(_classifier_output(settings, "v2", new[:20]))
        wait_until(lambda: _count(stage, "added") == len(old) + 20, timeout=60, what="the first v2 labels")
        assert recommender.sync()["v2"] == 20
        filling = [recommender.recommend("ana"), recommender.more_like_this("striped-top-0")]
        assert [a.model_version for a in filling] == ["v1", "v1"]  # v2's index is not ready: v1 answers whole
        assert all(len(a.items) == 10 for a in filling)

        asyncio.run(_classifier_output(settings, "v2", new[20:]))  # the rest, re-embedded by the new model
        wait_until(lambda: _count(stage, "added") == len(old) + len(new), timeout=60, what="every v2 label")
    recommender.sync()
    assert {v: len(i) for v, i in recommender.indexes.items()} == {"v1": len(old), "v2": len(new)}
    assert recommender.indexes["v2"].dim == 48 + recommender.layout.size
    swapped = recommender.recommend("ana")
    kinds = {item.post_id.rsplit("-", 1)[0] for item in swapped.items}
    assert swapped.model_version == "v2" and {"striped-top", "leather-bag"} <= kinds

    recommender.save()  # a restart loads the snapshots; a rebuild reads the streams from the start
    restarted, rebuilt = Recommender(settings, index_dir=tmp_path / "index"), Recommender(settings)
    restarted.sync()
    rebuilt.sync()
    assert restarted.indexes["v2"].cursor == recommender.indexes["v2"].cursor
    assert restarted.recommend("ana") == rebuilt.recommend("ana") == swapped


def test_the_cli_answers_for_a_user_and_for_a_post(make_settings, tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from workers.cli import app

    settings = make_settings()
    posts = _posts("v1", Space(32, seed=3), per_kind=4)
    asyncio.run(_classifier_output(settings, "v1", posts))
    with running_stage(ProfilesStage(settings)) as stage:
        wait_until(lambda: _count(stage, "added") == len(posts), timeout=60, what="every label in a profile")
    for name, value in {"REDIS_URL": settings.redis.url, "REDIS_PREFIX": settings.redis.prefix,
                        "RECOMMEND_INDEX_DIR": str(tmp_path / "index")}.items():
        monkeypatch.setenv(f"STYLESTREAM_{name}", value)
    runner = CliRunner()
    for_user = runner.invoke(app, ["recommend", "ana", "--k", "4"])
    assert for_user.exit_code == 0, for_user.output
    answer = json.loads(for_user.output)
    assert answer["query"] == "user:ana" and answer["model_version"] == "v1" and len(answer["items"]) == 4
    assert {"post_id", "user", "score", "facet", "terms"} <= answer["items"][0].keys()
    assert (tmp_path / "index" / "v1" / "meta.json").exists()  # the snapshot the next call starts from
    like = json.loads(runner.invoke(app, ["recommend", "--like", "leather-bag-0", "--k", "3"]).output)
    assert like["items"][0]["post_id"].startswith("leather-bag") and like["items"][0]["facet"] == "bag"


def test_the_classifier_writes_each_posts_vector_record_and_the_stage_profiles_it(make_settings) -> None:
    """The one test here with the real classifier (the tiny test model) in front: posts in, records out."""
    import base64
    from pathlib import Path

    from kafka import KafkaProducer

    from streamcore.schemas import ImageSource, Post
    from streamcore.serde import encode
    from training.real.fixture import FIXTURE_DIR
    from workers.classify.stage import ClassifyStage

    settings = make_settings(hint_wait_ms=0)
    photos = sorted((FIXTURE_DIR / "images").glob("*.jpg"))[:3]
    posts = [Post(post_id=f"real-{n}", created_at=datetime(2024, 5, n + 1, tzinfo=UTC), user=f"user {n % 2}",
                  image=ImageSource(b64=base64.b64encode(Path(p).read_bytes()).decode())) for n, p in enumerate(photos)]
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
    for post in posts:
        producer.send(settings.kafka.topic("posts"), key=post.post_id.encode(), value=encode(post))
    producer.flush()
    producer.close()
    with running_stage(ClassifyStage(settings)) as classify:
        wait_until(lambda: classify.metrics.labeled._value.get() == 3, timeout=120, what="three labels")
    redis = connect(settings.redis)
    records = [VectorRecord.decode(redis.get(settings.redis.keys.label_vector(p.post_id))) for p in posts]
    assert [(r.user, r.created_ms) for r in records] == [(p.user, int(p.created_at.timestamp() * 1000)) for p in posts]
    assert {r.model_version for r in records} == {"tiny-test"} and records[0].embedding.shape == (1, 128)
    with running_stage(ProfilesStage(settings)) as stage:  # the tiny model never abstains: every label has a garment
        wait_until(lambda: _count(stage, "added") == 3, timeout=60, what="profiles")
    profiles = [Recommender(settings).profile(user, "tiny-test") for user in ("user 0", "user 1")]
    assert [p.posts for p in profiles] == [2, 1]


def test_the_profiles_benchmark_measures_every_label_of_its_backlog(make_settings) -> None:
    """The measurement behind reports/bench_profiles.json, small: a backlog of labels with 1280-wide vectors."""
    from workers.benchmarks.profiles import measure

    result = measure(make_settings(fetch_max_records=100), 600, 60)  # several rounds: a rate to measure
    assert result["finished"] == 600 and result["labels_per_s"] > 0 and result["profile_update_ms_mean"] > 0


async def _foreign_labels(settings, records: list[tuple[int, str, bytes]]) -> None:
    """``(partition, post id, value)`` records on ``labels`` from a producer that is not the classifier."""
    producer = make_producer(settings)
    await producer.start()
    try:
        for partition, post_id, value in records:
            await producer.send_and_wait(settings.kafka.topic("labels"), value, key=post_id.encode(), partition=partition)
    finally:
        await producer.stop()


def test_a_label_on_the_topic_adds_only_what_the_classifier_stored(make_settings) -> None:
    """Records for Ana's posts in the serving version, ahead of the classifier's on their partitions, with other
    terms, a NaN score, a score above 1: her profile and the repository keep the stored labels' vectors (a post's
    first add stays for good). A stored label whose scores are not probabilities adds nothing."""
    from serving.ontology import load_ontology
    from training.recommend.profile import Member
    from training.recommend.store import Keys
    from training.recommend.vectors import Layout

    settings, space = make_settings(), Space(32, seed=4)
    posts = [(f"ana-{n}", "ana", _label(f"ana-{n}", "v1", *OUTFIT), space.embed({"top": 1})) for n in range(4)]
    forged = [_label("ana-0", "v1", {"bags": 0.99}, {"handbag": 0.9}, {"leather": 0.9}),
              _label("ana-1", "v1", {"tops_and_tshirts": float("nan")}, {}, {}),
              _label("ana-2", "v1", {"tops_and_tshirts": 7.5}, {}, {"striped": 1.5})]
    asyncio.run(_foreign_labels(settings, [(n % settings.kafka.partitions, f"ana-{n}", raw)
                                           for n, raw in enumerate(forged)]))
    asyncio.run(_classifier_output(settings, "v1", posts))
    redis = connect(settings.redis)
    redis.set(settings.redis.keys.label("ana-3"), _label("ana-3", "v1", {"jeans": float("inf")}, {}, {}))
    with running_stage(ProfilesStage(settings)) as stage:
        wait_until(lambda: sum(_count(stage, o) for o in ("added", "already_added", "bad_label")) == 7, timeout=60,
                   what="every label taken")
        assert [_count(stage, o) for o in ("added", "already_added", "bad_label")] == [3, 3, 1]
    layout, keys = Layout(load_ontology()), Keys(settings.redis.prefix)
    members = {k.decode(): Member.decode(v) for k, v in redis.hgetall(keys.user("ana", "v1")[1]).items()}
    assert sorted(members) == ["ana-0", "ana-1", "ana-2"]
    for post_id, _, label, _ in posts[:3]:
        stored = layout.label_vector(json.loads(label)).astype(np.float16).astype(np.float32)
        assert np.array_equal(members[post_id].label, stored), post_id
    items = [Member.decode(f[b"item"]) for _, f in redis.xrange(keys.repo("v1")[1])]
    assert sorted(i.record.post_id for i in items) == ["ana-0", "ana-1", "ana-2"]
    assert all(np.array_equal(i.label, members[i.record.post_id].label) for i in items)
    profile = Recommender(settings).profile("ana", "v1")
    assert profile.posts == 3 and np.isfinite(profile.label).all() and profile.label.max() <= 1
