"""The command line's rough edges: help of every command (exit 0, no reStructuredText), the version, the stage and
the benchmark as choices, bad values refused with exit 2, configuration and connection errors as one line on
stderr with exit 1; and ``topics`` against the real embedded broker."""

import os
import subprocess
import sys

import pytest
from kafka import KafkaAdminClient
from typer.testing import CliRunner

from streamcore.embedded import free_port
from streamcore.settings import TOPICS
from tests.support import one_line
from workers import STAGES
from workers.cli import app
from workers.commands.models import Bench
from workers.commands.stream import Stage

_RST = ("``", ":mod:", ":func:", ":class:", ":meth:", "::\n")
_TYPER_COMMANDS = ["up", "produce", "tail", "topics", "worker", "classify", "import", "promote", "rollback", "bench"]
#: Commands whose options argparse parses, and the name their help gives them.
_ARGPARSE_COMMANDS = {("train",): "stylestream train", ("train", "--data", "x"): "stylestream train --data",
                      ("eval",): "stylestream eval", ("export-onnx",): "stylestream export-onnx",
                      **{("bench", b.value): f"stylestream bench {b.value}" for b in Bench}}


@pytest.mark.parametrize("command", [(), *((c,) for c in _TYPER_COMMANDS), *_ARGPARSE_COMMANDS], ids=" ".join)
def test_help_of_every_command_exits_0_without_markup(command) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert not [marker for marker in _RST if marker in result.output], result.output
    if command in _ARGPARSE_COMMANDS:
        assert result.output.startswith(f"usage: {_ARGPARSE_COMMANDS[command]} ")


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("stylestream ")


def test_the_stage_and_the_benchmark_are_choices() -> None:
    assert [s.value for s in Stage] == list(STAGES)
    runner = CliRunner()
    for args, choices in ((["worker", "nope"], STAGES), (["bench", "nope"], [b.value for b in Bench])):
        result = runner.invoke(app, args)
        assert result.exit_code == 2
        assert all(choice in result.output for choice in choices), result.output
    assert "text|classify|trainer" in runner.invoke(app, ["worker", "--help"]).output


@pytest.mark.parametrize("args", [
    ["produce", "--count", "-5"], ["produce", "--count", "0"], ["produce", "--rate", "0"], ["produce", "--rate", "nan"],
    ["up", "--rate", "inf"], ["up", "--rate", "-1"],
    ["tail", "--count", "0"], ["produce", "--file", "/no/such/posts.jsonl"], ["produce", "--file", "-", "--real"],
    ["classify", "/no/such/photo.jpg"], ["import", "no-such-dataset", "."],
    ["import", "clothing-dataset", ".", "--garment-crops"],
])
def test_bad_values_are_refused_with_exit_2(args) -> None:
    result = CliRunner().invoke(app, args, env={"STYLESTREAM_KAFKA": "127.0.0.1:1"})
    assert result.exit_code == 2, result.output
    assert "produced" not in result.output


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STYLESTREAM_")}
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], env={**environ, **env}, capture_output=True,
                          text=True, timeout=120, check=False)


def test_a_configuration_error_is_one_line_with_exit_1() -> None:
    assert "STYLESTREAM_PARTITIONS='zero'" in one_line(_run(["topics"], STYLESTREAM_PARTITIONS="zero"))
    assert "STYLESTREAM_DEVICE" in one_line(_run(["produce"], STYLESTREAM_DEVICE="tpu"))


def test_no_broker_is_one_line_with_exit_1() -> None:
    assert "STYLESTREAM_KAFKA is not set" in one_line(_run(["produce", "--count", "1"]))
    nobody = f"127.0.0.1:{free_port()}"
    for command in (["produce", "--count", "1"], ["tail", "--json"]):
        line = one_line(_run(command, STYLESTREAM_KAFKA=nobody, STYLESTREAM_DELIVERY_TIMEOUT_S="1"))
        assert f"cannot reach the Kafka broker at {nobody}" in line


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
