"""Text stage: ``posts`` → text miner → ``hints`` (keyed by post_id, at-least-once)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from aiokafka.structs import ConsumerRecord

from streamcore.exceptions import BadInput
from streamcore.serde import decode_post, encode
from streamcore.settings import Settings
from streamcore.stage import Stage
from training.ontology import load_ontology
from training.text import TextMiner


class TextStage(Stage):
    """Mines each post's caption, comments, hashtags and user tags into a ``hints/v1`` event."""

    name = "text"
    inputs = ("posts",)

    async def setup(self) -> None:
        loop = asyncio.get_running_loop()
        self.miner = await loop.run_in_executor(None, TextMiner.load, load_ontology())

    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        good = []
        for record in records:
            try:
                good.append((record, decode_post(record.value, self.settings)))
            except BadInput as exc:  # the classifier owns a bad post's dead letter (README "Dead-letter reasons")
                self.skip(record, exc)
        if not good:
            return
        # Mining is CPU work: keep it off the event loop so heartbeats keep flowing.
        started = time.perf_counter()
        hints = await asyncio.get_running_loop().run_in_executor(
            None, lambda: [self.miner.mine(post) for _, post in good])
        self.metrics.mine_seconds.inc(time.perf_counter() - started)
        self.metrics.mined.inc(len(good))
        # Same partition number as the post: the classifier that owns the post owns its hints, even
        # when a producer keyed the post by something other than its id.
        await self.send_to_partitions("hints", [(record.partition, post.post_id.encode(), encode(h))
                                                for (record, post), h in zip(good, hints)])
        for record, _ in good:
            self.done(record)


def run(settings: Settings) -> None:
    """Run one text-stage consumer until SIGTERM/SIGINT."""
    stage = TextStage(settings)
    stage.serve_health(settings.stage_metrics_port("text"))
    asyncio.run(stage.run())
