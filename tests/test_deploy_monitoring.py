"""The Grafana dashboard and the Prometheus rules in ``deploy/``: valid, and about metrics that exist.

``promtool`` (Debian package ``prometheus``) checks the rules and runs their unit tests; every metric
name and label the dashboard and the rules use must be in what a live service pool exposes after
real conversions through Envoy (buffered, streamed, keep-alive, an upstream error).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from buffered_stream.envoy_config import enable_keepalive, routes
from support.backend import Completion, Sse
from support.net import http_request, wait_until
from support.stack import REPO_ROOT, Harness, Stack

RULES = REPO_ROOT / "deploy/prometheus/buffered-stream-rules.yaml"
RULE_TESTS = REPO_ROOT / "deploy/prometheus/buffered-stream-rules.test.yaml"
DASHBOARD = REPO_ROOT / "deploy/grafana/buffered-stream-dashboard.json"
# Labels Prometheus adds to every scraped series, and series it makes itself.
TARGET_LABELS = {"job", "instance"}
PROMETHEUS_SERIES = {"up"}
NAME = re.compile(r"\b(buffered_stream_[a-z0-9_]+|up)\b(\s*\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|ignoring|on)\s*\(([^)]*)\)")
LABEL_VALUES = re.compile(r"label_values\(\s*([a-z_]+)(?:\{[^}]*\})?\s*,\s*([a-z_]+)\s*\)")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool is not installed: apt-get install -y prometheus (Debian's package ships it)", pytrace=False
        )
    return found


def test_the_rules_pass_promtool_check() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout + result.stderr


def test_the_rules_fire_as_their_unit_tests_say() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def rule_expressions() -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_expressions() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", ())]


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    board = dashboard()
    panels = board["panels"]
    assert board["uid"] and board["title"] == "buffered-stream" and board["schemaVersion"] >= 36
    assert len({p["id"] for p in panels}) == len(panels)
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "job", "instance", "route"}
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"} and panel["targets"]
    titles = " ".join(p["title"].lower() for p in panels)
    for shown in ("outcome", "in flight", "keep-alive", "assembly", "first token", "tokens per second", "workers"):
        assert shown in titles, shown


def used(expressions: list[str]) -> dict[str, set[str]]:
    """Metric name -> the labels an expression selects or groups it by (grouping labels count for
    every metric of that expression)."""
    found: dict[str, set[str]] = {}
    for expr in expressions:
        names = []
        for match in NAME.finditer(expr):
            name, selector = match.group(1), match.group(2) or ""
            names.append(name)
            found.setdefault(name, set()).update(MATCHER.findall(selector))
        grouped = {label.strip() for group in GROUPING.findall(expr) for label in group.split(",") if label.strip()}
        for name in names:
            found[name] |= grouped - ({"le"} if not name.endswith("_bucket") else set())
        for name, label in LABEL_VALUES.findall(expr):
            found.setdefault(name, set()).add(label)
    return found


def test_expressions_are_parsed() -> None:
    """The checks below see what the files use (a guard against a parser that finds nothing)."""
    rules, board = (
        used(rule_expressions()),
        used(dashboard_expressions() + [v.get("definition", "") for v in dashboard()["templating"]["list"]]),
    )
    assert {
        "buffered_stream_requests_total",
        "buffered_stream_worker_restarts_total",
        "buffered_stream_assembly_seconds_bucket",
        "up",
    } <= set(rules)
    assert rules["buffered_stream_requests_total"] >= {"outcome", "job", "instance"}
    assert {
        "buffered_stream_first_token_seconds_bucket",
        "buffered_stream_tokens_per_second_sum",
        "buffered_stream_keepalive_bytes_total",
        "buffered_stream_in_flight_requests",
        "buffered_stream_workers",
    } <= set(board)
    assert "route" in board["buffered_stream_first_token_seconds_bucket"]
    assert "worker" in board["buffered_stream_worker_requests_total"]


# -- against a live service pool ------------------------------------------------------------------


def monitoring_routes(config: dict[str, Any]) -> None:
    table = routes(config)
    chat = next(r for r in table if r["name"] == "chat_completions")
    for name, prefix in (("chat_streamed", "/streamed"), ("chat_keepalive", "/keepalive")):
        route = copy.deepcopy(chat)
        route["name"] = name
        route["match"] = {"path": f"{prefix}/v1/chat/completions"}
        route["route"]["prefix_rewrite"] = "/v1/chat/completions"
        route["metadata"]["filter_metadata"]["buffered_stream"]["mode"] = "streamed"
        if name == "chat_keepalive":
            enable_keepalive(route, 0.25)
        table.insert(0, route)


@pytest.fixture(scope="module")
def exposed(module_harness: Harness) -> dict[str, set[str]]:
    """Sample name -> label names, scraped from a two-worker pool after real conversions."""
    backend = module_harness.backend()
    backend.on(Completion("one two three four five", token_delay=0.02), model="paced")
    backend.on(Completion("slow answer", chunk_delays=(0.0, 0.0, 0.8, 0.0, 0.0)), model="slow")
    backend.on(Sse([{"error": {"message": "overloaded", "code": 503}}]), model="broken")
    stack: Stack = module_harness.stack(backend=backend, customize=monitoring_routes, workers=2)
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    for path, model, status in (
        ("", "paced", 200),
        ("/streamed", "paced", 200),
        ("/keepalive", "paced", 200),
        ("/keepalive", "slow", 200),
        ("", "broken", 503),
        ("/streamed", "paced", 200),
    ):
        got = http_request(f"{stack.url}{path}/v1/chat/completions", "POST", {**chat, "model": model}, timeout=30)
        assert got.status == status, got.body[:300]

    def scrape() -> dict[str, set[str]]:
        labels: dict[str, set[str]] = {}
        for family in text_string_to_metric_families(stack.service.metrics()):
            for sample in family.samples:
                labels.setdefault(sample.name, set()).update(sample.labels)
        return labels

    def complete() -> bool:
        found = scrape()
        return all(
            name in found
            for name in (
                "buffered_stream_keepalive_bytes_total",
                "buffered_stream_first_token_seconds_bucket",
                "buffered_stream_worker_requests_total",
            )
        )

    wait_until(complete, 15, message=lambda: stack.service.metrics())
    return scrape()


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_metric_and_label_used_is_exposed(exposed: dict[str, set[str]], source: str) -> None:
    expressions = (
        rule_expressions()
        if source == "rules"
        else (dashboard_expressions() + [v.get("definition", "") for v in dashboard()["templating"]["list"]])
    )
    for name, labels in used(expressions).items():
        if name in PROMETHEUS_SERIES:
            continue
        assert name in exposed, f"{source} uses {name}, which the service does not expose"
        missing = labels - TARGET_LABELS - exposed[name]
        assert not missing, (
            f"{source} uses {name} with labels {sorted(missing)} it does not have ({sorted(exposed[name])})"
        )


def test_the_timing_histograms_carry_a_route_label_and_no_model_label(exposed: dict[str, set[str]]) -> None:
    for family in ("first_token_seconds", "generation_seconds", "tokens_per_second"):
        assert exposed[f"buffered_stream_{family}_bucket"] == {"route", "le"}
        assert exposed[f"buffered_stream_{family}_count"] == {"route"}
