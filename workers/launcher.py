"""What ``stylestream up`` and ``produce`` do: start the stack and stages, feed demo posts, show labels."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, start_http_server
from rich.console import Console
from rich.markup import escape

from streamcore.client import StylestreamClient
from streamcore.embedded import EmbeddedStack, spawn, stop_processes
from streamcore.exceptions import BadInput, DeliveryError
from streamcore.kafka import ensure_topics
from streamcore.schemas import LabelView
from streamcore.sections import MetricsSettings
from streamcore.serde import decode_post
from streamcore.settings import Settings
from workers import STAGES
from workers.supervisor import Stages

log = logging.getLogger(__name__)



def produce_synthetic(settings: Settings, *, count: int, rate: float | None = None, multi: bool = False,
                      seed: int = 0, stop: threading.Event | None = None, real: bool = False) -> int:
    """Publish ``count`` generated posts, at ``rate`` per second if given; returns how many were sent.

    ``real``: the committed fixture's real photos with generated captions (what the demo sends) instead of
    drawn garments.
    """
    from serving.ontology import load_ontology

    if real:
        from training.real.posts import fixture_posts

        posts = fixture_posts(load_ontology(), count, seed=seed, prefix=f"photo{int(time.time())}")
    else:
        from training.synthetic.posts import generate_posts

        posts = generate_posts(load_ontology(), count, seed=seed, multi=multi, prefix=f"syn{int(time.time())}")
    stop = stop or threading.Event()
    sent = 0
    start = time.monotonic()
    with StylestreamClient(settings) as client:  # closing raises DeliveryError for posts the broker did not take
        for post, _ in posts:
            delay = start + sent / rate - time.monotonic() if rate else 0.0
            if stop.wait(max(0.0, delay)) or client.failed:
                break
            client.publish(post)
            sent += 1
    return sent


def produce_lines(settings: Settings, lines: Iterable[str | bytes], *, count: int | None = None,
                  rate: float | None = None, on_refused: Callable[[int, str], None]) -> int:
    """Publish the ``post/v1`` records of JSON lines (blank lines skipped), at ``rate`` per second if given, the
    first ``count`` if given; returns how many were sent.

    A line that is not a valid post (bytes that are not UTF-8 included: read a file in binary, so one bad line
    is refused, not the rest of the file), or whose image no stage could read, is not sent: ``on_refused`` gets
    its number and the reason. Closing the client raises :class:`DeliveryError` for posts the broker did not take.
    """
    sent = 0
    start = time.monotonic()
    with StylestreamClient(settings) as client:
        for number, line in enumerate(lines, 1):
            raw = line.encode() if isinstance(line, str) else line
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark some editors write first
            if not raw.strip():
                continue
            if (count is not None and sent >= count) or client.failed:
                break
            try:
                post = decode_post(raw.strip(), settings.limits)
                if rate:
                    time.sleep(max(0.0, start + sent / rate - time.monotonic()))
                client.publish(post)
            except (BadInput, ValueError) as exc:
                on_refused(number, str(exc))
                continue
            sent += 1
    return sent


def report_undelivered(console: Console, failure: DeliveryError) -> None:
    """The posts the broker did not take, one id per line after a summary (on the console's stream)."""
    console.print(f"[red]{len(failure.failed)} post(s) not delivered[/]: "
                  f"{'; '.join(sorted(set(failure.failed.values()))[:3])}", soft_wrap=True)
    for post_id in failure.failed:
        console.print(f"  {post_id}", highlight=False)


def print_label(console: Console, label: LabelView) -> None:
    """One line per label: the categories shown (or the abstention), sub-category, attributes, and what steered
    the model."""
    # Every field is the record's text, not markup: a post id "[/x]" would otherwise end the loop printing it.
    steer = escape(f"{label.hints_used.source}:{'/'.join(label.hints_used.categories) or '-'}")
    try:
        latency = f"{(label.labeled_at - label.received_at).total_seconds() * 1000:.0f} ms"
    except TypeError:  # one time with an offset and one without: no instant to subtract
        latency = "? ms"
    tail = f"[dim]({steer}, {escape(label.model_version)}, {latency})[/]"
    post_id = escape(label.post_id)
    if not label.categories:
        console.print(f"[bold]{post_id}[/] [yellow]no garment[/] {tail}", soft_wrap=True)
        return
    shown = " ".join(f"[green]{escape(c.term)}[/] {c.score:.2f}" for c in label.categories[:4])
    sub = escape(label.subcategories[0].term) if label.subcategories else "-"
    attrs = escape(", ".join(f"{a.term} {a.score:.2f}" for a in label.attributes[:3]))
    console.print(f"[bold]{post_id}[/] {shown} · {sub} · {attrs} {tail}", soft_wrap=True)


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise KeyboardInterrupt in the main thread: also when this process
    started with SIGINT ignored (a background job of a non-interactive shell inherits that, and Python then
    installs no handler), and when a service manager stops it with SIGTERM."""
    stopping = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.signal(number, signal.default_int_handler) for number in stopping}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextmanager
def ctrl_c_sets(event: threading.Event) -> Iterator[None]:
    """Within the block, Ctrl-C (SIGINT) and SIGTERM set ``event`` instead of raising KeyboardInterrupt wherever
    the main thread is: inside a Kafka client's wait, an interrupt could leave it unable to close."""
    previous = {number: signal.signal(number, lambda *_: event.set()) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def start_stage(stage: str, env: dict[str, str], *, prefix: Sequence[str] = (), **popen: Any) -> subprocess.Popen:
    """``stylestream worker STAGE`` in a child process that dies with this one; ``prefix`` wraps the command
    (``taskset``), ``popen`` goes to :class:`subprocess.Popen` (output redirection)."""
    return spawn([*prefix, sys.executable, "-m", "workers.cli", "worker", stage], env=env, **popen)


#: A demo's trainer told to start from the synthetic benchmark bootstraps a model in about a minute on two cores
#: instead of many (its default continues the packaged model, which needs none of these).
_DEMO_TRAINER = {"trainer_n_train": 3000, "trainer_n_test": 600, "trainer_epochs": 6, "trainer_pretrain_epochs": 2}


def run_up(settings: Settings, *, demo: bool, rate: float, console: Console, ui: bool = False) -> int:
    """Run everything until Ctrl-C; on exit, stop stages, then the embedded servers. ``ui``: serve the review page
    from this process too. A stage that exits is started again (:mod:`workers.supervisor`). Returns the exit
    status: 1 when the demo's producer found posts the broker did not take, or a stage kept exiting."""
    if demo:
        given = settings.given()
        settings = settings.replace(**{k: v for k, v in _DEMO_TRAINER.items() if k not in given})
    with ExitStack() as stack:
        up_metrics = _serve_up_metrics(settings.metrics, console)
        if not settings.kafka.bootstrap or not settings.redis.url:
            # The demo may forget everything; otherwise the broker and Redis keep their data in data_dir.
            embedded = stack.enter_context(EmbeddedStack(data_dir=None if demo else settings.embedded.data_dir))
            # Runs just before the broker stops: after a Ctrl-C, kafka-python's shared IO thread can still hold
            # a socket when every client is closed (none is left to close), and would log the broker going away
            # as errors.
            stack.callback(logging.getLogger("kafka").setLevel, logging.CRITICAL)
            settings = settings.replace(kafka=settings.kafka.bootstrap or embedded.bootstrap, redis_url=settings.redis.url or embedded.redis_url)
            console.print(f"embedded broker [bold]{embedded.bootstrap}[/], redis [bold]{embedded.redis_url}[/]",
                          soft_wrap=True)
            if demo:
                console.print("the embedded broker and redis keep nothing across restarts (--demo: memory only)")
            else:
                console.print(f"data kept in {settings.embedded.data_dir.resolve()}: broker/ (topics, records, committed "
                              "offsets), redis/ (labels, serving pointer, trainer state)", soft_wrap=True)
            _watch_servers(embedded, up_metrics)
        created = ensure_topics(settings)
        console.print(f"topics ready ({len(created)} created, {settings.kafka.partitions} partitions)", soft_wrap=True)
        env = settings.child_env()
        stages = Stages(STAGES, lambda stage: start_stage(stage, env), on_restart=_restarted(up_metrics, console))
        stack.callback(lambda: stop_processes(stages.processes()))
        port = settings.metrics.port
        metrics = f"from port {port}" if port else "on free ports (each stage logs its own)"
        console.print(f"stages started: {', '.join(STAGES)} · metrics {metrics}", soft_wrap=True)
        if ui:
            _serve_review_page(stack, settings, console)
        stop = threading.Event()
        stack.callback(stop.set)
        failed: list[str] = []
        _supervise(stages, stop, failed, console)
        try:
            if demo:
                return run_demo(settings, rate=rate, stop=stop, stack=stack, console=console) or (1 if failed else 0)
            with stop_signals_raise():
                while not stop.wait(0.5):  # a timed wait: the signal's KeyboardInterrupt comes between waits
                    pass
        except KeyboardInterrupt:
            console.print("stopping…")
    return 1 if failed else 0


def _supervise(stages: Stages, stop: threading.Event, failed: list[str], console: Console) -> None:
    """Check the stages twice a second from a thread that lives until ``stop`` (their restarted processes die
    with it); a stage that keeps exiting sets ``stop`` and names itself in ``failed``."""
    def watch() -> None:
        while not stop.wait(0.5):
            try:
                why = stages.check()
            except Exception as exc:  # noqa: BLE001 - unsupervised stages must not go on silently: up stops
                why = f"supervising the stages failed: {exc!r}"
            if why is not None:
                failed.append(why)
                console.print(f"[red]{why}; stopping[/]", soft_wrap=True)
                stop.set()

    threading.Thread(target=watch, name="stages", daemon=True).start()


def _restarted(metrics: UpMetrics, console: Console) -> Callable[[str, int], None]:
    def restarted(stage: str, status: int) -> None:
        metrics.stage_restarts.labels(stage).inc()
        console.print(f"[yellow]stage {stage} exited (status {status}); restarted[/]", soft_wrap=True)

    return restarted


def run_demo(settings: Settings, *, rate: float, stop: threading.Event, stack: ExitStack, console: Console) -> int:
    """Feed real-photo posts and print labels until ``stop``; 1 when the broker did not take some posts."""
    undelivered: list[DeliveryError] = []

    def feed() -> None:
        try:
            produce_synthetic(settings, count=10**9, rate=rate, stop=stop, real=True)
        except DeliveryError as failure:
            undelivered.append(failure)
            stop.set()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()

    def stop_feeder() -> None:  # its producer must close while the broker still runs
        stop.set()
        feeder.join(timeout=settings.kafka.delivery_timeout_s + 10)
    stack.callback(stop_feeder)
    # closing(): the label consumer must be closed now, while the broker still runs.
    with ctrl_c_sets(stop), StylestreamClient(settings) as client, \
            closing(client.labels(from_beginning=True, stop=stop)) as labels:
        for label in labels:
            print_label(console, label)
    feeder.join(timeout=settings.kafka.delivery_timeout_s + 10)
    if undelivered:
        report_undelivered(console, undelivered[0])
        return 1
    console.print("stopping…")
    return 0


def _serve_review_page(stack: ExitStack, settings: Settings, console: Console) -> None:
    """The review page in a thread of this process; a port already taken costs the page, not the pipeline."""
    from workers.ui.server import serving

    try:
        address = stack.enter_context(serving(settings))
    except OSError as exc:
        console.print(f"[yellow]review page not started: {settings.ui.host}:{settings.ui.port}: {exc.strerror}[/]",
                      soft_wrap=True)
        return
    console.print(f"review page [bold]{address}[/]" + ("" if settings.ui.token is not None else " (read-only: no STYLESTREAM_UI_TOKEN)"),
                  soft_wrap=True)


class UpMetrics:
    """``up``'s own metrics: restarts of the embedded servers and of the stages it runs."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.server_restarts = Counter("stylestream_server_restarts_total",
                                       "Embedded servers restarted by `up` after they exited", ("server",),
                                       registry=registry)
        self.stage_restarts = Counter("stylestream_stage_restarts_total",
                                      "Stage processes restarted by `up` after they exited", ("stage",), registry=registry)
        for stage in STAGES:
            self.stage_restarts.labels(stage)


def _serve_up_metrics(settings: MetricsSettings, console: Console) -> UpMetrics:
    """:class:`UpMetrics`, served on ``METRICS_PORT`` + 3."""
    metrics = UpMetrics(CollectorRegistry())
    port = settings.stage_port("up")
    if port:
        try:
            start_http_server(port, addr=settings.health_host, registry=metrics.registry)
        except OSError as exc:
            console.print(f"[yellow]up's metrics not served: {settings.health_host}:{port}: {exc.strerror}[/]",
                          soft_wrap=True)
    return metrics


def _watch_servers(embedded: EmbeddedStack, metrics: UpMetrics) -> None:
    """Restart the embedded servers when they die, counted in ``stylestream_server_restarts_total{server}``."""
    for server in embedded.servers:
        metrics.server_restarts.labels(server.name)
    embedded.watch(lambda name: metrics.server_restarts.labels(name).inc())
