"""What keeping the embedded broker's data costs: Tansu on memory vs on its S3 engine over the local SeaweedFS.

    .venv/bin/python -m workers.benchmarks.broker_storage --records 2000 --out reports/broker_storage.json

For each storage: the stack's start-up time; records produced per second (acks=all, the client's settings,
post-sized values) and read back per second from the start of the topic; and, for the kept storage, how
long the broker takes to answer again after a SIGKILL (restarted by :meth:`EmbeddedStack.watch`) with its
topics and records still there.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from rich.console import Console
from rich.table import Table

from streamcore.embedded import EmbeddedStack
from streamcore.reports import write_report

COMMAND = ".venv/bin/python -m workers.benchmarks.broker_storage"
TOPIC, PARTITIONS = "bench", 4


def _produce(bootstrap: str, records: int, size: int) -> float:
    """Records per second for ``records`` values of ``size`` bytes, from the first send to the last ack."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, enable_idempotence=False,
                             max_request_size=max(1_048_576, size * 2))
    value = os.urandom(size)
    start = time.perf_counter()
    futures = [producer.send(TOPIC, key=b"%d" % i, value=value) for i in range(records)]
    producer.flush()
    elapsed = time.perf_counter() - start
    assert all(f.succeeded() for f in futures), "records not delivered"
    producer.close()
    return records / elapsed


def _read_all(bootstrap: str) -> tuple[int, float]:
    """(records, records per second) read from the start of every partition."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_bytes=52_428_800)
    consumer.assign([TopicPartition(TOPIC, p) for p in range(PARTITIONS)])
    consumer.seek_to_beginning()
    count, start, last = 0, time.perf_counter(), time.perf_counter()
    while batches := consumer.poll(timeout_ms=2000):
        count += sum(len(records) for records in batches.values())
        last = time.perf_counter()
    consumer.close()
    return count, count / max(last - start, 1e-9)


def _answers(bootstrap: str) -> bool:
    try:
        KafkaAdminClient(bootstrap_servers=bootstrap, bootstrap_timeout_ms=1000).close()
    except Exception:  # noqa: BLE001 - not back yet
        return False
    return True


def _restart_seconds(stack: EmbeddedStack) -> float:
    """Seconds from SIGKILLing the broker until it answers again (restarted by the stack's watch)."""
    restarted: list[str] = []
    stack.watch(restarted.append, interval=0.1)
    killed = time.perf_counter()
    os.kill(stack.pids["broker"], signal.SIGKILL)
    while not (restarted and _answers(stack.bootstrap)):
        time.sleep(0.05)
    return time.perf_counter() - killed


def measure(storage: str, records: int, size: int) -> dict:
    with tempfile.TemporaryDirectory() as data:
        start = time.perf_counter()
        with EmbeddedStack(data_dir=Path(data) if storage == "kept" else None) as stack:
            started = time.perf_counter() - start
            KafkaAdminClient(bootstrap_servers=stack.bootstrap).create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
            produced = _produce(stack.bootstrap, records, size)
            read, read_rate = _read_all(stack.bootstrap)
            row = {"storage": storage, "start_s": round(started, 2), "record_bytes": size,
                   "produce_per_s": round(produced), "read_per_s": round(read_rate), "records_read": read}
            if storage == "kept":
                row["broker_restart_s"] = round(_restart_seconds(stack), 2)
                row["records_after_restart"] = _read_all(stack.bootstrap)[0]
            row["disk_bytes"] = sum(f.stat().st_size for f in Path(data).rglob("*") if f.is_file())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000], help="record value bytes")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = [measure(storage, args.records, size) for size in args.sizes for storage in ("memory", "kept")]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = Table(*columns)
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    Console().print(table)
    if args.out:
        write_report(args.out, {"records": args.records, "rows": rows},
                     command=f"{COMMAND} --records {args.records} --sizes {' '.join(map(str, args.sizes))}")


if __name__ == "__main__":
    main()
