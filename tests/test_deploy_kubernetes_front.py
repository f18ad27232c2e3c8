"""The "front" manifests: Envoy and buffered-stream at the pod's door, LiteLLM behind them on
loopback. What the product needs from them: a valid Envoy config whose ext_proc filter is the
shipped one, converting routes for every completions path LiteLLM serves with keep-alive and the
full-duplex mode it needs, everything else untouched, probes that reach loopback-only processes,
hardening, pinned images and a shutdown order that finishes LiteLLM's requests. The last tests run
that Envoy config itself, addresses patched, with the service and a stand-in for LiteLLM."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import yaml

from buffered_stream.cli import build_parser
from buffered_stream.envoy_config import enable_keepalive
from buffered_stream.settings import RouteSettings, route_settings_from_metadata
from support.backend import Completion, Json, ScriptedBackend
from support.manifests import (
    LITELLM_PROBES,
    REPO_ROOT,
    SIDECAR_PROBES,
    Manifests,
    Pod,
    arg_after,
    assert_admin_reachable_only_through_probe_route,
    assert_envoy_accepts,
    assert_ext_proc_is_the_shipped_one,
    cluster,
    container_ports,
    converts,
    endpoint_address,
    ext_proc_disabled,
    hcm,
    listener,
    route_for,
    routes,
    seconds,
)
from support.net import free_port, http_request
from support.stack import Envoy, Harness, Service

MANIFESTS = Manifests(REPO_ROOT / "deploy" / "kubernetes-front")
CONVERTING_PATHS = {"/v1/chat/completions", "/chat/completions", "/v1/completions", "/completions"}
KEEPALIVE_SECONDS = 5
# The shortest idle timeouts in front of a service that keep-alive must beat (AWS ALB, nginx: 60 s).
COMMON_IDLE_TIMEOUT_S = 60

find = MANIFESTS.find
POD = Pod.of(find("Deployment", "litellm-front"))
CONTAINERS = POD.containers
ENVOY_CONFIG_TEXT = find("ConfigMap", "litellm-front-envoy")["data"]["envoy.yaml"]
ENVOY_CONFIG = yaml.safe_load(ENVOY_CONFIG_TEXT)
LITELLM_CONFIG = yaml.safe_load(find("ConfigMap", "litellm-front-config")["data"]["config.yaml"])


def without_keepalive(route: dict[str, Any]) -> dict[str, Any]:
    """The route as it would be with plain conversion (no keep-alive, no full-duplex override)."""
    bare = copy.deepcopy(route)
    del bare["typed_per_filter_config"]
    del bare["metadata"]["filter_metadata"]["buffered_stream"]["keepalive_seconds"]
    return bare


def test_every_manifest_in_the_directory_is_a_kustomize_resource() -> None:
    MANIFESTS.assert_every_file_is_a_resource()


def test_envoy_config_passes_envoy_validation(envoy_binary: Path, tmp_path: Path) -> None:
    assert_envoy_accepts(envoy_binary, ENVOY_CONFIG_TEXT, tmp_path)


def test_ext_proc_filter_is_the_shipped_one_except_its_address() -> None:
    assert_ext_proc_is_the_shipped_one(ENVOY_CONFIG, "llm")


def test_converting_routes_are_every_completions_path_with_keepalive_and_full_duplex() -> None:
    converting = [r for r in routes(ENVOY_CONFIG, "llm") if converts(r)]
    assert {r["match"]["path"] for r in converting} == CONVERTING_PATHS
    for route in converting:
        # Both halves keep-alive needs, exactly as `enable_keepalive` writes them.
        assert enable_keepalive(without_keepalive(route), KEEPALIVE_SECONDS) == route
        settings = route_settings_from_metadata(route["metadata"]["filter_metadata"])
        assert settings == RouteSettings(enabled=True, keepalive_seconds=KEEPALIVE_SECONDS)
        assert route["route"]["cluster"] == "litellm"
        assert route["route"]["timeout"] == "0s"  # a route timeout would cut every long generation
        assert KEEPALIVE_SECONDS < COMMON_IDLE_TIMEOUT_S <= seconds(route["route"]["idle_timeout"])
        assert route["request_headers_to_remove"] == ["accept-encoding"]  # the SSE must arrive readable


def test_every_other_route_goes_to_litellm_without_the_filter() -> None:
    for route in routes(ENVOY_CONFIG, "llm"):
        assert converts(route) != ext_proc_disabled(route), route["name"]
        assert route["route"]["cluster"] == "litellm"
    for path in ("/", "/health/readiness", "/v1/models", "/key/generate", "/ui/", "/v1/messages", "/v1/embeddings"):
        assert ext_proc_disabled(route_for(ENVOY_CONFIG, "llm", path)), path
    catch_all = routes(ENVOY_CONFIG, "llm")[-1]
    assert catch_all["match"] == {"prefix": "/"}
    assert catch_all["route"]["timeout"] == "0s" and seconds(catch_all["route"]["idle_timeout"]) >= 60


def test_client_requests_reach_litellm_with_their_auth_header() -> None:
    # Envoy never touches Authorization: LiteLLM authenticates every client itself.
    assert "authorization" not in ENVOY_CONFIG_TEXT.lower()
    assert LITELLM_CONFIG["general_settings"]["master_key"] == "os.environ/LITELLM_MASTER_KEY"
    (env,) = [e for e in CONTAINERS["litellm"]["env"] if e["name"] == "LITELLM_MASTER_KEY"]
    assert "secretKeyRef" in env["valueFrom"]


def test_request_bodies_fit_and_streams_are_bounded_by_silence_only() -> None:
    assert listener(ENVOY_CONFIG, "llm")["per_connection_buffer_limit_bytes"] == 16 * 1024 * 1024
    manager = hcm(ENVOY_CONFIG, "llm")
    assert manager["request_timeout"] == "0s"
    assert seconds(manager["stream_idle_timeout"]) >= COMMON_IDLE_TIMEOUT_S
    assert manager["use_remote_address"] is True  # the edge: LiteLLM learns the client's address


def test_envoy_is_the_only_way_in() -> None:
    llm = listener(ENVOY_CONFIG, "llm")["address"]["socket_address"]
    assert llm["address"] == "0.0.0.0"
    service = find("Service", "litellm-front")
    pod_labels = find("Deployment", "litellm-front")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    # A number: Services resolve native sidecars' named ports only from Kubernetes 1.32.
    assert port["targetPort"] == llm["port_value"] == container_ports(CONTAINERS["envoy"])["http"]
    # LiteLLM listens on loopback, where the `litellm` cluster finds it, and publishes no port.
    litellm = endpoint_address(cluster(ENVOY_CONFIG, "litellm"))["socket_address"]
    assert arg_after(CONTAINERS["litellm"], "--host") == litellm["address"] == "127.0.0.1"
    assert arg_after(CONTAINERS["litellm"], "--port") == str(litellm["port_value"])
    assert "ports" not in CONTAINERS["litellm"]
    assert_admin_reachable_only_through_probe_route(ENVOY_CONFIG, "probes")


def test_litellm_models_go_straight_to_the_backends() -> None:
    assert LITELLM_CONFIG["model_list"]
    for model in LITELLM_CONFIG["model_list"]:
        api_base = urlsplit(model["litellm_params"]["api_base"])
        assert api_base.hostname.endswith(".svc.cluster.local") and api_base.path == "/v1", api_base


@pytest.mark.parametrize(("container", "probe", "path"), SIDECAR_PROBES)
def test_sidecar_probes(container: str, probe: str, path: str) -> None:
    assert POD.probe(container, probe)[0] == path
    assert CONTAINERS[container][probe]["httpGet"]["port"] in container_ports(CONTAINERS[container])


@pytest.mark.parametrize(("container", "probe", "path"), LITELLM_PROBES)
def test_litellm_probes_go_through_envoys_probe_listener(container: str, probe: str, path: str) -> None:
    probe_path, port = POD.probe(container, probe)
    assert probe_path == path
    assert port == listener(ENVOY_CONFIG, "probes")["address"]["socket_address"]["port_value"]
    route = route_for(ENVOY_CONFIG, "probes", path)
    assert route["match"] == {"path": path, "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]}
    assert route["route"]["cluster"] == "litellm"


def test_probe_ports_are_the_ones_the_processes_listen_on() -> None:
    ports = {name: container_ports(c) for name, c in CONTAINERS.items()}
    assert (
        arg_after(CONTAINERS["buffered-stream"], "--metrics-listen") == f"0.0.0.0:{ports['buffered-stream']['metrics']}"
    )
    assert listener(ENVOY_CONFIG, "probes")["address"]["socket_address"]["port_value"] == ports["envoy"]["probes"]


def test_service_arguments_are_ones_the_cli_accepts() -> None:
    args = build_parser().parse_args(CONTAINERS["buffered-stream"]["args"])
    assert (args.command, args.drain_seconds, args.log_level) == ("serve", 20, "info")


def test_envoy_reaches_the_service_over_the_shared_unix_socket() -> None:
    POD.assert_envoy_reaches_service_over_shared_socket(ENVOY_CONFIG, "llm")


def test_resources_and_hardening() -> None:
    POD.assert_hardened()


def test_images_are_pinned(envoy_binary: Path) -> None:
    POD.assert_images_pinned(envoy_binary)


def test_shutdown_finishes_litellms_requests_before_envoy_stops() -> None:
    POD.assert_sidecars_wrap(["buffered-stream", "envoy"], main="litellm")
    # LiteLLM gets SIGTERM first: its preStop is the one that waits for the endpoint removal.
    # Envoy's runs after LiteLLM exited, for the last answers to reach their clients.
    litellm_pre_stop, envoy_pre_stop = POD.pre_stop_sleep("litellm"), POD.pre_stop_sleep("envoy")
    assert litellm_pre_stop >= 5 and envoy_pre_stop > 0
    longest_request = LITELLM_CONFIG["litellm_settings"]["request_timeout"]
    drain = float(arg_after(CONTAINERS["buffered-stream"], "--drain-seconds"))
    assert POD.spec["terminationGracePeriodSeconds"] > litellm_pre_stop + longest_request + envoy_pre_stop + drain


# --- the shipped Envoy config, running ------------------------------------------------------

RUN_KEEPALIVE_SECONDS = 0.5


def runnable_config(backend: ScriptedBackend, service: Service) -> dict[str, Any]:
    """The ConfigMap's Envoy config on free loopback ports, LiteLLM's address pointing at
    ``backend`` and the socket at ``service``; keep-alive every 0.5 s instead of 5 s."""
    config = yaml.safe_load(ENVOY_CONFIG_TEXT)
    admin_port = free_port()
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    endpoint_address(cluster(config, "envoy_admin"))["socket_address"]["port_value"] = admin_port
    for name in ("llm", "probes"):
        listener(config, name)["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": 0}}
    endpoint_address(cluster(config, "litellm"))["socket_address"]["port_value"] = backend.port
    endpoint_address(cluster(config, "buffered_stream"))["pipe"]["path"] = service.target.removeprefix("unix:")
    for route in routes(config, "llm"):
        if converts(route):
            route["metadata"]["filter_metadata"]["buffered_stream"]["keepalive_seconds"] = RUN_KEEPALIVE_SECONDS
    return config


@pytest.fixture(scope="module")
def front(module_harness: Harness) -> Iterator[tuple[ScriptedBackend, Envoy]]:
    backend = module_harness.backend()
    service = module_harness.service(unix_socket=True)
    yield backend, module_harness.envoy(runnable_config(backend, service), name="front-envoy")


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


def stable(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k not in ("id", "created")}


@pytest.mark.e2e
def test_running_config_answers_a_slow_generation_with_keepalive_bytes_then_the_json(
    front: tuple[ScriptedBackend, Envoy],
) -> None:
    backend, envoy = front
    reply = Completion("one two three four five", token_delay=0.4)  # ~2.4 s: several keep-alive bytes
    backend.on(reply, model="slow")
    headers = {"authorization": "Bearer sk-client-key"}

    result = http_request(f"{envoy.url('llm')}/v1/chat/completions", "POST", chat("slow"), headers=headers)

    assert result.status == 200 and result.headers["content-type"] == "application/json"
    document = result.body.lstrip(b"\n")
    assert len(result.body) - len(document) >= 2, result.body[:20]
    native = reply.pair("/v1/chat/completions", chat("slow"))[1]
    assert stable(orjson.loads(document)) == stable(native)
    upstream = backend.requests[-1]
    assert upstream.json["stream"] is True
    assert upstream.headers["authorization"] == "Bearer sk-client-key"


@pytest.mark.e2e
@pytest.mark.parametrize("path", sorted(CONVERTING_PATHS))
def test_running_config_converts_every_completions_path(front: tuple[ScriptedBackend, Envoy], path: str) -> None:
    backend, envoy = front
    model = f"fast{path.replace('/', '-')}"
    reply = Completion("quick answer")
    backend.on(reply, model=model, path=path)
    request = chat(model) if "/chat/" in path else {"model": model, "prompt": "hi"}

    result = http_request(f"{envoy.url('llm')}{path}", "POST", request)

    assert result.status == 200
    assert stable(result.json()) == stable(reply.pair(path, request)[1])
    assert backend.requests[-1].json["stream"] is True


@pytest.mark.e2e
def test_running_config_passes_other_paths_and_answers_the_kubelet(front: tuple[ScriptedBackend, Envoy]) -> None:
    backend, envoy = front
    backend.on(Json({"status": "healthy"}), path="/health/readiness", method="GET")

    models = http_request(f"{envoy.url('llm')}/v1/models")
    assert models.status == 200 and models.json()["data"][0]["id"] == "test-model"
    assert http_request(f"{envoy.url('probes')}/ready").body == b"LIVE\n"
    assert http_request(f"{envoy.url('probes')}/health/readiness").json() == {"status": "healthy"}
    assert http_request(f"{envoy.url('probes')}/v1/models").status == 404
    assert http_request(f"{envoy.url('probes')}/health/readiness", "POST", {}).status == 404


# --- the wait for the first token ------------------------------------------------------------


def test_litellm_pings_a_silent_backend_faster_than_the_keepalive_interval() -> None:
    """LiteLLM's pings open the stream before the first token, so buffered-stream's keep-alive clock
    starts there; a ping interval below ``keepalive_seconds`` leaves no gap longer than that."""
    settings = LITELLM_CONFIG["litellm_settings"]
    for key in ("sse_keepalive_ping_interval_seconds", "anthropic_sse_ping_interval_seconds"):
        assert 1 <= settings[key] < KEEPALIVE_SECONDS, key
    for model in LITELLM_CONFIG["model_list"]:
        assert model["litellm_params"].get("keepalive_seconds") != 0, "no model turns the pings off"
    readme = (MANIFESTS.directory / "README.md").read_text()
    assert "sse_keepalive_ping_interval_seconds: 2" in readme and "cannot bridge" not in readme


def test_check_config_finds_no_error_in_the_envoy_config() -> None:
    from buffered_stream.check_config import ERROR, check

    report = check(ENVOY_CONFIG)
    assert [f for f in report.all_findings if f.level == ERROR] == [], report.text()
    converting = [r for r in report.routes if r.action.startswith("converts")]
    assert {r.match.removeprefix("path ") for r in converting} == CONVERTING_PATHS
    assert all(f"a newline after {KEEPALIVE_SECONDS} s" in r.action for r in converting)
