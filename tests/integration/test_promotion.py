"""Promotion moves the Redis pointer and announces it; rollback goes back one promotion."""

from __future__ import annotations

import pytest
import redis
from typer.testing import CliRunner

from serving.promotion import promote, rollback
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
