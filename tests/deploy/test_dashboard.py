"""The Grafana dashboard and the alert rules, against the metrics the service defines: a shard
variable that every per-shard query follows, contexts summed over shards, every predict route
counted, failures and capacity charted, and no alert on a metric that does not exist."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from service import metrics
from service.app import create_app
from service.settings import Settings
from tests.deploy.test_compose import DASHBOARD_FILE, DEPLOY, all_panels

ALERTS_FILE = DEPLOY / "prometheus" / "alerts.yml"
SHARD_FILTER = 'shard=~"$shard"'


def defined_metrics() -> dict[str, tuple[str, ...]]:
    """Every sample name the service can expose (`psp_x_total`, `psp_h_bucket`, ...) -> labels."""
    names: dict[str, tuple[str, ...]] = {}
    for value in vars(metrics).values():
        kind = getattr(value, "_type", None)
        name = getattr(value, "_name", None)
        if kind is None or not isinstance(name, str) or not name.startswith("psp_"):
            continue
        labels = tuple(value._labelnames)
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("_sum", "_count"),
        }.get(kind, ("",))
        for suffix in suffixes:
            names[name + suffix] = labels
    assert "psp_trainer_divergences_total" in names and "psp_contexts" in names
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return loaded


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def selectors(expr: str) -> Iterator[tuple[str, str]]:
    """`(metric, label matchers)` of every psp_ selector in a PromQL expression."""
    for match in re.finditer(r"\b(psp_[a-z0-9_]+)(\{[^}]*\})?", expr):
        yield match.group(1), match.group(2) or ""


def test_a_shard_variable_filters_every_per_shard_query(dashboard: dict[str, Any]) -> None:
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "shard"]
    assert variable["type"] == "query" and variable["includeAll"] and variable["multi"]
    assert re.fullmatch(r"label_values\(psp_\w+, shard\)", variable["definition"])
    per_shard = {name for name, labels in defined_metrics().items() if "shard" in labels}
    filtered = set()
    for title, expr in queries(dashboard):
        for metric, matchers in selectors(expr):
            if metric in per_shard:
                assert SHARD_FILTER in matchers, f"{title}: {metric} ignores $shard in {expr}"
                filtered.add(metric)
    assert len(filtered) >= 8, sorted(filtered)


def test_contexts_are_summed_over_shards(dashboard: dict[str, Any]) -> None:
    (expr,) = [e for _, e in queries(dashboard) if "psp_contexts" in e]
    assert re.fullmatch(r"sum\(max by \(shard\) \(psp_contexts\{[^}]*\}\)\)", expr), expr


def predict_routes(data_dir: Path) -> set[str]:
    """The routes that answer predictions (the app is built, never started)."""
    app = create_app(Settings(device="cpu", data_dir=data_dir))
    return {path for path in app.openapi()["paths"] if re.search(r"^/predict|/infer$", path)}


def test_predict_qps_counts_every_predict_route(dashboard: dict[str, Any], tmp_path: Path) -> None:
    routes = predict_routes(tmp_path)
    assert {"/predict", "/predict/{key}", "/v2/models/{key}/infer"} <= routes
    (panel,) = [p for p in all_panels(dashboard) if p["title"] == "Predict QPS"]
    for target in panel["targets"]:
        (pattern,) = re.findall(r'handler=~"([^"]+)"', target["expr"])
        # PromQL regexes match the whole label value.
        every = {"/contexts", "/train/{key}", "/feedback/{key}", "/model", *routes}
        counted = {route for route in every if re.fullmatch(pattern, route)}
        assert counted == routes, f"{target['expr']} counts {sorted(counted)}"


def test_failures_and_capacity_are_charted(dashboard: dict[str, Any]) -> None:
    charted = {metric for _, expr in queries(dashboard) for metric, _ in selectors(expr)}
    assert {
        "psp_trainer_divergences_total",
        "psp_dead_lettered_entries_total",
        "psp_background_restarts_total",
        "psp_shard_live_contexts",
        "psp_shard_capacity",
        "psp_checkpoint_fetches_total",
    } <= charted


def test_alerts_and_dashboard_use_only_defined_metrics(dashboard: dict[str, Any]) -> None:
    defined = defined_metrics()
    rules = yaml.safe_load(ALERTS_FILE.read_text())["groups"]
    expressions = [rule["expr"] for group in rules for rule in group["rules"]]
    expressions += [expr for _, expr in queries(dashboard)]
    for expr in expressions:
        for metric, matchers in selectors(expr):
            assert metric in defined, f"{metric} is no metric of service.metrics ({expr})"
            used = set(re.findall(r"(\w+)\s*[=!]~?", matchers)) - {"job", "instance"}
            assert used <= set(defined[metric]), (
                f"{metric} has no labels {used - set(defined[metric])}"
            )
