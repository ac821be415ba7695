"""Just enough PromQL lexing to list the metric names an expression selects, plus what the code exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from streamcore.metrics import StageMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "stylestream.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"

#: Series Prometheus writes itself for every target; no code exports them.
SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                       "bool", "offset", "atan2", "inf", "nan",
                       # aggregation operators may be followed by a grouping before their parenthesis
                       "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                       "bottomk", "topk", "quantile", "limitk", "limit_ratio"})
_TOKEN = re.compile(r"""
    "(?:[^"\\]|\\.)*" | '(?:[^'\\]|\\.)*' | `[^`]*`          # strings
  | \$\{[^}]*\} | \$\w+                                      # Grafana variables
  | \{[^}]*\}                                                # label matchers
  | \[[^\]]*\]                                               # range / subquery
  | (?P<grouping>\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\))
  | \d+(?:\.\d+)?(?:[eE][+-]?\d+)?[smhdwy]*                  # numbers, durations
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)(?P<call>\s*\()?
""", re.VERBOSE)


def metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (identifiers that are not functions or keywords)."""
    names = set()
    for match in _TOKEN.finditer(expr):
        ident = match.group("ident")
        if ident and not match.group("call") and ident.lower() not in _KEYWORDS:
            names.add(ident)
    return names


def exported_names() -> set[str]:
    """Every sample name a worker or ``up`` can expose, from the families registered by :class:`StageMetrics` and
    :class:`~workers.launcher.UpMetrics`."""
    from workers.launcher import UpMetrics

    registry = CollectorRegistry()
    StageMetrics("any", registry=registry)
    UpMetrics(registry)
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("_sum", "_count", "_created"), "info": ("_info",), "gauge": ("",),
                "stateset": ("",), "enum": ("",), "unknown": ("",)}
    return {family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]}


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    """``(where, expr)`` for every panel target and templating query of the dashboard."""
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "datasource":  # its query is a plugin id, not PromQL
            continue
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        found = re.fullmatch(r"label_values\((.+),\s*\w+\)", query or "")
        if found:
            yield f"variable {variable['name']}", found.group(1)
        elif query:
            yield f"variable {variable['name']}", query


def alert_expressions() -> Iterator[tuple[str, str]]:
    """``(where, expr)`` for every alerting and recording rule."""
    for group in yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]:
        for rule in group["rules"]:
            yield f"rule {rule.get('alert') or rule.get('record')}", rule["expr"]
