"""What a correction may name follows the kind of model the trainer's next run continues; the review page and
the trainer ask the same question."""

from __future__ import annotations

import asyncio

from redis.exceptions import ConnectionError as RedisConnectionError

from streamcore.settings import Settings
from tests.support import publish_tiny
from training.continued import continued_entry, learns_multi
from workers.ui.corrections import corrections_multi


class _Pointer:
    """An async Redis stand-in holding only the serving pointer (or failing)."""

    def __init__(self, value: bytes | None, *, fails: bool = False) -> None:
        self.value, self.fails = value, fails

    async def get(self, key: str) -> bytes | None:
        if self.fails:
            raise RedisConnectionError("Redis away")
        return self.value


def test_a_correction_may_name_several_garments_for_the_packaged_model_and_one_for_a_single_label_one(tmp_path):
    settings = Settings.named(model_dir=tmp_path)
    assert learns_multi(settings, None)  # nothing published: the packaged multi-label model serves and is continued
    assert learns_multi(settings, "v-gone")  # a pointer to nothing: as when nothing is promoted
    assert not learns_multi(settings.replace(trainer_start_from="benchmark"), None)  # the benchmark's kind
    assert learns_multi(settings.replace(trainer_start_from="benchmark", trainer_multi=True), None)
    assert asyncio.run(corrections_multi(settings, _Pointer(None)))

    publish_tiny(tmp_path, "single")  # a single-label (benchmark) model
    assert continued_entry(settings, "single").version == "single" and not learns_multi(settings, "single")
    # Published but never promoted: classifiers serve the newest version, and runs continue it.
    assert continued_entry(settings, None).version == "single" and not learns_multi(settings, None)
    assert not asyncio.run(corrections_multi(settings, _Pointer(b"single")))
    assert not asyncio.run(corrections_multi(settings, _Pointer(b"x", fails=True)))  # Redis away: what serves
