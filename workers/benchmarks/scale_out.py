"""Scale-out on one machine: N text and M classify processes share their stage's consumer group.

    .venv/bin/python -m workers.benchmarks.scale_out --posts 400 --out reports/scale_out.json

Each layout (default: 1+1, then 2+2) runs on fresh topics with ``--partitions`` partitions. The workers
start and the groups settle first (every process logged its assignment, the broker reports all members),
then the posts are produced as a burst. Throughput is posts / (last label's broker timestamp − first
post's), so start-up and group joins do not count. Partition ownership comes from each process's
"STAGE assigned [...]" log line (the embedded broker's DescribeGroups leaves member assignments empty);
member count and group state come from DescribeGroups; each process's share of the work from its own
``/metrics``.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from kafka import KafkaConsumer, KafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from serving.ontology import load_ontology
from streamcore.embedded import EmbeddedStack, free_port, stop_processes
from streamcore.kafka import aiokafka_security, ensure_topics, kafka_python_security
from streamcore.kafka_options import options_for
from streamcore.reports import write_report
from streamcore.sections import STAGE_PORT_OFFSET
from streamcore.serde import encode
from streamcore.settings import Settings
from training.synthetic.posts import generate_posts
from workers.launcher import start_stage

COMMAND = ".venv/bin/python -m workers.benchmarks.scale_out"
_ASSIGNED = re.compile(r"(\w+) assigned (\[.*\])")


@dataclass
class Member:
    """One worker process: its stage, metrics port, log file and latest logged assignment."""

    stage: str
    port: int
    log: Path
    proc: subprocess.Popen
    name: str = ""
    partitions: dict[str, list[int]] = field(default_factory=dict)

    def read_assignment(self, settings: Settings) -> bool:
        """Parse the latest "assigned" line; False until the process has logged one."""
        lines = [m for m in _ASSIGNED.finditer(self.log.read_text(errors="replace")) if m.group(1) == self.stage]
        if not lines:
            return False
        owned: dict[str, list[int]] = {}
        for topic, partition in ast.literal_eval(lines[-1].group(2)):
            owned.setdefault(topic.removeprefix(settings.kafka.topic_prefix), []).append(partition)
        self.partitions = {t: sorted(p) for t, p in sorted(owned.items())}
        return True

    def counters(self) -> dict[str, float]:
        """This process's processed-record and label counters, from its own /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
            text = response.read().decode()
        wanted = {"stylestream_messages_processed_total": "processed", "stylestream_posts_labeled_total": "labelled"}
        values = {v: 0.0 for v in wanted.values()}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in wanted:
                    values[wanted[sample.name]] += sample.value
        return values


def _start(settings: Settings, stage: str, index: int, logs: Path) -> Member:
    port = free_port()
    log = logs / f"{stage}-{index}.log"
    env = {**settings.child_env(), "STYLESTREAM_METRICS_PORT": str(port - STAGE_PORT_OFFSET[stage])}
    with log.open("wb") as out:
        proc = start_stage(stage, env, stdout=out, stderr=subprocess.STDOUT)
    return Member(stage, port, log, proc, name=f"{stage}-{index}")


def _stop(members: Sequence[Member]) -> None:
    stop_processes((m.proc for m in members), timeout=20)


async def _describe(settings: Settings, groups: list[str]) -> dict[str, dict]:
    admin = AIOKafkaAdminClient(**{"bootstrap_servers": settings.kafka.bootstrap,
                                   **options_for(AIOKafkaAdminClient, settings.kafka.options),
                                   **aiokafka_security(settings.security)})
    await admin.start()
    try:
        # One group per request: the embedded broker drops the connection on multi-group DescribeGroups.
        responses = [r for group in groups for r in await admin.describe_consumer_groups([group])]
    finally:
        await admin.close()
    return {g[1]: {"state": g[2], "members": len(g[5])} for r in responses for g in r.groups}


def _settled(settings: Settings, members: Sequence[Member], counts: dict[str, int]) -> bool:
    """Every process logged an assignment, each stage's owners split all partitions, all members joined."""
    if not all(m.read_assignment(settings) for m in members):
        return False
    for stage in counts:
        owned = [p for m in members if m.stage == stage for p in m.partitions.get("posts", [])]
        if sorted(owned) != list(range(settings.kafka.partitions)):
            return False
    groups = asyncio.run(_describe(settings, [settings.kafka.group(s) for s in counts]))
    return all(groups.get(settings.kafka.group(s), {}).get("members") == n and groups[settings.kafka.group(s)]["state"] == "Stable"
               for s, n in counts.items())


