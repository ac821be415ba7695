"""Parsing a round of classifier input: posts and hints validated, every post fingerprinted, off the event loop.

Parsing, validation and the SHA-256 of every post run in parse threads of their own, in chunks, so the
event loop that feeds the model only joins, and a round never queues behind the last round's images;
hashing a photo-sized post releases the GIL.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from aiokafka.structs import ConsumerRecord

from streamcore.schemas import Hints, Post
from streamcore.serde import decode, decode_post
from streamcore.settings import Settings
from streamcore.sinks import fingerprint

#: Records parsed per parse-thread call: enough to amortise the hop, small enough to spread a round.
_CHUNK = 64

Parsed = tuple[Post | Hints | Exception, str]


class Parser:
    """Per record: its validated message (or the exception saying why not) and, for posts, the fingerprint."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._hints_topic = settings.kafka.topic("hints")
        self._pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="parse")

    async def parse(self, records: Sequence[ConsumerRecord]) -> list[Parsed]:
        loop = asyncio.get_running_loop()
        chunks = [records[i : i + _CHUNK] for i in range(0, len(records), _CHUNK)]
        done = await asyncio.gather(*(loop.run_in_executor(self._pool, self._parse_chunk, c) for c in chunks))
        return [entry for chunk in done for entry in chunk]

    def _parse_chunk(self, records: Sequence[ConsumerRecord]) -> list[Parsed]:
        limit = self._settings.limits.max_message_bytes
        out: list[Parsed] = []
        for record in records:
            try:
                if record.topic == self._hints_topic:
                    # Hints may grow (docs/contract.md): a newer miner's extra fields are not this reader's fault.
                    out.append((decode(record.value, Hints, max_bytes=limit, tolerant=True), ""))
                else:
                    out.append((decode_post(record.value, self._settings.limits), fingerprint(record.value)))
            except Exception as exc:  # noqa: BLE001 - handed to the record's own error boundary
                out.append((exc, ""))
        return out

    def close(self) -> None:
        self._pool.shutdown()
