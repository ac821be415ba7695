"""Promotion moves the Redis pointer and announces it; rollback goes back one promotion."""

from __future__ import annotations

import shutil

import pytest
import redis
from typer.testing import CliRunner

from serving.promotion import promote, rollback
from serving.registry import Registry
from streamcore.exceptions import StylestreamError
from streamcore.schemas import ModelUpdate
from tests.integration.test_end_to_end import _read_topic
from tests.support import publish_tiny
from workers.cli import app

pytestmark = pytest.mark.integration


def test_promote_and_rollback(make_settings, tmp_path):
    settings = make_settings(model_dir=tmp_path)
    publish_tiny(tmp_path, "v1", seed=1)
    publish_tiny(tmp_path, "v2", seed=2)
    store = redis.Redis.from_url(settings.redis.url)

    with pytest.raises(KeyError):
        promote(settings, "v3")
    update = promote(settings, "v1")
    assert update.version == "v1" and update.metrics == {"test.P@1": 0.5}
    promote(settings, "v2")
    assert store.get(settings.redis.keys.model_current) == b"v2"
    assert rollback(settings).version == "v1"
    assert store.get(settings.redis.keys.model_current) == b"v1"
    with pytest.raises(StylestreamError, match="nothing to roll back"):
        rollback(settings)

    events = _read_topic(settings, "model-updates", until=lambda rs: len(rs) >= 3, timeout=30)
    assert [ModelUpdate.model_validate_json(r.value).version for r in events] == ["v1", "v2", "v1"]
    assert {r.key for r in events} == {b"stylestream"}


def test_cli_promote_publishes_a_checkpoint_directory(make_settings, tmp_path, monkeypatch):
    settings = make_settings(model_dir=tmp_path / "registry")
    source = publish_tiny(tmp_path / "elsewhere", "trained", seed=3).path
    for key, value in settings.child_env().items():
        if key.startswith("STYLESTREAM_"):
            monkeypatch.setenv(key, value)
    result = CliRunner().invoke(app, ["promote", str(source)])
    assert result.exit_code == 0, result.output
    current = redis.Redis.from_url(settings.redis.url).get(settings.redis.keys.model_current).decode()
    assert (tmp_path / "registry" / current / "model.safetensors").exists()
    assert current in result.output


def test_a_checkpoint_that_does_not_load_is_neither_published_nor_promoted(make_settings, tmp_path):
    settings = make_settings(model_dir=tmp_path / "registry")
    registry = Registry(tmp_path / "registry")
    half = shutil.copytree(publish_tiny(tmp_path / "elsewhere", "trained", seed=3).path, tmp_path / "half")
    weights = half / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(StylestreamError, match="does not load"):
        registry.publish(half, name="half")
    assert registry.versions() == [] and not list(registry.root.glob(".publish-*"))

    publish_tiny(tmp_path / "registry", "v1", seed=1)
    publish_tiny(tmp_path / "registry", "v2", seed=2)
    promote(settings, "v1")
    damaged = tmp_path / "registry" / "v2" / "model.safetensors"
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(StylestreamError, match="v2 does not load"):
        promote(settings, "v2")
    store = redis.Redis.from_url(settings.redis.url)
    assert store.get(settings.redis.keys.model_current) == b"v1"
    assert [v.decode() for v in store.lrange(settings.redis.keys.model_history, 0, -1)] == ["v1"]


def test_cli_promote_refuses_a_truncated_checkpoint_in_one_line(make_settings, tmp_path, monkeypatch):
    settings = make_settings(model_dir=tmp_path / "registry")
    half = shutil.copytree(publish_tiny(tmp_path / "elsewhere", "trained", seed=3).path, tmp_path / "half")
    (half / "model.safetensors").write_bytes(b"\x08")
    for key, value in settings.child_env().items():
        if key.startswith("STYLESTREAM_"):
            monkeypatch.setenv(key, value)
    result = CliRunner().invoke(app, ["promote", str(half)])
    assert result.exit_code == 1 and "does not load" in result.output and "Traceback" not in result.output
    assert redis.Redis.from_url(settings.redis.url).get(settings.redis.keys.model_current) is None


def test_a_promotion_stands_when_announcing_it_fails(make_settings, tmp_path, monkeypatch, caplog):
    from kafka.errors import KafkaConnectionError

    import serving.promotion

    def away(*args, **kwargs):
        raise KafkaConnectionError("no broker")

    settings = make_settings(model_dir=tmp_path)
    publish_tiny(tmp_path, "v1", seed=1)
    monkeypatch.setattr(serving.promotion, "KafkaProducer", away)
    assert promote(settings, "v1").version == "v1"
    assert redis.Redis.from_url(settings.redis.url).get(settings.redis.keys.model_current) == b"v1"
    assert "v1 serves (the pointer moved); announcing it on model-updates failed" in caplog.text


def test_a_promotion_by_hand_is_the_trainers_floor_and_a_trainer_promotion_is_not(make_settings, tmp_path):
    from serving.registry import default_entry
    from streamcore.lease import Lease
    from training.gate_run import chosen_reference

    settings = make_settings(model_dir=tmp_path)
    registry = Registry(tmp_path)
    for seed, version in enumerate(("mine", "trained", "gone"), 1):
        publish_tiny(tmp_path, version, seed=seed)
    store = redis.Redis.from_url(settings.redis.url)
    floor = lambda: chosen_reference(store, settings.redis.keys.model_chosen, registry)
    assert floor().version == default_entry().version  # nothing chosen: the packaged model
    promote(settings, "mine")
    lease = Lease(store, settings.redis.keys.run_lease, ttl_s=30)
    assert lease.acquire() is not None
    promote(settings, "trained", lease=lease)
    assert store.get(settings.redis.keys.model_current) == b"trained"
    assert floor().version == "mine"  # the operator's model, not what the trainer promoted on top of it
    promote(settings, "gone")
    shutil.rmtree(tmp_path / "gone")
    assert floor().version == default_entry().version  # removed since: the packaged model bounds instead