def _wait(predicate, timeout: float, what: str, members: Sequence[Member]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(m.proc.poll() is not None for m in members):
            raise RuntimeError(f"a worker exited while waiting for {what}; see its log in {members[0].log.parent}")
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _burst(settings: Settings, count: int, seed: int) -> tuple[int, list[str]]:
    """Produce ``count`` posts; returns the first post's broker timestamp (ms) and the post ids."""
    posts = [p for p, _ in generate_posts(load_ontology(), count, seed=seed, prefix=uuid.uuid4().hex[:8])]
    producer = KafkaProducer(**{"bootstrap_servers": settings.kafka.bootstrap, "acks": "all", "linger_ms": 5,
                                **options_for(KafkaProducer, settings.kafka.options),
                                **kafka_python_security(settings.security)})
    first = producer.send(settings.kafka.topic("posts"), key=posts[0].post_id.encode(), value=encode(posts[0])).get(30)
    for post in posts[1:]:
        producer.send(settings.kafka.topic("posts"), key=post.post_id.encode(), value=encode(post))
    producer.flush()
    producer.close()
    return first.timestamp, [p.post_id for p in posts]


def _labels(settings: Settings, post_ids: list[str], timeout: float) -> list:
    wanted = set(post_ids)
    consumer = KafkaConsumer(settings.kafka.topic("labels"), **{
        "bootstrap_servers": settings.kafka.bootstrap, "auto_offset_reset": "earliest", "enable_auto_commit": False,
        **options_for(KafkaConsumer, settings.kafka.options), **kafka_python_security(settings.security)})
    records, deadline = {}, time.monotonic() + timeout
    try:
        while len(records) < len(wanted) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.update({r.key.decode(): r for r in batch if r.key and r.key.decode() in wanted})
    finally:
        consumer.close()
    if len(records) < len(wanted):
        raise TimeoutError(f"only {len(records)} of {len(wanted)} labels after {timeout:.0f}s")
    return list(records.values())


def run_layout(settings: Settings, *, text: int, classify: int, posts: int, seed: int = 0,
               timeout: float = 300.0) -> dict:
    """Start ``text`` + ``classify`` workers on fresh topics, settle the groups, time a burst of ``posts``.

    Args:
        settings: Kafka/Redis to use; topics get a fresh prefix and ``settings.partitions`` partitions.
        text: text-stage processes.
        classify: classifier processes.
        posts: posts in the timed burst.
        seed: synthetic post seed.
        timeout: bound on group settling and on labelling the burst, each.

    Returns:
        The layout's row: throughput, group states and each member's partitions and work.
    """
    run = uuid.uuid4().hex[:8]
    settings = settings.replace(topic_prefix=f"so{run}.", group_prefix=f"so{run}")
    ensure_topics(settings)
    counts = {"text": text, "classify": classify}
    with tempfile.TemporaryDirectory(prefix="scale-out-") as logs:
        members = [_start(settings, stage, i, Path(logs)) for stage, n in counts.items() for i in range(n)]
        try:
            started = time.monotonic()
            _wait(lambda: _settled(settings, members, counts), timeout, "the consumer groups to settle", members)
            settle_s = time.monotonic() - started
            first_ms, post_ids = _burst(settings, posts, seed)
            labels = _labels(settings, post_ids, timeout)
            groups = asyncio.run(_describe(settings, [settings.kafka.group(s) for s in counts]))
            work = {m.name: m.counters() for m in members}
        finally:
            _stop(members)
    seconds = (max(r.timestamp for r in labels) - first_ms) / 1000
    return {
        "layout": f"{text} text + {classify} classify", "text_processes": text, "classify_processes": classify,
        "partitions": settings.kafka.partitions, "posts": posts, "labels": len(labels), "seconds": round(seconds, 2),
        "posts_per_s": round(posts / seconds, 1), "settle_s": round(settle_s, 1),
        # Other work on the machine shows up here first: 4 workers on 2 cores have no headroom.
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "groups": {stage: groups[settings.kafka.group(stage)] for stage in counts},
        "members": [{"process": m.name, "stage": m.stage, "partitions": m.partitions,
                     "records_processed": int(work[m.name]["processed"]), "labels": int(work[m.name]["labelled"])}
                    for m in members],
    }


def _print(rows: list[dict]) -> None:
    console = Console(width=120)
    summary = Table(title="scale-out on one machine (posts → labels)")
    for col in ("layout", "partitions", "posts", "seconds", "posts/s", "groups"):
        summary.add_column(col, justify="left" if col in ("layout", "groups") else "right")
    for r in rows:
        groups = ", ".join(f"{s}: {g['members']} members {g['state']}" for s, g in r["groups"].items())
        summary.add_row(r["layout"], str(r["partitions"]), str(r["posts"]), f"{r['seconds']:.1f}",
                        f"{r['posts_per_s']:.1f}", groups)
    console.print(summary)
    members = Table(title="partition assignment and work per process")
    for col in ("layout", "process", "partitions", "records processed", "labels"):
        members.add_column(col, justify="right" if col in ("records processed", "labels") else "left")
    for r in rows:
        for m in r["members"]:
            owned = "; ".join(f"{t} {p}" for t, p in m["partitions"].items())
            members.add_row(r["layout"], m["process"], owned, str(m["records_processed"]), str(m["labels"]))
    console.print(members)


def main(argv: Sequence[str] | None = None) -> None:
    from streamcore.helptext import parser_options  # the help as `stylestream ... --help` shows it

    parser = argparse.ArgumentParser(**parser_options("stylestream bench scale-out", __doc__))
    parser.add_argument("--posts", type=int, default=400, help="posts in each timed burst")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--layouts", default="1x1,2x2", help="TEXTxCLASSIFY process counts, comma-separated")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args(argv)
    layouts = [tuple(int(n) for n in layout.split("x")) for layout in args.layouts.split(",")]
    settings = Settings.named(partitions=args.partitions)
    with ExitStack() as stack:
        if not settings.kafka.bootstrap or not settings.redis.url:
            embedded = stack.enter_context(EmbeddedStack())
            settings = settings.replace(kafka=settings.kafka.bootstrap or embedded.bootstrap, redis_url=settings.redis.url or embedded.redis_url)
        rows = [run_layout(settings, text=t, classify=c, posts=args.posts) for t, c in layouts]
    _print(rows)
    if args.out:
        command = COMMAND + (" " + " ".join(argv if argv is not None else sys.argv[1:]))
        write_report(args.out, {"rows": rows}, command=command.strip())


if __name__ == "__main__":
    main()
