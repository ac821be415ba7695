"""What a rollback goes back to must load; an operator's rollback is their choice; a trainer's promotion never
replaces a version an operator promoted while its run went on."""

from __future__ import annotations

import json

import pytest
import redis

from serving.promotion import PointerMoved, promote, rollback
from streamcore.exceptions import StylestreamError
from streamcore.lease import Lease
from tests.support import publish_tiny

pytestmark = pytest.mark.integration


@pytest.fixture
def three(make_settings, tmp_path):
    """Settings, Redis and versions v1, v2, v3 published (none promoted)."""
    settings = make_settings(model_dir=tmp_path)
    for seed, version in enumerate(("v1", "v2", "v3"), 1):
        publish_tiny(tmp_path, version, seed=seed)
    return settings, redis.Redis.from_url(settings.redis.url)


def _get(store, key: str) -> str | None:
    value = store.get(key)
    return value.decode() if value is not None else None


def test_a_rollback_to_a_version_that_no_longer_loads_moves_nothing(three, tmp_path) -> None:
    settings, store = three
    promote(settings, "v1")
    promote(settings, "v2")
    config = tmp_path / "v1" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "abstain_below": 0.99}))  # fails its checksum
    with pytest.raises(StylestreamError, match="not rolled back: v1 does not load"):
        rollback(settings)
    keys = settings.redis.keys
    assert _get(store, keys.model_current) == "v2" and store.lrange(keys.model_history, 0, -1) == [b"v2", b"v1"]


def test_an_operators_rollback_is_their_choice_and_the_guards_only_replaces_a_rolled_back_choice(three) -> None:
    settings, store = three
    keys = settings.redis.keys
    lease = Lease(store, keys.run_lease, ttl_s=30)
    assert lease.acquire() is not None
    promote(settings, "v1")
    promote(settings, "v2", lease=lease)
    promote(settings, "v3", lease=lease)
    rollback(settings, expected="v3", by_hand=False)  # the guard's, from a trainer's version: the choice stays
    assert _get(store, keys.model_current) == "v2" and _get(store, keys.model_chosen) == "v1"
    rollback(settings)  # the operator's: what serves now is theirs
    assert _get(store, keys.model_current) == "v1" and _get(store, keys.model_chosen) == "v1"
    promote(settings, "v2", lease=lease)
    promote(settings, "v3")  # by hand, then rolled back by the guard: no longer a floor
    rollback(settings, expected="v3", by_hand=False)
    assert _get(store, keys.model_current) == "v2" and _get(store, keys.model_chosen) == "v2"


def test_a_trainer_promotion_never_replaces_a_version_promoted_by_hand_during_its_run(three) -> None:
    settings, store = three
    keys = settings.redis.keys
    lease = Lease(store, keys.run_lease, ttl_s=30)
    assert lease.acquire() is not None
    with pytest.raises(PointerMoved):  # gated against "v1", and nothing serves yet
        promote(settings, "v2", lease=lease, replaces="v1")
    assert _get(store, keys.model_current) is None
    promote(settings, "v1", lease=lease, replaces="")  # gated against the unpromoted model, which still serves
    promote(settings, "v3")  # an operator's choice while the next run trains from v1
    with pytest.raises(PointerMoved):
        promote(settings, "v2", lease=lease, replaces="v1")
    assert _get(store, keys.model_current) == "v3" and store.lrange(keys.model_history, 0, -1) == [b"v3", b"v1"]
