"""What a correction may name follows the kind of model the trainer's next run continues; the review page and
the trainer ask the same question (the page through the embedded Redis's serving pointer)."""

from __future__ import annotations

import asyncio

import pytest
import redis
from redis.asyncio import Redis

from tests.support import publish_tiny
from training.continued import continued_entry, learns_multi
from workers.ui.corrections import corrections_multi


def _page_asks(settings, url: str) -> bool:
    async def ask() -> bool:
        client = Redis.from_url(url)
        try:
            return await corrections_multi(settings, client)
        finally:
            await client.aclose()

    return asyncio.run(ask())


@pytest.mark.integration  # the page reads the serving pointer from the embedded Redis
def test_a_correction_may_name_several_garments_for_the_packaged_model_and_one_for_a_single_label_one(
        make_settings, tmp_path):
    settings = make_settings(model_dir=tmp_path)
    pointer = redis.Redis.from_url(settings.redis.url)
    assert learns_multi(settings, None)  # nothing published: the packaged multi-label model serves and is continued
    assert learns_multi(settings, "v-gone")  # a pointer to nothing: as when nothing is promoted
    assert not learns_multi(settings.replace(trainer_start_from="benchmark"), None)  # the benchmark's kind
    assert learns_multi(settings.replace(trainer_start_from="benchmark", trainer_multi=True), None)
    assert _page_asks(settings, settings.redis.url)

    publish_tiny(tmp_path, "single")  # a single-label (benchmark) model
    assert continued_entry(settings, "single").version == "single" and not learns_multi(settings, "single")
    # Published but never promoted: classifiers serve the newest version, and runs continue it.
    assert continued_entry(settings, None).version == "single" and not learns_multi(settings, None)
    pointer.set(settings.redis.keys.model_current, "single")
    assert not _page_asks(settings, settings.redis.url)
    assert not _page_asks(settings, "redis://127.0.0.1:9")  # Redis away: what serves with no pointer


def test_a_version_whose_config_cannot_be_read_is_answered_for_as_a_bad_pointer(make_settings, tmp_path):
    settings = make_settings(model_dir=tmp_path)
    publish_tiny(tmp_path, "damaged")  # single-label; the newest, so what serves unpromoted too
    (tmp_path / "damaged" / "config.json").write_text('{"model": {')
    assert learns_multi(settings, "damaged") == settings.trainer.multi  # no traceback, no dead letter
    publish_tiny(tmp_path, "single")
    assert not learns_multi(settings, "damaged")  # as what serves unpromoted: the newest, single-label
