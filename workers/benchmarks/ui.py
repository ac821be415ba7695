"""Review page under load: labels replayed into Redis at a fixed rate while headless Chromium shows the page.

Measures, per label, the time from its write (just before the label sink's call) to its entering the page's
DOM, as a card or in the line standing for the labels a draw folds below the fold (a MutationObserver in the
page notes each arrival; those drawn as cards are also counted apart), so the figure includes Redis, the
server's stream follower, server-sent events, the browser's parsing and drawing. The page server runs in
its own process (``stylestream ui``), as deployed; thumbnails are real JPEGs, fetched by the browser.

    python -m workers.benchmarks.ui --rate 500 --seconds 20 --throughput-posts 1500 --out reports/bench_ui.json

With ``--throughput-posts`` it also runs the classifier on a backlog of realistic posts without and with
the page open on it (:mod:`workers.benchmarks.ui_throughput`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from serving.images import thumbnail
from streamcore.embedded import EmbeddedStack
from streamcore.preview import Preview
from streamcore.schemas import HintsUsed, Label, ScoredTerm, utcnow
from streamcore.serde import encode
from streamcore.settings import Settings
from streamcore.sinks import RedisLabels, fingerprint
from workers.benchmarks.pipeline_alone import cpu_seconds
from workers.benchmarks.ui_page import start_page, tree_cpu_seconds

COMMAND = "python -m workers.benchmarks.ui"
_CAPTIONS = ("New in: a red wool coat for the cold days #ootd #coat", "Linen summer dress, perfect for the beach",
             "Denim jeans + white sneakers, simple #streetstyle", "Silk blouse with a floral print, office ready")
# Arrival time of each card, by post id, in the page's clock (epoch ms); long main-thread tasks.
_OBSERVE = """
window.__seen = new Map(); window.__carded = new Map(); window.__long = [];
new MutationObserver((changes) => {
  const now = performance.timeOrigin + performance.now();
  for (const change of changes) for (const node of change.addedNodes) {
    if (!node.dataset) continue;  // a card, or a line standing for the labels folded below the fold
    const ids = node.dataset.ids ? node.dataset.ids.split(" ") : node.dataset.id ? [node.dataset.id] : [];
    for (const id of ids) if (!window.__seen.has(id)) window.__seen.set(id, now);
    if (node.dataset.id && !window.__carded.has(node.dataset.id)) window.__carded.set(node.dataset.id, now);
  }
}).observe(document.getElementById('cards'), {childList: true});
new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__long.push(e.duration); })
  .observe({type: 'longtask', buffered: false});
"""


def _photo_thumb() -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (1350, 1080, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=85)
    return thumbnail(out.getvalue(), max_pixels=10**8)


def _label(post_id: str) -> bytes:
    now = utcnow()
    scored = lambda names, weights: [ScoredTerm(term=n, score=w) for n, w in zip(names, weights)]
    return encode(Label(post_id=post_id, model_version="bench-v1", head="fusion",
                        categories=scored(["coats", "dresses", "jeans", "skirts"], [0.61, 0.22, 0.12, 0.05]),
                        subcategories=scored(["overcoat", "parka", "trench_coat"], [0.7, 0.2, 0.1]),
                        attributes=scored(["wool", "cotton", "plain"], [0.5, 0.3, 0.2]),
                        hints_used=HintsUsed(source="mined", categories=["coats"]), received_at=now, labeled_at=now))


async def _replay(settings: Settings, run: str, *, rate: float, seconds: float, batch: int) -> dict[str, float]:
    """Write ``rate`` labels a second for ``seconds`` in batches; returns post id → write time (epoch ms)."""
    sink, thumb = RedisLabels(settings), (_photo_thumb() if os.environ.get("NOTHUMB") is None else None)
    total = int(rate * seconds) // batch * batch
    ids = [f"{run}-{n}" for n in range(total)]
    # Made before the clock starts: the replay's own work should not limit the rate.
    labels = [(p, _label(p)) for p in ids]
    prints = [fingerprint(p.encode()) for p in ids]
    previews = [Preview(thumb, _CAPTIONS[n % len(_CAPTIONS)]) for n in range(total)]
    written: dict[str, float] = {}
    start = time.monotonic()
    try:
        for n in range(0, total, batch):
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
            at = time.time() * 1000
            await sink.write("bench-v1", labels[n:n + batch], prints[n:n + batch], previews=previews[n:n + batch])
            written.update(dict.fromkeys(ids[n:n + batch], at))
    finally:
        await sink.close()
    return written


def _page_metrics(browser) -> dict[str, float]:
    """Seconds the page's renderer spent, by kind (Chrome's Performance domain)."""
    wanted = ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")
    return {m["name"]: m["value"] for m in browser.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]
            if m["name"] in wanted}


def _settings(stack: ExitStack) -> Settings:
    """Configured Kafka/Redis, or embedded ones for the block; fresh key names."""
    configured = Settings()
    if not configured.redis.url or not configured.kafka.bootstrap:
        embedded = stack.enter_context(EmbeddedStack())
        configured = configured.replace(redis_url=configured.redis.url or embedded.redis_url, kafka=configured.kafka.bootstrap or embedded.bootstrap)
    return configured.replace(redis_label_ttl_s=600, redis_prefix=f"bench{uuid.uuid4().hex[:6]}")


def _quantiles(latencies: np.ndarray) -> dict[str, float | None]:
    def at(q: float) -> float | None:
        return round(float(np.quantile(latencies, q)), 1) if latencies.size else None

    return {"p50": at(0.5), "p95": at(0.95), "p99": at(0.99), "max": at(1.0)}


def server_only(*, rate: float, seconds: float, batch: int) -> dict[str, Any]:
    """The same replay read by a plain event-stream client instead of a browser: the server's part alone."""
    with ExitStack() as stack:
        settings = _settings(stack)
        url, _ = start_page(settings, stack)
        arrived: dict[str, float] = {}
        stream = urllib.request.urlopen(url + "api/events", timeout=seconds + 30)
        stack.callback(stream.close)

        def read() -> None:
            with contextlib.suppress(OSError, ValueError, AttributeError):  # the stream closed under it: done
                for line in stream:
                    if line.startswith(b"data:"):
                        now = time.time() * 1000
                        for card in json.loads(line[5:]):
                            arrived.setdefault(card["id"], now)

        threading.Thread(target=read, daemon=True).start()
        written = asyncio.run(_replay(settings, "S", rate=rate, seconds=seconds, batch=batch))
        time.sleep(3.0)
    latencies = np.array([arrived[p] - at for p, at in written.items() if p in arrived])
    return {"labels_written": len(written), "delivered_fraction": round(latencies.size / max(1, len(written)), 3),
            "latency_ms": _quantiles(latencies)}


