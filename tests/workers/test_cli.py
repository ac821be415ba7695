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
    ["classify", "training/real/data/fixture/images/00e745c9-97d9-429d-8c3f-d3db7a2d2991.jpg", "--post-id", "bad id"],
    ["export-onnx", "v-nope"], ["export-onnx", "../x"],
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


def test_a_metrics_port_in_use_is_one_line_with_exit_1() -> None:
    """Two profiles workers on one host (the README's "several on one host") with the same metrics port."""
    import socket

    from streamcore.sections import STAGE_PORT_OFFSET

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line(_run(["worker", "profiles"], STYLESTREAM_METRICS_PORT=str(port - STAGE_PORT_OFFSET["profiles"]),
                             STYLESTREAM_KAFKA="127.0.0.1:1", STYLESTREAM_REDIS_URL="redis://127.0.0.1:1"))
    assert f"127.0.0.1:{port}" in line and "STYLESTREAM_METRICS_PORT" in line


@pytest.mark.parametrize("command", [["recommend", "probe"], ["worker", "profiles"],
                                     ["correct", "ok-path-1", "dresses"]])
def test_a_malformed_redis_url_is_one_line_with_exit_1_and_stays_hidden(command) -> None:
    line = one_line(_run(command, STYLESTREAM_KAFKA="127.0.0.1:1", STYLESTREAM_REDIS_URL="notaurl-pw"))
    assert "invalid configuration: STYLESTREAM_REDIS_URL=<hidden>" in line and "redis://" in line
    assert "notaurl-pw" not in line


def test_kafka_options_that_are_not_json_name_the_variable_and_hide_the_value() -> None:
    line = one_line(_run(["topics"], STYLESTREAM_KAFKA="127.0.0.1:1", STYLESTREAM_KAFKA_OPTIONS='{"sasl": s3cret'))
    assert "STYLESTREAM_KAFKA_OPTIONS must be a JSON object" in line and "s3cret" not in line
    assert "EnvSettingsSource" not in line


def _images(folder) -> dict[str, str]:
    from PIL import Image

    paths = {}
    for name in ("onepx.png", "photo.gif", "photo.jpg", "photo.webp"):
        Image.new("RGB", (1, 1)).save(folder / name)
        paths[name] = str(folder / name)
    (folder / "gif-named.png").write_bytes((folder / "photo.gif").read_bytes())
    (folder / "empty.png").write_bytes(b"")
    return {**paths, "gif-named.png": str(folder / "gif-named.png"), "empty.png": str(folder / "empty.png")}


@pytest.mark.parametrize("args, says", [
    (["onepx.png", "--id", "bad id"], "not a post id"), (["photo.gif"], "not a JPEG, PNG or WebP"),
    (["gif-named.png"], "not a JPEG, PNG or WebP"), (["empty.png"], "it is empty"),
    (["onepx.png", "no-such.png"], "cannot read"),
])
def test_catalogue_add_refuses_a_bad_id_or_photo_with_exit_2_before_sending(tmp_path, args, says) -> None:
    images = _images(tmp_path)
    result = CliRunner().invoke(app, ["catalogue", "add", *(images.get(a, a) for a in args)],
                                env={"STYLESTREAM_KAFKA": "127.0.0.1:1", "STYLESTREAM_DELIVERY_TIMEOUT_S": "1"})
    assert result.exit_code == 2, result.output
    assert says in result.output


def test_catalogue_add_takes_jpeg_png_webp_and_urls(tmp_path) -> None:
    from workers.commands.recommend import _photos

    images = _images(tmp_path)
    photos = [images["onepx.png"], images["photo.jpg"], images["photo.webp"], "https://shop.example/a.gif"]
    assert _photos(photos) == photos
