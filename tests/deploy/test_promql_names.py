"""Every PromQL expression in the Grafana dashboard and the alert rules names a series the workers export."""

from __future__ import annotations

import json

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML missing: it is a test extra (pip install -e .[test])")

from tests.deploy.promql import (
    DASHBOARD,
    DEPLOY,
    SYNTHETIC,
    alert_expressions,
    dashboard_expressions,
    exported_names,
    metric_names,
)

EXPRESSIONS = [*dashboard_expressions(), *alert_expressions()]


def test_the_lexer_finds_metrics_and_skips_functions_labels_and_keywords():
    expr = ('histogram_quantile(0.99, sum by (stage, le) (rate(a_seconds_bucket{stage=~"$stage", x="y z"}[5m])))'
            ' / ignoring(reason) group_left sum without (reason) (b_total offset 1h) > 1e3 unless on(job) up'
            ' and sum(increase(c_total[$__rate_interval])) > bool 0')
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "up", "c_total"}


def test_exported_names_include_the_suffixes_prometheus_sees():
    names = exported_names()
    assert {"stylestream_posts_labeled_total", "stylestream_end_to_end_latency_seconds_bucket",
            "stylestream_batch_size_count", "stylestream_model_info", "stylestream_consumer_lag"} <= names
    assert "stylestream_posts_labeled" not in names            # a counter is only ever seen with _total


def test_there_are_expressions_to_check():
    assert len([w for w, _ in EXPRESSIONS if w.startswith("panel")]) >= 15
    assert len([w for w, _ in EXPRESSIONS if w.startswith("rule")]) >= 5


@pytest.mark.parametrize(("where", "expr"), EXPRESSIONS, ids=[w for w, _ in EXPRESSIONS])
def test_expression_names_only_exported_metrics(where, expr):
    names = metric_names(expr)
    assert names, f"{where}: no metric found in {expr!r}"
    unknown = names - exported_names() - SYNTHETIC
    assert not unknown, f"{where} names metrics no worker exports: {sorted(unknown)}"


def test_dashboard_covers_what_operators_watch():
    used = set().union(*(metric_names(e) for w, e in EXPRESSIONS if not w.startswith("rule")))
    for needed in ("stylestream_messages_consumed_total", "stylestream_posts_labeled_total",   # throughput
                   "stylestream_end_to_end_latency_seconds_bucket", "stylestream_stage_latency_seconds_bucket",
                   "stylestream_batch_size_bucket", "stylestream_consumer_lag", "stylestream_dead_letters_total",
                   "stylestream_model_info", "stylestream_posts_with_hints_total", "stylestream_queue_depth"):
        assert needed in used, needed


def test_dashboard_structure_matches_the_provisioning():
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert board["uid"] and board["title"]
    # Importable anywhere: the datasource is a variable (and an import input), not this stack's uid.
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert [i["pluginId"] for i in board["__inputs"]] == ["prometheus"]
    assert {"job", "namespace"} <= set(variables)
    uid = "${datasource}"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == uid, panel["title"]
    for variable in variables.values():
        if "datasource" in variable:
            assert variable["datasource"]["uid"] == uid, variable["name"]
    up = [t["expr"] for p in board["panels"] for t in p.get("targets", []) if t["expr"].startswith("sum by (job) (up")]
    assert up and all('job=~"$job"' in e and 'namespace=~"$namespace"' in e for e in up)
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/stylestream.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
