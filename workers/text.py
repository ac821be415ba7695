"""Text stage: ``posts`` → text miner → ``hints`` (keyed by post_id, at-least-once).

Work per post is bounded by the normaliser's caps, and a round is mined in chunks of
``text_chunk_posts`` posts, each chunk's hints shipped before the next is mined: a flood of heavy posts
delays the posts behind it by the flood's mining time only, and the loop keeps its heartbeats.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from aiokafka.structs import ConsumerRecord

from serving.ontology import load_ontology
from streamcore.exceptions import BadInput
from streamcore.schemas import Hints, Post
from streamcore.serde import decode_post, encode
from streamcore.settings import Settings
from streamcore.stage import Stage
from training.text import TextMiner

log = logging.getLogger(__name__)


class TextStage(Stage):
    """Mines each post's caption, comments, hashtags and user tags into a ``hints/v1`` event."""

    name = "text"
    inputs = ("posts",)
    outputs = ("hints", "posts.dlq")

    async def setup(self) -> None:
        loop = asyncio.get_running_loop()
        self.miner = await loop.run_in_executor(None, TextMiner.load, load_ontology())

    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        good = []
        for record in records:
            try:
                good.append((record, decode_post(record.value, self.settings.limits)))
            except BadInput as exc:  # the classifier owns a bad post's dead letter (README "Dead-letter reasons")
                self.skip(record, exc)
            except Exception as exc:  # noqa: BLE001 - the error boundary: this record fails alone
                await self.fail(record, exc)
        size = self.settings.text.chunk_posts
        for start in range(0, len(good), size):
            await self._mine(good[start:start + size])

    def _unmined(self, record: ConsumerRecord, post: Post, exc: Exception) -> Hints:
        """Empty hints for a post the miner raised on: a miner bug, not a bad post.

        The classifier owns a post's dead letter and labels this one as a post with silent text; empty
        hints spare it the wait for hints that will never come. The traceback and a counter tell the operator.
        """
        log.error("text: the miner failed on %s[%d]@%d (post %r); its hints are empty", record.topic,
                  record.partition, record.offset, post.post_id, exc_info=exc)
        self.metrics.mine_failures.inc()
        return Hints(post_id=post.post_id, miner_version=self.miner.version)

    async def _mine(self, chunk: list[tuple[ConsumerRecord, Post]]) -> None:
        # Mining is CPU work: keep it off the event loop so heartbeats keep flowing.
        started = time.perf_counter()
        results = await asyncio.get_running_loop().run_in_executor(None, _mine_each, self.miner,
                                                                   [post for _, post in chunk])
        self.metrics.mine_seconds.inc(time.perf_counter() - started)
        self.metrics.mined.inc(len(chunk))
        mined = []
        for (record, post), result in zip(chunk, results):
            if isinstance(result, Exception):
                result = self._unmined(record, post, result)
            mined.append((record, post, result))
        # Same partition number as the post: the classifier that owns the post owns its hints, even
        # when a producer keyed the post by something other than its id.
        messages = [(record.partition, post.post_id.encode(), encode(h)) for record, post, h in mined]
        await self.retrying("hints_write", lambda: self.send_to_partitions("hints", messages))
        for record, _, _ in mined:
            self.done(record)


def _mine_each(miner: TextMiner, posts: list[Post]) -> list[Hints | Exception]:
    """Hints per post, or the exception mining it raised (one post's bug must not cost the others)."""
    out: list[Hints | Exception] = []
    for post in posts:
        try:
            out.append(miner.mine(post))
        except Exception as exc:  # noqa: BLE001 - returned: the caller sends empty hints
            out.append(exc)
    return out


def run(settings: Settings) -> None:
    """Run one text-stage consumer until SIGTERM/SIGINT."""
    stage = TextStage(settings)
    stage.serve_health(settings.metrics.stage_port("text"))
    asyncio.run(stage.run())
