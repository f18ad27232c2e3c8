"""``buffered-stream check-config``: the shipped configs (envoy.yaml, the Kubernetes ConfigMaps, what
Envoy Gateway writes for the example policies) are clean and say what each route does; each broken
variant gives its finding, at its level, naming where it is and the fix, and an error makes the
command exit 1."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import test_deploy_envoy_gateway as gateway
from buffered_stream.check_config import ERROR, INFO, WARNING, Finding, check, load_bootstrap
from buffered_stream.envoy_config import (
    LISTENER_NAME,
    SERVICE_CLUSTER,
    cluster,
    converting_routes,
    enable_keepalive,
    load_packaged_config,
    routes,
)
from buffered_stream.settings import RouteSettings
from support.manifests import REPO_ROOT, Manifests, ext_proc_filter, hcm
from support.stack import SOURCE_ROOT

KUBERNETES = {
    "back": ("kubernetes", "litellm-envoy"),
    "front": ("kubernetes-front", "litellm-front-envoy"),
}


def configmap_bootstrap(directory: str, name: str) -> dict[str, Any]:
    return yaml.safe_load(Manifests(REPO_ROOT / "deploy" / directory).find("ConfigMap", name)["data"]["envoy.yaml"])


def gateway_rendering(keepalive: bool) -> dict[str, Any]:
    config = load_packaged_config()
    route, policy = (
        (gateway.KEEPALIVE_ROUTE, gateway.KEEPALIVE_EXT_PROC) if keepalive else (gateway.ROUTE, gateway.EXT_PROC)
    )
    gateway.rendering(route, policy)(config)
    return config


def findings(config: dict[str, Any], level: str | None = None) -> list[Finding]:
    found = check(config).all_findings
    return [f for f in found if level is None or f.level == level]


def actions(config: dict[str, Any]) -> dict[str, str]:
    return {r.name: r.action for r in check(config).routes}


# --- the shipped configs ---------------------------------------------------------------------


def test_shipped_envoy_yaml_is_clean_and_converts_the_four_apis() -> None:
    config = load_packaged_config()
    assert findings(config) == []
    converting = {r["name"] for r in converting_routes(config)}
    assert converting == {"chat_completions", "completions", "responses", "messages"}
    assert {actions(config)[name] for name in converting} == {"converts stream:false requests (buffered mode)"}
    assert actions(config)["direct"].startswith("passes through untouched")


@pytest.mark.parametrize("placement", sorted(KUBERNETES))
def test_kubernetes_configmaps_have_no_error_and_no_warning(placement: str) -> None:
    config = configmap_bootstrap(*KUBERNETES[placement])
    assert findings(config, ERROR) == [] and findings(config, WARNING) == [], check(config).text()
    converting = [a for a in actions(config).values() if a.startswith("converts")]
    if placement == "front":
        assert len(converting) == 4 and all("keep-alive (a newline after 5 s" in a for a in converting)
        # No route timeout there: the note says keep-alive routes have no total deadline.
        assert {f.message.split(":")[0] for f in findings(config, INFO)} == {"no total deadline"}
    else:
        assert converting == ["converts stream:false requests (buffered mode)"] * 2


def test_kubernetes_configmap_file_is_read_as_its_bootstrap() -> None:
    path = REPO_ROOT / "deploy" / "kubernetes" / "envoy-configmap.yaml"
    assert load_bootstrap(str(path)) == configmap_bootstrap(*KUBERNETES["back"])


@pytest.mark.parametrize("keepalive", [False, True], ids=["llm-completions", "llm-completions-keepalive"])
def test_envoy_gateway_renderings(keepalive: bool) -> None:
    config = gateway_rendering(keepalive)
    assert findings(config, ERROR) == [], check(config).text()
    routes_found = [r for r in check(config).routes if r.action.startswith("converts")]
    assert len(routes_found) == 4
    for report in routes_found:
        assert report.settings is not None and report.settings.models == ("llama-*", "qwen-*")
        messages = {f.level: f.message for f in report.findings}
        if keepalive:
            assert "keep-alive (a newline after 5 s" in report.action
            assert messages[INFO].startswith("timeout 3600 s is the hard deadline")
        else:
            assert report.action.startswith("converts stream:false requests (buffered mode)")
            # The request timeout bounds a plain route's generation: named, as a warning.
            assert messages[WARNING].startswith("timeout 3600 s runs until the upstream response ends")


# --- broken variants --------------------------------------------------------------------------


def first_converting(config: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in converting_routes(config) if r["name"] == "chat_completions")


def ext_proc(config: dict[str, Any]) -> dict[str, Any]:
    return ext_proc_filter(config, LISTENER_NAME)


def set_metadata(**values: Any) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        first_converting(config)["metadata"]["filter_metadata"]["buffered_stream"].update(values)

    return edit


def edit_route(fn: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    return lambda config: fn(first_converting(config))


def edit_filter(fn: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    return lambda config: fn(ext_proc(config))


def keepalive_route(fn: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        route = enable_keepalive(first_converting(config), 5)
        fn(route)

    return edit


def without_attribute(name: str) -> Callable[[dict[str, Any]], None]:
    return edit_filter(lambda f: f["request_attributes"].remove(name))


def without_allowed_mode(body_mode: str) -> Callable[[dict[str, Any]], None]:
    def edit(f: dict[str, Any]) -> None:
        f["allowed_override_modes"] = [m for m in f["allowed_override_modes"] if m["response_body_mode"] != body_mode]

    return edit_filter(edit)


def sending_request_headers(config: dict[str, Any]) -> None:
    """request_header_mode SEND: the service then also skips non-API requests with a mode override."""
    f = ext_proc(config)
    f["processing_mode"]["request_header_mode"] = "SEND"
    for mode in f["allowed_override_modes"]:
        mode["request_header_mode"] = "SEND"


def no_http2(config: dict[str, Any]) -> None:
    del cluster(config, SERVICE_CLUSTER)["typed_extension_protocol_options"]


def filter_disabled(config: dict[str, Any]) -> None:
    first_converting(config)["typed_per_filter_config"] = {
        "envoy.filters.http.ext_proc": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
            "disabled": True,
        }
    }


def short_stream_idle_timeout(config: dict[str, Any]) -> None:
    hcm(config, LISTENER_NAME)["stream_idle_timeout"] = "20s"
    del first_converting(config)["route"]["idle_timeout"]


# name: (edit, level, where (start), what the message says, what the fix says)
BROKEN: dict[str, tuple[Callable[[dict[str, Any]], None], str, str, str, str]] = {
    "keepalive-without-full-duplex": (
        set_metadata(keepalive_seconds=5),
        ERROR,
        "route chat_completions",
        "not FULL_DUPLEX_STREAMED",
        "response_body_mode: FULL_DUPLEX_STREAMED",
    ),
    "full-duplex-without-trailers": (
        keepalive_route(
            lambda r: r["typed_per_filter_config"]["envoy.filters.http.ext_proc"]["overrides"][
                "processing_mode"
            ].update(response_trailer_mode="SKIP")
        ),
        ERROR,
        "route chat_completions",
        "needs response_trailer_mode: SEND",
        "response_trailer_mode: SEND",
    ),
    "no-route-metadata-attribute": (
        without_attribute("xds.route_metadata"),
        ERROR,
        "listener ingress, filter",
        "lacks xds.route_metadata",
        "xds.route_metadata",
    ),
    "no-route-name-attribute": (
        without_attribute("xds.route_name"),
        WARNING,
        "listener ingress, filter",
        "lacks xds.route_name",
        "xds.route_name",
    ),
    "no-path-attribute": (
        without_attribute("request.path"),
        ERROR,
        "listener ingress, filter",
        "request headers are skipped",
        "request.path",
    ),
    "accept-encoding-kept": (
        edit_route(lambda r: r.pop("request_headers_to_remove")),
        ERROR,
        "route chat_completions",
        "accept-encoding reaches the upstream",
        "request_headers_to_remove: [accept-encoding]",
    ),
    "default-route-timeout": (
        edit_route(lambda r: r["route"].pop("timeout")),
        ERROR,
        "route chat_completions",
        "Envoy's default 15 s",
        "timeout: 0s",
    ),
    "finite-route-timeout": (
        edit_route(lambda r: r["route"].update(timeout="120s")),
        WARNING,
        "route chat_completions",
        "timeout 120 s runs until the upstream response ends",
        "timeout: 0s",
    ),
    "keepalive-route-deadline": (
        keepalive_route(lambda r: r["route"].update(timeout="120s")),
        INFO,
        "route chat_completions",
        "timeout 120 s is the hard deadline",
        "",
    ),
    "short-idle-timeout": (
        edit_route(lambda r: r["route"].update(idle_timeout="30s")),
        WARNING,
        "route chat_completions",
        "idle_timeout 30 s",
        "idle_timeout: 600s",
    ),
    "short-stream-idle-timeout": (
        short_stream_idle_timeout,
        WARNING,
        "route chat_completions",
        "stream_idle_timeout (HTTP connection manager) 20 s",
        "idle_timeout: 600s",
    ),
    "default-message-timeout": (
        edit_filter(lambda f: f.pop("message_timeout")),
        WARNING,
        "listener ingress, filter",
        "message_timeout is unset (Envoy's default 200 ms)",
        "message_timeout: 5s",
    ),
    "failure-mode-allow": (
        edit_filter(lambda f: f.update(failure_mode_allow=True)),
        ERROR,
        "listener ingress, filter",
        "failure_mode_allow: true",
        "failure_mode_allow: false",
    ),
    "no-mode-override": (
        edit_filter(lambda f: f.update(allow_mode_override=False)),
        ERROR,
        "listener ingress, filter",
        "allow_mode_override is not true",
        "allow_mode_override: true",
    ),
    "streamed-mode-not-allowed": (
        lambda c: (set_metadata(mode="streamed")(c), without_allowed_mode("STREAMED")(c)),
        ERROR,
        "listener ingress, filter",
        "when converting (streamed mode): Envoy refuses it (routes chat_completions)",
        "response_body_mode: STREAMED",
    ),
    "skip-override-not-allowed": (
        sending_request_headers,
        ERROR,
        "listener ingress, filter",
        "when skipping a request that is not ours",
        "response_header_mode: SKIP",
    ),
    "request-body-streamed": (
        edit_filter(lambda f: f["processing_mode"].update(request_body_mode="STREAMED")),
        ERROR,
        "listener ingress, filter",
        "request_body_mode is STREAMED",
        "request_body_mode: BUFFERED",
    ),
    "invalid-settings": (set_metadata(mode="fast"), ERROR, "route chat_completions", "invalid route settings", ""),
    "filter-disabled-on-converting-route": (
        filter_disabled,
        ERROR,
        "route chat_completions",
        "the ext_proc filter is disabled here",
        "disabled: true",
    ),
    "ext-proc-cluster-without-http2": (
        no_http2,
        ERROR,
        f"cluster {SERVICE_CLUSTER}",
        "does not speak HTTP/2",
        "http2_protocol_options",
    ),
    "usage-metadata-refused": (
        edit_filter(lambda f: f.pop("metadata_options")),
        INFO,
        "listener ingress, filter",
        "usage and outcome",
        "receiving_namespaces",
    ),
}


@pytest.mark.parametrize("variant", sorted(BROKEN))
def test_each_broken_variant_gives_its_finding(variant: str) -> None:
    edit, level, where, message, fix = BROKEN[variant]
    config = copy.deepcopy(load_packaged_config())
    edit(config)

    matching = [f for f in findings(config) if message in f.message]
    assert len(matching) == 1, check(config).text()
    (finding,) = matching
    assert finding.level == level and finding.where.startswith(where), finding
    assert fix in finding.fix, finding.fix
    others = [f for f in findings(config) if f != finding and f.level in (ERROR, WARNING)]
    allowed_company = {"keepalive-route-deadline", "full-duplex-without-trailers"}  # full duplex on one route only
    assert others == [] or variant in allowed_company, check(config).text()


def test_keepalive_without_full_duplex_is_still_a_conversion() -> None:
    config = copy.deepcopy(load_packaged_config())
    set_metadata(keepalive_seconds=5)(config)
    (report,) = [r for r in check(config).routes if r.name == "chat_completions"]
    assert report.action == "converts stream:false requests (buffered mode)"


def test_defaults_from_the_service_settings_apply_before_route_metadata() -> None:
    config = copy.deepcopy(load_packaged_config())
    for route in converting_routes(config):
        del route["metadata"]["filter_metadata"]["buffered_stream"]["mode"]
    report = check(config, RouteSettings(keepalive_seconds=5))
    keepalive_errors = [f for f in report.errors if "not FULL_DUPLEX_STREAMED" in f.message]
    assert len(keepalive_errors) == 4


# --- the command ------------------------------------------------------------------------------


def run_check(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "buffered_stream", "check-config", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(SOURCE_ROOT), "PATH": ""},
    )


def test_command_exit_status_and_text(tmp_path: Path) -> None:
    ok = run_check(str(REPO_ROOT / "envoy.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert "route chat_completions (ingress, path /v1/chat/completions): converts" in ok.stdout
    assert ok.stdout.rstrip().endswith("6 routes: 0 errors, 0 warnings, 0 notes")

    broken = copy.deepcopy(load_packaged_config())
    set_metadata(keepalive_seconds=5)(broken)
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(broken))
    failed = run_check(str(path))
    assert failed.returncode == 1
    assert "error: keepalive_seconds: 5" in failed.stdout and "fix: typed_per_filter_config:" in failed.stdout

    as_json = json.loads(run_check("--json", str(path)).stdout)
    assert as_json["errors"] == 1
    (route,) = [r for r in as_json["routes"] if r["name"] == "chat_completions"]
    assert route["findings"][0]["level"] == "error"


def test_command_reads_a_configmap_and_a_settings_file(tmp_path: Path) -> None:
    configmap = REPO_ROOT / "deploy" / "kubernetes-front" / "envoy-configmap.yaml"
    assert run_check(str(configmap)).returncode == 0
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"defaults": {"keepalive_seconds": 5}}))
    back = REPO_ROOT / "deploy" / "kubernetes" / "envoy-configmap.yaml"
    with_defaults = run_check("--settings", str(settings), str(back))
    assert with_defaults.returncode == 1 and with_defaults.stdout.count("not FULL_DUPLEX_STREAMED") == 2


def test_command_refuses_what_is_not_an_envoy_config(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("just: text\n")
    refused = run_check(str(path))
    assert refused.returncode != 0 and "no Envoy bootstrap" in refused.stderr


def test_every_route_is_reported_once() -> None:
    config = load_packaged_config()
    assert [r.name for r in check(config).routes] == [r["name"] for r in routes(config)]
