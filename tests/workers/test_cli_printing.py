"""Lines the commands print stay whole on a narrow terminal (Rich wraps at the console's width unless told not
to), and the help names its placeholders for people."""

from __future__ import annotations

from rich.console import Console
from typer.testing import CliRunner

from streamcore.settings import Settings
from workers import launcher
from workers.cli import app


class _Stages:
    def __init__(self, *args, **kwargs) -> None:
        pass

    def processes(self) -> list:
        return []


def _up_output(monkeypatch, **settings) -> str:
    """What ``up`` prints when the broker and Redis are configured, the stages are not started, and Ctrl-C
    comes at once: on a 40-column console."""
    monkeypatch.setattr(launcher, "ensure_topics", lambda settings: [])
    monkeypatch.setattr(launcher, "Stages", _Stages)
    monkeypatch.setattr(launcher, "_serve_up_metrics", lambda settings, console: None)
    monkeypatch.setattr(launcher, "_supervise", lambda stages, stop, failed, console: stop.set())
    console = Console(record=True, width=40)
    assert launcher.run_up(Settings.named(kafka="h:1", redis_url="redis://h:1", **settings), demo=False, rate=1.0,
                           console=console) == 0
    return console.export_text()


def test_up_prints_where_metrics_are_on_one_line(monkeypatch) -> None:
    lines = _up_output(monkeypatch, metrics_port=19108).splitlines()
    assert any(line.startswith("stages started: ") and line.endswith("metrics from port 19108") for line in lines), lines
    assert any(line.startswith("topics ready (") and line.endswith("partitions)") for line in lines), lines


def test_up_with_metrics_port_0_says_the_stages_took_free_ports(monkeypatch) -> None:
    assert "metrics on free ports (each stage logs its own)" in _up_output(monkeypatch, metrics_port=0)


def test_topics_prints_the_created_topics_on_one_line(monkeypatch) -> None:
    import streamcore.kafka
    from workers.commands import stream

    created = [f"a-long-prefix.{name}" for name in ("posts", "hints", "labels", "feedback", "catalogue")]
    monkeypatch.setattr(streamcore.kafka, "ensure_topics", lambda settings: created)
    monkeypatch.setattr(streamcore.kafka, "undersized_topics", lambda settings: {})
    console = Console(record=True, width=40)
    monkeypatch.setattr(stream, "console", console)
    result = CliRunner().invoke(app, ["topics"], env={"STYLESTREAM_KAFKA": "127.0.0.1:1"})
    assert result.exit_code == 0, result.output
    lines = console.export_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("created [") and lines[0].endswith("4 partitions each"), lines


def test_produce_help_names_the_file_argument_file() -> None:
    result = CliRunner().invoke(app, ["produce", "--help"])
    assert result.exit_code == 0
    assert "--file FILE" in result.output and "FileBinaryRead" not in result.output
