"""The recommender over a real Redis: which version answers, snapshots that cannot be loaded, and what it refuses."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import redis

from serving.ontology import load_ontology
from streamcore.redisconn import connect_async
from streamcore.settings import Settings
from tests.support import one_line
from training.recommend.client import RecommendClient
from training.recommend.index import VersionIndex
from training.recommend.profile import Member, aggregate
from training.recommend.ranking import joint
from training.recommend.service import RANKINGS, Recommender, answer
from training.recommend.store import Keys, ProfileWriter, RepoPost, user_tag
from training.recommend.vectors import Layout, VectorRecord

LAYOUT = Layout(load_ontology())
#: 2001-01-01: a post far older than any the test adds now.
LONG_AGO_MS = 978_307_200_000


def _post(post_id: str, user: str, version: str, created_ms: int, dim: int, rng: np.random.Generator) -> tuple:
    embedding = rng.standard_normal((1, dim)).astype(np.float32)
    label = np.zeros(LAYOUT.size, np.float32)
    label[rng.integers(0, 13)] = 0.9
    member = Member(label, VectorRecord(post_id, user, created_ms, version,
                                        (embedding / np.linalg.norm(embedding)).astype(np.float16))).encode()
    return RepoPost(post_id, user, version, created_ms, member, member)


def _add(settings: Settings, posts: list[tuple], profiles: tuple[str, ...] = ()) -> None:
    """Posts into profiles and repositories as the profiles stage adds them, then the named users' profiles."""
    async def run() -> None:
        writer = ProfileWriter(connect_async(settings.redis), settings.redis.prefix)
        try:
            await writer.add(posts, 200)
            for user, version in {(p[1], p[2]) for p in posts if p[1] in profiles}:
                rev, raw = await writer.members(user, version)
                profile = aggregate([Member.decode(m) for m in raw], user=user, half_life_s=86_400)
                await writer.set_profile(user, version, rev, profile.encode())
        finally:
            await writer.redis.aclose()

    asyncio.run(run())


@pytest.fixture
def settings(infra) -> Settings:
    return Settings.named(redis_url=infra[1], redis_prefix=f"r{uuid.uuid4().hex[:8]}")


def test_a_new_version_whose_first_post_is_old_waits_until_its_repository_is_ready(settings) -> None:
    rng, now = np.random.default_rng(0), int(time.time() * 1000)
    # Named so that the order of their names is the reverse of the order they were seen in.
    _add(settings, [_post(f"a{i}", f"u{i % 10}", "vb", now + i, 32, rng) for i in range(200)], profiles=("u1",))
    # After the promotion, the new version's first label is of a post created long ago (a replay, a catalogue item).
    _add(settings, [_post("old-1", "u1", "va", LONG_AGO_MS, 48, rng)], profiles=("u1",))
    redis.Redis.from_url(settings.redis.url).set(Keys(settings.redis.prefix).model_current, "va")
    recommender = Recommender(settings)
    recommender.sync()
    assert recommender.versions() == ["vb", "va"]
    assert recommender.ready() == ["vb"]  # one item against 200: still filling
    for got in (recommender.recommend("u1", 10, ranking="plain"), recommender.more_like_this("a5", 10)):
        assert got.model_version == "vb" and len(got.items) == 10

    _add(settings, [_post(f"b{i}", f"u{i % 10}", "va", LONG_AGO_MS + i, 48, rng) for i in range(199)],
         profiles=("u1",))
    recommender.sync()
    assert recommender.ready()[0] == "va" and recommender.recommend("u1", 10).model_version == "va"


def _break_graph_half(folder) -> None:
    graph = folder / "hnsw.bin"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])


def _drop_meta_field(name: str):
    def drop(folder) -> None:
        meta = json.loads((folder / "meta.json").read_text())
        del meta[name]
        (folder / "meta.json").write_text(json.dumps(meta))
    return drop


