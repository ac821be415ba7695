"""Containers serve /metrics and the probes on every interface (the code's default is loopback)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from streamcore.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_default_is_loopback():
    assert Settings().metrics.health_host == "127.0.0.1"


def test_both_images_compose_and_k8s_bind_all_interfaces():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", dockerfile, flags=re.MULTILINE)) == 1, "one stage, built per device by arguments"
    assert "STYLESTREAM_HEALTH_HOST=0.0.0.0" in dockerfile
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert compose["x-worker"]["environment"]["STYLESTREAM_HEALTH_HOST"] == "0.0.0.0"
    config = next(d for d in yaml.safe_load_all((DEPLOY / "k8s" / "config.yaml").read_text())
                  if d["kind"] == "ConfigMap")
    assert config["data"]["STYLESTREAM_HEALTH_HOST"] == "0.0.0.0"
