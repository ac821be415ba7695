"""The classifier's rate beside the review page: on a backlog of realistic posts (1080 px photos, the packaged
default model as it serves on the CPU), without the page; with headless Chromium showing it on the same machine; with
the page served here and read from elsewhere; and, to calibrate, beside a process that keeps a fixed share of a
core busy (``--co-tenant``). Alternating conditions, compared by their steady-state rates (the pipeline
benchmark's method). Run by ``python -m workers.benchmarks.ui --throughput-posts N``.

The page read from elsewhere is a plain client asking what a viewer's browser on another machine would: the
event stream, and the photos of the cards on screen."""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from streamcore.embedded import EmbeddedStack, stop_processes
from streamcore.kafka import delete_topics
from streamcore.settings import Settings
from workers.benchmarks.ui_page import start_page, tree_cpu_seconds
from workers.ui.browser import DESKTOP


class _Sampler:
    """(labels so far, CPU seconds of each watched process tree) four times a second while the backlog drains."""

    def __init__(self, store, stream: str, pids: dict[str, int]) -> None:
        self.samples: list[tuple[int, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(store, stream, pids), daemon=True)
        self._thread.start()

    def _run(self, store, stream: str, pids: dict[str, int]) -> None:
        while not self._stop.wait(0.25):
            self.samples.append((store.xlen(stream), {name: tree_cpu_seconds(pid) for name, pid in pids.items()}))

    def window(self, start: int, end: int) -> tuple[int, dict[str, float], float]:
        """Labels, CPU seconds per tree and wall seconds between the first samples at ``start`` and ``end``."""
        self._stop.set()
        self._thread.join()
        first = next(i for i, (done, _) in enumerate(self.samples) if done >= start)
        last = next((i for i, (done, _) in enumerate(self.samples) if done >= end), len(self.samples) - 1)
        (n0, c0), (n1, c1) = self.samples[first], self.samples[last]
        return n1 - n0, {name: c1[name] - c0[name] for name in c0}, (last - first) * 0.25


#: Cards drawn in full in the benchmark's window (the page draws in full a card per 150 px of its height, and
#: fetches photos for those only).
_ON_SCREEN = math.ceil(DESKTOP[1] / 150)


def _follow(url: str, stack: ExitStack) -> None:
    """What a browser elsewhere asks of the page server: its event stream, and once a second (the page's draws at
    a classifier's rate) the photos of the newest cards, the ones on screen."""
    stream = urllib.request.urlopen(url + "api/events", timeout=3600)
    stack.callback(stream.close)
    stopped = threading.Event()
    stack.callback(stopped.set)
    newest: list[str] = []

    def read() -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):  # the stream closed under it: done
            for line in stream:
                cards = json.loads(line[5:]) if line.startswith(b"data:") else []  # newest first
                newest[:] = ([c["id"] for c in cards if c["thumb"]] + newest)[:_ON_SCREEN]

    def photos() -> None:
        fetched: set[str] = set()
        while not stopped.wait(1.0):
            if fresh := [p for p in newest if p not in fetched]:  # one sheet of them, as the page asks
                fetched.update(fresh)
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(f"{url}api/thumbs?ids={','.join(fresh)}", timeout=10).read()

    threading.Thread(target=read, daemon=True).start()
    threading.Thread(target=photos, daemon=True).start()


def _settled(browser, pid: int, *, quiet: float = 0.05, timeout: float = 20.0) -> None:
    """Until the page is live and its browser has gone quiet: opening a page costs its browser a one-off burst
    (starting, loading, the first list), and what is measured is the page kept open."""
    deadline = time.monotonic() + timeout
    while browser.find_element("id", "live-state").text != "live" and time.monotonic() < deadline:
        time.sleep(0.1)
    last = tree_cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = tree_cpu_seconds(pid)
        if now - last < quiet:
            return
        last = now


#: A process that keeps a fixed share of one core busy (in 20 ms periods), whatever else runs.
_BURN = """
import sys, time
share = float(sys.argv[1])
print("burning", flush=True)
while True:
    start = time.perf_counter()
    while time.perf_counter() - start < 0.02 * share:
        pass
    time.sleep(0.02 * (1 - share))
"""


