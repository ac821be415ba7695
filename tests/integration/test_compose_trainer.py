"""The compose stack's trainer consumes a user's correction: the trainer service's command and environment from
deploy/docker-compose.yml, run as a process with the embedded broker and Redis standing in for the images, gets a
post and then a correction sent by the client, and joins them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from serving.promotion import promote
from streamcore.client import StylestreamClient
from tests.support import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PHOTO = ROOT / "training" / "real" / "data" / "fixture" / "images" / "fdbc4a3c-4902-45ac-a10e-b641e3ebb0d4.jpg"
#: What the embedded stack and the test's own ports, prefixes and registry replace.
_STANDINS = {"STYLESTREAM_KAFKA", "STYLESTREAM_REDIS_URL", "STYLESTREAM_METRICS_PORT", "STYLESTREAM_HEALTH_HOST"}


def _compose_trainer() -> tuple[list[str], dict[str, str]]:
    """The trainer service's command and its STYLESTREAM_* settings, ``${VAR:-default}`` read as the default."""
    service = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())["services"]["trainer"]
    env = {name: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))
           for name, value in service.get("environment", {}).items() if name not in _STANDINS}
    return service["command"], env


def test_the_compose_trainer_joins_a_correction_sent_by_the_client(make_settings, workers) -> None:
    command, env = _compose_trainer()
    assert command[:1] == ["worker"]
    settings = make_settings(**{name.removeprefix("STYLESTREAM_").lower(): value for name, value in env.items()})
    promote(settings, "tiny-test")  # a model serves: the trainer has no first model to train at start
    group = workers(settings)
    trainer = group.start(command[1])
    group.wait_ready()
    with StylestreamClient(settings) as client:
        post = client.publish_image(PHOTO, caption="new maxi dress", post_id="compose-post-1")
        client.flush()
        stored = r"^stylestream_trainer_stored_posts 1\.0$"
        wait_until(lambda: re.search(stored, group.metrics(trainer), re.MULTILINE) is not None, timeout=60,
                   what="the post stored by the trainer")
        client.correct(post.post_id, ["dresses"], subcategories=["maxi_dress"]).wait(timeout=30)
    joined = r'^stylestream_trainer_feedback_total\{result="joined"\} 1\.0$'
    wait_until(lambda: re.search(joined, group.metrics(trainer), re.MULTILINE) is not None, timeout=60,
               what="the correction joined to its post")
    assert group.alive()
