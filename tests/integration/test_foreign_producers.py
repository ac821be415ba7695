"""Posts from outside Python's stylestream package are labelled: the example post sent by the documented
kafka-python and confluent-kafka scripts, by kcat, and by ``stylestream produce --file`` (docs/contract.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streamcore.client import StylestreamClient
from workers.cli import app

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "schemas" / "examples" / "post.v1.b64.json"


def _post_file(tmp_path: Path, post_id: str) -> Path:
    path = tmp_path / f"{post_id}.jsonl"
    path.write_text(json.dumps(json.loads(EXAMPLE.read_text()) | {"post_id": post_id}) + "\n")
    return path


def _labelled(settings, workers, send) -> None:
    """Start a classifier, run ``send(settings)`` (which returns the post id it sent), wait for that label."""
    group = workers(settings)
    group.start("classify")
    group.wait_ready()
    post_id = send(settings)
    with StylestreamClient(settings) as client:
        assert client.wait_label(post_id, timeout=180).post_id == post_id


@pytest.mark.parametrize("script", ["produce_posts.py", "produce_posts_confluent.py"])
def test_the_documented_scripts_send_a_post_that_is_labelled(script, make_settings, workers, tmp_path) -> None:
    if script.endswith("confluent.py") and importlib.util.find_spec("confluent_kafka") is None:
        pytest.skip("confluent-kafka is not installed (a test extra: pip install -e .[test])")

    def send(settings) -> str:
        result = subprocess.run([sys.executable, str(ROOT / "docs" / "examples" / script), settings.kafka.bootstrap,
                                 str(_post_file(tmp_path, "by-script")), settings.kafka.topic("posts")],
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        return "by-script"

    _labelled(make_settings(), workers, send)


def test_stylestream_produce_file_sends_a_post_that_is_labelled(make_settings, workers, tmp_path) -> None:
    def send(settings) -> str:
        result = CliRunner().invoke(app, ["produce", "--file", str(_post_file(tmp_path, "by-cli"))],
                                    env={"STYLESTREAM_KAFKA": settings.kafka.bootstrap,
                                         "STYLESTREAM_TOPIC_PREFIX": settings.kafka.topic_prefix})
        assert result.exit_code == 0, result.output
        return "by-cli"

    _labelled(make_settings(), workers, send)


def _kcat_env(kcat: str, bootstrap: str, tmp_path: Path) -> dict[str, str]:
    """The environment under which ``kcat`` completes the handshake with ``bootstrap``.

    Debian 12's kcat links librdkafka 2.0.2, which misreads the ApiVersion v3 reply of the embedded broker
    (Tansu 0.6: "ApiVersionRequest failed: Local: Read underflow"); then kcat runs on the newer librdkafka
    that the confluent-kafka wheel bundles, as docs/contract.md tells users to.
    """
    def handshake(env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run([kcat, "-L", "-b", bootstrap, "-m", "10"], capture_output=True, text=True,
                              timeout=60, check=False, env=env)

    env = dict(os.environ)
    if handshake(env).returncode == 0:
        return env
    if importlib.util.find_spec("confluent_kafka") is None:
        pytest.fail("this kcat's librdkafka cannot talk to the broker and confluent-kafka (a test extra) is missing")
    bundled = Path(importlib.util.find_spec("confluent_kafka").origin).parent.with_suffix(".libs")
    (lib,) = bundled.glob("librdkafka*.so*")
    (tmp_path / "librdkafka.so.1").symlink_to(lib)
    env["LD_LIBRARY_PATH"] = str(tmp_path)
    done = handshake(env)
    assert done.returncode == 0, done.stderr
    return env


def test_kcat_sends_a_post_that_is_labelled(make_settings, workers, tmp_path) -> None:
    kcat = shutil.which("kcat")
    if kcat is None:
        if os.environ.get("CI"):  # scripts/bootstrap installs it: CI must not pass by skipping
            pytest.fail("kcat is not installed (scripts/bootstrap installs Debian's kcat)")
        pytest.skip("kcat is not installed (apt-get install kcat)")
    settings = make_settings()
    env = _kcat_env(kcat, settings.kafka.bootstrap, tmp_path)

    def send(settings) -> str:
        # The command of docs/contract.md: the key (post id) before a '|', the post as one JSON line.
        command = (f"jq -r '\"\\(.post_id)|\\(tojson)\"' {_post_file(tmp_path, 'by-kcat')} | "
                   f"{kcat} -P -b {settings.kafka.bootstrap} -t {settings.kafka.topic('posts')} -K'|' -X message.max.bytes=8454144 "
                   "-X partitioner=murmur2_random")
        result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120, check=False,
                                env=env)
        assert result.returncode == 0, result.stderr
        return "by-kcat"

    _labelled(settings, workers, send)
