"""Throughput of ONE profiles stage (``labels`` in, profiles and repositories in Redis) on the embedded broker.

    .venv/bin/python -m workers.benchmarks.profiles --labels 3000 --users 300 --out reports/bench_profiles.json

Labels and their vector records (1280-float embeddings, as the served model writes them) go through the
real label sink before the stage starts, so it sees a full backlog; the rate is labels over the time from
its first to its last finished label. A fresh profile is recomputed for every new post of its user (up to
``profile_max_posts`` members), so posts per user is the knob that matters: the default, 10, is a user
whose profile holds ten posts by the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from streamcore.embedded import EmbeddedStack
from streamcore.helptext import parser_options
from streamcore.kafka import ensure_topics, make_producer
from streamcore.reports import write_report
from streamcore.settings import Settings
from streamcore.sinks import LabelSink, fingerprint
from training.recommend.vectors import VectorRecord
from workers.profiles import ProfilesStage

COMMAND = ".venv/bin/python -m workers.benchmarks.profiles"
_LABEL = ('{{"schema":"label/v1","post_id":"{p}","model_version":"bench","head":"fusion",'
          '"categories":[{{"term":"tops_and_tshirts","score":0.9}},{{"term":"bags","score":0.6}}],'
          '"subcategories":[{{"term":"t_shirt","score":0.7}}],"attributes":[{{"term":"striped","score":0.8}}],'
          '"hints_used":{{"source":"none","categories":[]}},"received_at":"2024-05-01T00:00:00+00:00",'
          '"labeled_at":"2024-05-01T00:00:00+00:00"}}')


async def _backlog(settings: Settings, labels: int, users: int) -> None:
    producer = make_producer(settings)
    await producer.start()
    sink, rng = LabelSink(settings, producer), np.random.default_rng(0)
    try:
        for start in range(0, labels, 256):
            batch = sink.batch("bench")
            for n in range(start, min(labels, start + 256)):
                emb = rng.standard_normal((1, 1280)).astype(np.float16)
                record = VectorRecord(f"p{n}", f"user{n % users}", n * 1000, "bench", emb).encode()
                batch.add(f"p{n}", _LABEL.format(p=f"p{n}").encode(), fingerprint(str(n).encode()),
                          n % settings.kafka.partitions, record)
            await batch.flush()
    finally:
        await sink.close()
        await producer.stop()


def measure(settings: Settings, labels: int, users: int) -> dict:
    asyncio.run(_backlog(settings, labels, users))
    stage = ProfilesStage(settings)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(stage.run(),))
    thread.start()
    done = stage.outcomes.labels("added")
    first = None
    try:
        deadline = time.monotonic() + 600
        while done._value.get() < labels and time.monotonic() < deadline:
            if first is None and done._value.get() > 0:
                first = (time.monotonic(), done._value.get())
            time.sleep(0.01)
        last = (time.monotonic(), done._value.get())
    finally:
        loop.call_soon_threadsafe(stage.stop)
        thread.join(timeout=60)
    if first is None or last[1] == first[1]:
        raise ValueError(f"{labels} labels were profiled in one round of the stage: too few to time")
    rate = (last[1] - first[1]) / max(1e-9, last[0] - first[0])
    recompute = stage.recomputed.collect()[0].samples
    total = next(s.value for s in recompute if s.name.endswith("_sum"))
    count = next(s.value for s in recompute if s.name.endswith("_count"))
    return {"labels": labels, "users": users, "labels_per_s": round(rate, 1), "finished": int(last[1]),
            "profile_update_ms_mean": round(1000 * total / max(1, count), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(**parser_options("stylestream bench profiles", __doc__))
    parser.add_argument("--labels", type=int, default=3000)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("reports/bench_profiles.json"))
    args = parser.parse_args(argv)
    with EmbeddedStack() as stack:
        run = uuid.uuid4().hex[:8]
        settings = Settings.named(kafka=stack.bootstrap, redis_url=stack.redis_url, topic_prefix=f"b{run}.",
                            group_prefix=f"b{run}", redis_prefix=f"b{run}", metrics_port=0)
        ensure_topics(settings)
        result = measure(settings, args.labels, args.users)
    print(json.dumps(result))
    write_report(args.out, result, command=f"{COMMAND} --labels {args.labels} --users {args.users}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
