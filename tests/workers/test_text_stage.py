"""The text stage's error boundary: a miner that raises on one post costs that post its hints, not a letter."""

from __future__ import annotations

import asyncio
import json

from aiokafka.structs import ConsumerRecord

from streamcore.schemas import Hints
from streamcore.settings import Settings
from workers.text import TextStage


class _Miner:
    """Raises on the posts named ``boom``; names dresses otherwise."""

    version = "text-miner/test"

    def mine(self, post):
        if post.post_id.startswith("boom"):
            raise RuntimeError("miner bug")
        return Hints(post_id=post.post_id, miner_version=self.version,
                     categories=[{"term": "dresses", "score": 1.0}])


def _record(offset: int, post_id: str) -> ConsumerRecord:
    value = json.dumps({"schema": "post/v1", "post_id": post_id, "user": "ana", "caption": "new dress",
                        "image": {"url": "https://example.com/a.jpg"},
                        "created_at": "2026-01-01T00:00:00Z"}).encode()
    return ConsumerRecord("posts", 0, offset, 0, 0, post_id.encode(), value, None, len(value), len(value), ())


def _run(stage: TextStage, records: list[ConsumerRecord]) -> tuple[list, list, list]:
    sent, done, letters = [], [], []

    async def send_to_partitions(topic, messages):
        sent.extend((topic, partition, key, Hints.model_validate_json(value)) for partition, key, value in messages)

    async def dead_letter(record, error):
        letters.append((record.offset, error.code))

    stage.send_to_partitions = send_to_partitions
    stage.dead_letter = dead_letter
    stage.done = lambda record: done.append(record.offset)
    asyncio.run(stage.handle(records))
    return sent, done, letters


def test_a_post_the_miner_raises_on_gets_empty_hints_and_no_dead_letter():
    stage = TextStage(Settings())
    stage.miner = _Miner()
    sent, done, letters = _run(stage, [_record(0, "look-1"), _record(1, "boom-2"), _record(2, "look-3")])
    assert letters == []
    assert sorted(done) == [0, 1, 2]
    by_post = {hints.post_id: hints for _, _, _, hints in sent}
    assert set(by_post) == {"look-1", "boom-2", "look-3"}
    assert by_post["boom-2"].is_empty and by_post["boom-2"].miner_version == "text-miner/test"
    assert not by_post["look-1"].is_empty
    assert stage.metrics.mine_failures._value.get() == 1