BREAKAGES = {
    "empty graph": lambda folder: (folder / "hnsw.bin").write_bytes(b""),
    "half a graph": _break_graph_half,
    "empty labels": lambda folder: (folder / "labels.npy").write_bytes(b""),
    "empty vectors": lambda folder: (folder / "vectors.npy").write_bytes(b""),
    "no cursor": _drop_meta_field("cursor"),
    "no digest (an older snapshot)": _drop_meta_field("hnsw_sha256"),
    "meta not an object": lambda folder: (folder / "meta.json").write_text("[1, 2]"),
    "no meta": lambda folder: (folder / "meta.json").unlink(),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_snapshot_that_cannot_be_loaded_is_moved_aside_and_rebuilt(settings, tmp_path, breakage) -> None:
    rng = np.random.default_rng(1)
    _add(settings, [_post(f"a{i}", f"u{i % 5}", "v1", 1_700_000_000_000 + i, 16, rng) for i in range(60)],
         profiles=("u1",))
    first = Recommender(settings, index_dir=tmp_path)
    first.sync()
    first.save()
    BREAKAGES[breakage](tmp_path / "v1")

    again = Recommender(settings, index_dir=tmp_path)
    assert again.sync() == {"v1": 60}  # rebuilt from the stream's start
    assert (tmp_path / "v1.broken").exists() and not (tmp_path / "v1").exists()
    assert again.recommend("u1", 5) == first.recommend("u1", 5)
    again.save()  # a whole snapshot again, which the next start loads
    loaded = Recommender(settings, index_dir=tmp_path)
    assert loaded.sync() == {"v1": 0} and len(loaded.indexes["v1"]) == 60


def test_k_must_be_at_least_one_and_user_names_valid_utf8(settings, tmp_path) -> None:
    rng = np.random.default_rng(2)
    _add(settings, [_post(f"a{i}", f"u{i % 5}", "v1", 1_700_000_000_000 + i, 16, rng) for i in range(30)],
         profiles=("u1",))
    recommender = Recommender(settings)
    recommender.sync()
    with RecommendClient(settings, index_dir=tmp_path) as client:
        for ask in (recommender, client):
            for k in (0, -1, -5):
                with pytest.raises(ValueError, match="k must be"):
                    ask.recommend("u1", k, ranking="plain")
                with pytest.raises(ValueError, match="k must be"):
                    ask.more_like_this("a5", k, ranking="plain")
            with pytest.raises(ValueError, match="not valid UTF-8"):
                ask.recommend("u1\udcff", 3)
            assert len(ask.recommend("u1", 1).items) == 1
    with pytest.raises(ValueError, match="not valid UTF-8"):
        user_tag("ana\udcff")


@pytest.mark.parametrize("ranking", RANKINGS)
def test_every_ranking_returns_k_items_when_the_index_holds_them(ranking: str) -> None:
    rng, n, dim = np.random.default_rng(3), 260, 8
    labels = np.zeros((n, LAYOUT.size), np.float32)
    labels[np.arange(n), rng.integers(0, 13, n)] = 0.9
    embeddings = rng.standard_normal((n, dim)).astype(np.float32)
    index = VersionIndex("v1", dim + LAYOUT.size, LAYOUT.size)
    index.add([f"p{i}" for i in range(n)], ["u"] * n, joint(embeddings, labels), labels.astype(np.float16))
    query_label = labels[0] + labels[1]
    for k, exclude in ((150, {0, 1}), (258, {0, 1}), (1000, set())):
        got = answer(LAYOUT, "q", index, embeddings[:1], query_label, k, ranking, exclude)
        ids = [item.post_id for item in got.items]
        assert len(ids) == min(k, n - len(exclude)) and len(set(ids)) == len(ids)
        assert not {f"p{i}" for i in exclude} & set(ids)


def test_the_cli_refuses_a_user_name_that_is_not_utf8() -> None:
    from typer.testing import CliRunner

    from workers.cli import app

    for args in (["recommend", "ana\udcff"], ["recommend", "--like", "look\udcff"]):
        refused = CliRunner().invoke(app, args)
        assert refused.exit_code == 2 and "not valid UTF-8" in refused.output, refused.output
        assert "Traceback" not in refused.output
    both = CliRunner().invoke(app, ["recommend", "ana", "--like", "look"])  # which one is asked: refused
    assert both.exit_code == 2 and "not both" in both.output, both.output


def _snapshot_of(settings, index_dir, count: int, *, seed: int) -> tuple[np.random.Generator, int]:
    """Posts a0.. of u1 in v1, indexed and saved under ``index_dir``; the generator and time to add more."""
    rng, now = np.random.default_rng(seed), int(time.time() * 1000)
    _add(settings, [_post(f"a{i}", "u1", "v1", now + i, 32, rng) for i in range(count)])
    first = Recommender(settings, index_dir=index_dir)
    first.sync()
    first.save()
    return rng, now


def test_a_snapshot_of_another_repository_is_not_loaded(settings, tmp_path) -> None:
    rng, now = _snapshot_of(settings, tmp_path, 30, seed=3)
    # The same version name in another repository: another prefix (or this Redis restarted empty).
    other = Settings.named(redis_url=settings.redis.url, redis_prefix=settings.redis.prefix + "x")
    _add(other, [_post(f"b{i}", "u2", "v1", now + i, 32, rng) for i in range(5)])
    second = Recommender(other, index_dir=tmp_path)
    assert second.sync() == {"v1": 5}  # built from its own stream, every item read
    got = second.more_like_this("b1", 10, ranking="plain")
    assert {item.post_id for item in got.items} == {f"b{i}" for i in (0, 2, 3, 4)}
    again = Recommender(settings, index_dir=tmp_path)  # its own snapshot still loads for the first repository
    assert again.sync() == {"v1": 0}  # loaded, already caught up: not rebuilt
    assert len(again.indexes["v1"]) == 30


def test_the_cli_says_in_one_line_that_the_index_folder_is_a_file(settings, tmp_path) -> None:
    rng = np.random.default_rng(7)
    _add(settings, [_post(f"a{i}", "u1", "v1", int(time.time() * 1000) + i, 32, rng) for i in range(5)])
    (tmp_path / "file").write_text("not a folder")
    env = {**os.environ, "STYLESTREAM_REDIS_URL": settings.redis.url, "STYLESTREAM_REDIS_PREFIX": settings.redis.prefix,
           "STYLESTREAM_RECOMMEND_INDEX_DIR": str(tmp_path / "file")}
    result = subprocess.run([sys.executable, "-m", "workers.cli", "recommend", "u1"], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert "file" in one_line(result)


def _keys_of(settings: Settings) -> list[bytes]:
    return list(redis.Redis.from_url(settings.redis.url).scan_iter(match=f"*{settings.redis.prefix}*"))


def test_an_index_in_memory_is_rebuilt_when_redis_was_emptied_under_it(settings) -> None:
    """A long-lived recommender (the review page's) never answers with items the repository no longer holds."""
    rng, now = np.random.default_rng(5), int(time.time() * 1000)
    _add(settings, [_post(f"old{i}", "u1", "v1", now + i, 32, rng) for i in range(20)])
    recommender = Recommender(settings)
    assert recommender.sync() == {"v1": 20}
    redis.Redis.from_url(settings.redis.url).delete(*_keys_of(settings))  # Redis restarted empty, say
    assert recommender.sync() == {} and recommender.more_like_this("old1").reason == "no_ready_version"
    _add(settings, [_post(f"new{i}", "u2", "v1", now + i, 32, rng) for i in range(5)])
    assert recommender.sync() == {"v1": 5}
    got = recommender.more_like_this("new1", 10, ranking="plain")
    assert {item.post_id for item in got.items} == {f"new{i}" for i in (0, 2, 3, 4)}


def test_a_snapshot_whose_cursor_is_past_the_stream_is_rebuilt(settings, tmp_path) -> None:
    rng, now = _snapshot_of(settings, tmp_path, 10, seed=6)
    meta = json.loads((tmp_path / "v1" / "meta.json").read_text())
    (tmp_path / "v1" / "meta.json").write_text(json.dumps({**meta, "cursor": "9999999999999-0"}))
    _add(settings, [_post("later", "u1", "v1", now + 20, 32, rng)])  # would be skipped from a cursor past it
    again = Recommender(settings, index_dir=tmp_path)
    assert again.sync() == {"v1": 11} and "later" in again.indexes["v1"].post_ids


def test_an_empty_answer_says_why(settings) -> None:
    assert Recommender(settings).recommend("anyone").reason == "no_ready_version"
    rng, now = np.random.default_rng(4), int(time.time() * 1000)
    _add(settings, [_post(f"a{i}", f"u{i % 3}", "v1", now + i, 32, rng) for i in range(20)], profiles=("u1",))
    recommender = Recommender(settings)
    recommender.sync()
    assert recommender.recommend("nobody").reason == "no_profile"
    assert recommender.more_like_this("no-such-post").reason == "unknown_post"
    found = recommender.recommend("u1", 5, ranking="plain")
    assert found.reason is None and found.items
