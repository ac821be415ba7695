"""promtool accepts the Prometheus config and alert rules, and the rules fire on the synthetic series in
alerts_test.yml (and stay silent where they should)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

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


def test_every_alert_links_to_its_runbook_section():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text(encoding="utf-8"))
    runbook = (DEPLOY.parent / "docs" / "runbook.md").read_text(encoding="utf-8")
    sections = {line[3:].strip().lower() for line in runbook.splitlines() if line.startswith("## ")}
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    assert alerts
    for rule in alerts:
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert path == "docs/runbook.md" and anchor == rule["alert"].lower() and anchor in sections, rule["alert"]
