"""A classifier (re)started while the serving pointer names a corrupt checkpoint serves the last good one.

Worker processes started the way operators start them; the registry and Redis are the test's own.
"""

from __future__ import annotations

import json

import pytest
import redis

from serving.checkpoint import WEIGHTS_FILE
from streamcore.serde import encode
from tests.integration.test_faults import _assert_caught_up, _good_posts, _metric, _produce
from tests.support import publish_tiny, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _labelled(store: redis.Redis, settings, posts) -> dict[str, str]:
    """post_id → model version of its stored label, for the posts labelled so far."""
    values = store.mget([settings.redis.keys.label(p.post_id) for p in posts])
    return {p.post_id: json.loads(v)["model_version"] for p, v in zip(posts, values) if v is not None}


def test_a_restart_under_a_corrupt_pointer_serves_the_last_good_version(make_settings, workers):
    settings = make_settings(hint_wait_ms=200, model_poll_s=0.5)
    publish_tiny(settings.serving.model_dir, "v1-served", seed=1)
    publish_tiny(settings.serving.model_dir, "v2-unserved", seed=2)  # newer and valid, but never served
    store = redis.Redis.from_url(settings.redis.url)
    store.set(settings.redis.keys.model_current, "v1-served")
    group = workers(settings)
    first = group.start("classify")
    group.wait_ready()
    before = _good_posts(settings, 10, seed=41, tag="before")
    _produce(settings, [(p.post_id, encode(p), None) for p in before])
    wait_until(lambda: len(_labelled(store, settings, before)) == len(before), timeout=120, what="labels by v1")

    bad = publish_tiny(settings.serving.model_dir, "v3-corrupt", seed=3)
    weights = bytearray((bad.path / WEIGHTS_FILE).read_bytes())
    weights[len(weights) // 2] ^= 0xFF  # a bit flipped on disk after publication
    (bad.path / WEIGHTS_FILE).write_bytes(bytes(weights))
    store.set(settings.redis.keys.model_current, "v3-corrupt")
    wait_until(lambda: _metric(group.metrics(first), "stylestream_model_swaps_total") >= 1, timeout=60,
               what="the live swap to the corrupt version to be refused")
    assert 'version="v1-served"' in group.metrics(first)

    first.kill()  # a node restart, an OOM kill, a deploy: the pointer still names the corrupt version
    first.wait()
    second = group.start("classify")
    group.wait_ready()
    text = group.metrics(second)
    assert _metric(text, "stylestream_model_bad_pointer_total") == 1
    assert 'version="v1-served"' in text
    after = _good_posts(settings, 20, seed=42, tag="after")
    _produce(settings, [(p.post_id, encode(p), None) for p in after])
    wait_until(lambda: len(_labelled(store, settings, after)) == len(after), timeout=120,
               what="every post labelled after the restart")
    assert set(_labelled(store, settings, before + after).values()) == {"v1-served"}
    _assert_caught_up(settings, {"classify": ("posts",)})
    text = group.metrics(second)
    assert _metric(text, "stylestream_model_bad_pointer_total") == 1  # counted once, not once per poll
    assert _metric(text, "stylestream_model_swaps_total") == 0  # the bad version is not tried again live
    assert second.poll() is None
