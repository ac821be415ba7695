"""Helpers for tests: polling with a deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.2, what: str = "condition") -> None:
    """Poll ``predicate`` until true or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def publish_tiny(model_dir, name: str, *, seed: int = 0, hidden: int = 256, onnx: bool = False):
    """Publish an (untrained) tiny Dynamic CNN checkpoint as registry version ``name`` (with its backbone
    exported to ONNX when ``onnx``)."""
    import tempfile
    from pathlib import Path

    import torch

    from serving.checkpoint import save_checkpoint
    from serving.models import build_model
    from serving.ontology import load_ontology
    from serving.registry import Registry

    torch.manual_seed(seed)
    model = build_model(backbone="tiny", head="dynamic_layers", ontology=load_ontology(), weights="random",
                        hidden=hidden)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(model, Path(tmp) / "ckpt", config={"seed": seed}, metrics={"test": {"P@1": 0.5}})
        if not onnx:
            return Registry(Path(model_dir)).publish(Path(tmp) / "ckpt", name=name)
        from training.onnx_export import build_artifacts

        return Registry(Path(model_dir)).publish(Path(tmp) / "ckpt", name=name, build=build_artifacts)


def committed_behind(settings, stage: str, topics: tuple[str, ...]) -> dict:
    """``{(topic, partition): records}`` the stage's group has not committed yet; empty when at the end.

    The end is found by reading each partition (the embedded broker's ListOffsets can answer a batch's
    base offset instead of the end).
    """
    from kafka import KafkaConsumer, TopicPartition

    tps = [TopicPartition(settings.kafka.topic(t), p) for t in topics for p in range(settings.kafka.partitions)]
    reader = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False)
    # A consumer that never subscribes only reads the group's offsets; it does not join the group.
    group = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, group_id=settings.kafka.group(stage), enable_auto_commit=False)
    try:
        reader.assign(tps)
        reader.seek_to_beginning()
        ends = dict.fromkeys(tps, 0)
        while batches := reader.poll(timeout_ms=1000):
            for tp, records in batches.items():
                ends[tp] = max(ends[tp], records[-1].offset + 1)
        behind = {(tp.topic, tp.partition): ends[tp] - (group.committed(tp) or 0) for tp in tps}
    finally:
        reader.close()
        group.close()
    return {tp: n for tp, n in behind.items() if n > 0}


def feed_paced(producer, topic: str, posts: Sequence, rate: float) -> threading.Thread:
    """Produce ``posts`` (keyed by id) at ``rate`` per second from a started thread; flushes at the end.

    A paced feed makes "mid-stream" mean the same on any machine: however fast the workers are, the
    posts are still arriving when the test acts (a kill, a promotion).
    """
    from streamcore.serde import encode

    def feed() -> None:
        start = time.monotonic()
        for i, post in enumerate(posts):
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
            producer.send(topic, key=post.post_id.encode(), value=encode(post))
        producer.flush()

    feeder = threading.Thread(target=feed, name="paced-feed")
    feeder.start()
    return feeder


@contextmanager
def own_broker() -> Iterator[tuple[str, subprocess.Popen]]:
    """``(bootstrap, process)`` of a Tansu broker of the caller's own, started as the embedded stack starts it,
    for tests that stop or kill the broker; stopped at the end whatever the test did to it."""
    from kafka import KafkaAdminClient

    from streamcore.embedded import free_port, spawn, stop_processes, tansu_binary

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = spawn([tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                  "--storage-engine", "memory://tansu/", "--cluster-id", "own"],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        def answers() -> bool:
            try:
                KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}", bootstrap_timeout_ms=1000).close()
            except Exception:  # noqa: BLE001 - not up yet
                return False
            return True

        wait_until(answers, timeout=30, what="own broker answering")
        yield f"127.0.0.1:{port}", proc
    finally:
        stop_processes([proc], timeout=5)


@contextmanager
def running_stage(stage):
    """Run a stream stage on its own event-loop thread; stop it, and wait for it, on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(stage.run(),), name=f"stage-{stage.name}")
    thread.start()
    try:
        yield stage
    finally:
        loop.call_soon_threadsafe(stage.stop)
        thread.join(timeout=60)
        loop.close()
    assert not thread.is_alive()


def one_line(result: subprocess.CompletedProcess) -> str:
    """The one line a command run as a process wrote on stderr when it refused a user's input (exit 1, no traceback)."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stylestream: "), result.stderr
    return lines[0]
