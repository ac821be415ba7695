"""promtool accepts the Prometheus config and alert rules, and the rules fire on the synthetic series in
alerts_test.yml (and stay silent where they should)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.promql import ALERTS, DEPLOY

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
pytestmark = pytest.mark.skipif(not Path(PROMTOOL).exists(), reason="promtool missing (Debian package prometheus)")


def _promtool(*args: str) -> str:
    done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_alert_rules_pass_promtool_check_rules():
    assert "SUCCESS" in _promtool("check", "rules", str(ALERTS))


def test_prometheus_config_passes_promtool_check_config():
    out = _promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert "1 rule files found" in out


def test_alert_rules_unit_tests():
    _promtool("test", "rules", str(Path(__file__).with_name("alerts_test.yml")))
