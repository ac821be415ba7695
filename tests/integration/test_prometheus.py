"""A real Prometheus scrapes running workers: the key series exist, move while posts flow, the alert rules
evaluate cleanly against them, and the exposition passes ``promtool check metrics``."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer

from serving.ontology import load_ontology
from streamcore.embedded import free_port, stop_processes
from streamcore.serde import encode
from tests.support import wait_until
from training.synthetic.posts import generate_posts

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/usr/bin/prometheus").exists(),
                       reason="/usr/bin/prometheus missing: install the Debian package prometheus"),
]

PROMETHEUS, PROMTOOL = "/usr/bin/prometheus", "/usr/bin/promtool"
ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
WAVE = 25


def _free_port_pair() -> int:
    """A port P with P and P+1 free (text serves metrics_port, classify metrics_port + 1)."""
    while True:
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


class Prometheus:
    """HTTP API client of one Prometheus server."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def scalar(self, expr: str) -> float:
        """Value of a one-series query; 0 while it has no result."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Prometheus]]:
    """Starts ``/usr/bin/prometheus`` on a free loopback port with temp config and storage; killed at teardown."""
    procs: list[subprocess.Popen] = []

    def start(targets: dict[str, str]) -> Prometheus:
        jobs = "".join(f"  - job_name: {job}\n    static_configs: [{{targets: ['{target}']}}]\n"
                       for job, target in targets.items())
        config = tmp_path / "prometheus.yml"
        config.write_text("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                          f"rule_files: ['{ALERTS}']\nscrape_configs:\n{jobs}", encoding="utf-8")
        port = free_port()
        procs.append(subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w")))
        server = Prometheus(f"http://127.0.0.1:{port}")
        wait_until(lambda: _ready(server.url), timeout=20, what="Prometheus /-/ready")
        return server

    yield start
    stop_processes(procs, timeout=10)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def _produce(settings, posts, extra: tuple[bytes, bytes] | None = None) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    for post in posts:
        producer.send(settings.kafka.topic("posts"), key=post.post_id.encode(), value=encode(post))
    if extra:
        producer.send(settings.kafka.topic("posts"), key=extra[0], value=extra[1])
    producer.flush()
    producer.close()


def test_prometheus_scrapes_workers_and_series_move(make_settings, workers, prometheus):
    port = _free_port_pair()
    settings = make_settings(metrics_port=port, hint_wait_ms=1000)
    group = workers(settings)
    group.start("text")
    group.start("classify")
    group.wait_ready()
    prom = prometheus({"stylestream-text": f"127.0.0.1:{port}", "stylestream-classify": f"127.0.0.1:{port + 1}"})
    wait_until(lambda: prom.scalar('sum(up{job=~"stylestream-.*"})') == 2, timeout=45, what="both workers scraped")

    posts = [p for p, _ in generate_posts(load_ontology(), 2 * WAVE, seed=11, prefix=settings.kafka.group_prefix)]
    _produce(settings, posts[:WAVE], extra=(b"broken", b'{"schema": "post/v1", oops'))
    labelled = "sum(stylestream_posts_labeled_total)"
    wait_until(lambda: prom.scalar(labelled) >= WAVE, timeout=60, what=f"Prometheus to see {WAVE} labels")
    moving = (labelled, 'sum(stylestream_messages_processed_total{stage="text"})',
              "sum(stylestream_end_to_end_latency_seconds_count)", "sum(stylestream_batch_size_sum)")
    for expr in moving:  # targets are scraped independently: the text worker's may lag a scrape behind
        wait_until(lambda expr=expr: prom.scalar(expr) > 0, timeout=15, what=f"{expr} above 0")
    first = {expr: prom.scalar(expr) for expr in moving}

    for expr in ("stylestream_messages_consumed_total", "stylestream_stage_latency_seconds_bucket",
                 "stylestream_end_to_end_latency_seconds_bucket", "stylestream_batch_size_bucket",
                 "stylestream_consumer_lag", "stylestream_posts_with_hints_total", "stylestream_inflight_records",
                 "stylestream_offset_commits_total"):
        assert prom.query(expr), f"no {expr} series in Prometheus"
    # Process series of every worker (the memory alert and the resources panels read them).
    wait_until(lambda: len(prom.query('process_resident_memory_bytes{job=~"stylestream-.*"} > 1e7')) == 2,
               timeout=15, what="both workers' resident memory in Prometheus")
    model = prom.query("stylestream_model_info")
    assert model and model[0]["metric"]["version"] and model[0]["metric"]["job"] == "stylestream-classify"
    assert {r["metric"]["partition"] for r in prom.query('stylestream_consumer_lag{stage="text"}')} <= set("0123")
    # One letter per bad post: the classifier writes it, the text stage counts the post as skipped.
    wait_until(lambda: prom.scalar('sum(stylestream_dead_letters_total{reason="bad_json"})') == 1
               and prom.scalar('sum(stylestream_bad_records_skipped_total{stage="text",reason="bad_json"})') == 1,
               timeout=20, what="the broken post dead-lettered once (classify) and skipped by text")
    assert prom.scalar('sum(stylestream_dead_letters_total{stage="classify",reason="bad_json"})') == 1

    _produce(settings, posts[WAVE:])
    wait_until(lambda: prom.scalar(labelled) >= 2 * WAVE, timeout=60, what=f"Prometheus to see {2 * WAVE} labels")
    for expr, before in first.items():  # targets are scraped independently: each may lag a scrape behind
        wait_until(lambda expr=expr, before=before: prom.scalar(expr) > before, timeout=15, what=f"{expr} to move past {before}")
    assert prom.scalar('sum(rate(stylestream_messages_processed_total{stage="classify"}[30s]))') > 0
    assert prom.scalar("histogram_quantile(0.99, sum by (le) (rate(stylestream_end_to_end_latency_seconds_bucket[1m])))") > 0

    # Every alert rule was evaluated against the live series without an error.
    def rules_evaluated() -> bool:
        rules = [r for g in prom.get("/api/v1/rules")["groups"] for r in g["rules"]]
        return len(rules) == ALERTS.read_text().count("- alert:") and all(
            r["health"] == "ok" and not r["lastEvaluation"].startswith("0001") for r in rules)
    wait_until(rules_evaluated, timeout=10, what="alert rules evaluated with health ok")

    for target in (port, port + 1):
        with urllib.request.urlopen(f"http://127.0.0.1:{target}/metrics", timeout=5) as response:
            exposition = response.read()
        lint = subprocess.run([PROMTOOL, "check", "metrics"], input=exposition, capture_output=True, timeout=30, check=False)
        assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
    assert group.alive()