def _classifier_rate(base: Settings, posts: list, hints: list, *, page: str, timeout: float,
                     co_tenant: float = 0.0) -> dict[str, float]:
    """Steady-state labels per second of one ``worker classify`` on a backlog, its CPU per label, and the cores
    the page server and the browser took meanwhile; ``page``: ``none``, ``browser`` (headless Chromium on this
    machine), ``server`` (the page served here, read from elsewhere), or ``co_tenant`` (no page: a process
    keeping ``co_tenant`` of a core busy, what any neighbour of that size costs the classifier)."""
    import redis

    from workers.benchmarks import pipeline_runs as bench
    from workers.ui.browser import headless_chromium

    settings, posts, hints = bench._fresh(base, posts, hints)
    pids: dict[str, int] = {}
    with ExitStack() as stack:
        if page in ("browser", "server"):
            url, server = start_page(settings, stack)
            pids["page_server"] = server.pid
        if page == "browser":
            browser = headless_chromium()
            stack.callback(browser.quit)
            browser.get(url)
            pids["browser"] = browser.service.process.pid
            _settled(browser, pids["browser"])
        elif page == "server":
            _follow(url, stack)
        elif page == "co_tenant":
            burner = subprocess.Popen([sys.executable, "-c", _BURN, str(co_tenant)], stdout=subprocess.DEVNULL)
            stack.callback(stop_processes, [burner])
            pids["co_tenant"] = burner.pid
        bench.produce_posts(settings, posts, hints)
        worker = bench._worker(settings, None)
        sampler = _Sampler(redis.Redis.from_url(settings.redis.url), settings.redis.keys.labels_stream,
                           {**pids, "classifier": worker.pid})
        try:
            labels = bench._labels(settings, len(posts), timeout, worker)
        finally:
            stop_processes([worker], timeout=30)
            delete_topics(settings)
    done, cpu, wall = sampler.window(len(posts) // 10, len(posts) * 8 // 10)
    return {"images_per_s": bench._label_rate(sorted(label.labeled_at.timestamp() for label in labels), 0.1, 0.8),
            "classifier_cpu_ms_per_image": round(1000 * cpu.pop("classifier") / max(done, 1), 1),
            **{f"{name}_cores": round(seconds / max(wall, 0.25), 3) for name, seconds in cpu.items()}}


_SAID = {"browser": "with_browser_here", "server": "with_page_served_here"}


def throughput(*, posts: int, rounds: int, timeout: float, co_tenant: float = 0.0,
               pages: tuple[str, ...] = ("browser", "server")) -> dict[str, Any]:
    """The classifier's rate on the realistic workload (1080 px photos, the packaged model) without and with the
    page open on it, side by side: alternating order, ``rounds`` of each."""
    import tempfile

    from workers.benchmarks import pipeline

    generated, truth = pipeline.workload(posts, image_size=1080, photo=True, distinct=64)
    runs: dict[str, list[dict[str, float]]] = {"none": [], **{page: [] for page in pages},
                                               **({"co_tenant": []} if co_tenant else {})}
    # An empty registry: the classifier serves the packaged default as a user's does (its ONNX backbone, 288 px).
    with EmbeddedStack() as stack, tempfile.TemporaryDirectory() as models:
        base = Settings.named(kafka=stack.bootstrap, redis_url=stack.redis_url, metrics_port=0, model_dir=Path(models),
                              device="cpu")
        for n in range(rounds):
            for page in list(runs) if n % 2 == 0 else list(runs)[::-1]:
                runs[page].append(_classifier_rate(base, generated, truth, page=page, timeout=timeout,
                                                   co_tenant=co_tenant))
    median = {page: {key: float(np.median([r.get(key, 0.0) for r in rs])) for key in rs[0]} for page, rs in runs.items()}
    rate = {page: m["images_per_s"] for page, m in median.items()}
    # A shared host's rate drifts between minutes; each round's runs are neighbours, so their ratio drifts less.
    paired = {page: [round(r["images_per_s"] / n["images_per_s"] - 1, 3) for r, n in zip(runs[page], runs["none"])]
              for page in runs if page != "none"}
    return {"posts": posts, "rounds": rounds, "images_per_s_without_page": round(rate["none"], 1),
            **{f"images_per_s_{_SAID[page]}": round(rate[page], 1) for page in runs if page in _SAID},
            **{f"change_{_SAID[page]}": round(rate[page] / rate["none"] - 1, 3) for page in runs if page in _SAID},
            "paired_changes": paired,
            "paired_change_median": {page: float(np.median(changes)) for page, changes in paired.items()},
            "medians": {page: {k: round(v, 3) for k, v in m.items()} for page, m in median.items()},
            "co_tenant_core": co_tenant or None, "runs": runs}