def measure(*, rate: float, seconds: float, batch: int) -> dict[str, Any]:
    """One replay with the page open in headless Chromium (see the module docstring)."""
    from workers.ui.browser import headless_chromium

    with ExitStack() as stack:
        settings = _settings(stack)
        url, proc = start_page(settings, stack)
        browser = headless_chromium()
        stack.callback(browser.quit)
        browser.get(url)
        deadline = time.monotonic() + 30
        while browser.find_element("id", "live-state").text != "live":
            if time.monotonic() > deadline:
                raise RuntimeError("the page did not go live")
            time.sleep(0.1)
        browser.execute_script(_OBSERVE)
        browser.execute_cdp_cmd("Performance.enable", {})
        before = _page_metrics(browser)
        cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
        browser_cpu0 = tree_cpu_seconds(browser.service.process.pid)
        written = asyncio.run(_replay(settings, "L", rate=rate, seconds=seconds, batch=batch))
        elapsed = time.monotonic() - wall0
        time.sleep(3.0)  # the last labels' way to the page; anything later counts as not seen
        server_cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - wall0)
        browser_cpu = (tree_cpu_seconds(browser.service.process.pid) - browser_cpu0) / (time.monotonic() - wall0)
        seen = browser.execute_script("return Object.fromEntries(window.__seen)")
        carded = browser.execute_script("return Object.fromEntries(window.__carded)")
        long_tasks = browser.execute_script("return window.__long")
        busy = {k: round(v - before.get(k, 0.0), 2) for k, v in _page_metrics(browser).items()}
    latencies = np.array([seen[p] - at for p, at in written.items() if p in seen])
    as_cards = np.array([carded[p] - at for p, at in written.items() if p in carded])
    return {
        "rate_target_per_s": rate, "rate_written_per_s": round(len(written) / elapsed, 1), "seconds": seconds,
        "batch": batch, "labels_written": len(written), "labels_seen": int(latencies.size),
        "latency_ms": _quantiles(latencies), "load_avg_1m": round(os.getloadavg()[0], 2),
        "shown_fraction": round(latencies.size / max(1, len(written)), 3),
        "p95_within_2s": latencies.size > 0 and float(np.quantile(latencies, 0.95)) <= 2000,
        "labels_drawn_as_cards": int(as_cards.size), "as_cards_latency_ms": _quantiles(as_cards),
        "note": "latency over the labels that entered the page: as a card, or in the line standing for those a "
                "draw folds below the fold (drawn as cards when scrolled to); the page keeps the newest 100 and "
                "draws at most ten times a second, so at this rate a label displaced before a draw is never shown",
        "page_long_tasks": {"count": len(long_tasks), "total_ms": round(sum(long_tasks), 1),
                            "max_ms": round(max(long_tasks, default=0.0), 1)},
        "page_server_cpu_cores": round(server_cpu, 3),
        "browser_cpu_cores": round(browser_cpu, 3),
        "page_main_thread_s": busy,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="labels per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=10, help="labels per write (the classifier writes micro-batches)")
    parser.add_argument("--throughput-posts", type=int, default=0,
                        help="also time the classifier on this many posts without and with the page open")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each throughput condition")
    parser.add_argument("--pages", default="browser,server",
                        help="throughput conditions with the page: browser (Chromium here), server (viewed elsewhere)")
    parser.add_argument("--co-tenant", type=float, default=0.0,
                        help="also time the classifier beside a process keeping this share of a core busy")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--repeats", type=int, default=3, help="page runs; the one with the median p95 leads")
    args = parser.parse_args(argv)
    if not set(args.pages.split(",")) <= {"browser", "server"}:
        parser.error(f"--pages: browser and/or server, not {args.pages!r}")
    runs = [measure(rate=args.rate, seconds=args.seconds, batch=args.batch) for _ in range(args.repeats)]
    for run in runs:
        print(run)
    result = {**sorted(runs, key=lambda r: r["latency_ms"]["p95"] or float("inf"))[len(runs) // 2],
              "runs": [{k: r[k] for k in ("latency_ms", "shown_fraction", "rate_written_per_s", "load_avg_1m")}
                       for r in runs],
              "server_only": server_only(rate=args.rate, seconds=args.seconds, batch=args.batch)}
    print(result["server_only"])
    if args.throughput_posts:
        from workers.benchmarks.ui_throughput import throughput

        result["classifier_throughput"] = throughput(posts=args.throughput_posts, rounds=args.rounds, timeout=1800,
                                                     co_tenant=args.co_tenant, pages=tuple(args.pages.split(",")))
        print(result["classifier_throughput"])
    if args.out:
        from streamcore.reports import write_report

        write_report(args.out, result, command=" ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])]))
    return 0 if result["p95_within_2s"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
