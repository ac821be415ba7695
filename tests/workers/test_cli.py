"""The CLI verbs operators use, against the real embedded broker."""

import pytest
from kafka import KafkaAdminClient
from typer.testing import CliRunner

from streamcore.settings import TOPICS
from workers.cli import app


@pytest.mark.integration
def test_topics_creates_every_contract_topic_once(infra, monkeypatch):
    monkeypatch.setenv("STYLESTREAM_KAFKA", infra[0])
    monkeypatch.setenv("STYLESTREAM_TOPIC_PREFIX", "clitest.")
    monkeypatch.setenv("STYLESTREAM_PARTITIONS", "3")
    runner = CliRunner()
    first = runner.invoke(app, ["topics"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["topics"])
    assert "created nothing" in again.output
    admin = KafkaAdminClient(bootstrap_servers=infra[0])
    described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics([f"clitest.{t}" for t in TOPICS])}
    admin.close()
    assert described == {f"clitest.{t}": 3 for t in TOPICS}


def test_unknown_stage_and_bench_are_refused():
    runner = CliRunner()
    assert runner.invoke(app, ["worker", "nope"]).exit_code != 0
    assert runner.invoke(app, ["bench", "nope"]).exit_code != 0
