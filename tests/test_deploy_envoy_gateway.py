"""The Envoy Gateway manifests: each policy enables the filter on exactly one route with the modes
and attributes the service relies on, the routes carry valid settings in the annotation shape
the service parses, and the timeouts and buffers fit a long buffered generation. The keep-alive
route's policy is also run: real Envoy with the filter Envoy Gateway writes for it, and the service."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from support.backend import Completion, Json, Sse
from support.manifests import Manifests, ext_proc_filter
from support.net import http_request
from support.stack import Harness, Stack

from buffered_stream.cli import build_parser
from buffered_stream.envoy_config import LISTENER_NAME, converting_routes
from buffered_stream.core.registry import schema_for_path
from buffered_stream.settings import RouteSettings, route_settings_from_metadata

MANIFESTS = Path(__file__).resolve().parents[1] / "deploy" / "envoy-gateway"
GATEWAY_API = "gateway.networking.k8s.io"
ENVOY_GATEWAY_API = "gateway.envoyproxy.io/v1alpha1"
# Envoy Gateway copies annotations with this prefix into route metadata, prefix stripped.
ANNOTATION_PREFIX = "gateway.envoyproxy.io/"
# Kubernetes annotation name (after the prefix): 63 chars, alphanumeric at both ends.
ANNOTATION_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
SIXTEEN_MIB = 16 * 1024 * 1024
# Clients opt in to keep-alive with this prefix in their base URL.
KEEPALIVE_PREFIX = "/keepalive"


_MANIFESTS = Manifests(MANIFESTS)
DOCS = _MANIFESTS.docs
find = _MANIFESTS.find


ROUTE = find("HTTPRoute", "llm-completions")
POLICY = find("EnvoyExtensionPolicy", "buffered-stream")
(EXT_PROC,) = POLICY["spec"]["extProc"]
KEEPALIVE_ROUTE = find("HTTPRoute", "llm-completions-keepalive")
KEEPALIVE_POLICY = find("EnvoyExtensionPolicy", "buffered-stream-keepalive")
(KEEPALIVE_EXT_PROC,) = KEEPALIVE_POLICY["spec"]["extProc"]
CONVERTING_ROUTES = [ROUTE, KEEPALIVE_ROUTE]


def gateway_duration(value: str) -> float:
    """Seconds of a Gateway API duration (GEP-2257: e.g. 1h, 10m30s, 500ms)."""
    assert re.fullmatch(r"([0-9]{1,5}(h|m|s|ms)){1,4}", value), value
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|h|m|s)", value))


def quantity_bytes(value: str) -> int:
    number, suffix = re.fullmatch(r"([0-9]+)(Ki|Mi|Gi)?", value).groups()
    return int(number) * {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}[suffix]


def route_metadata_from_annotations(route: dict[str, Any]) -> dict[str, Any]:
    """The route metadata Envoy Gateway builds from an HTTPRoute (its `buildResourceMetadata`)."""
    annotations = {
        key.removeprefix(ANNOTATION_PREFIX): value
        for key, value in route["metadata"].get("annotations", {}).items()
        if key.startswith(ANNOTATION_PREFIX)
    }
    resource = {"kind": route["kind"], "name": route["metadata"]["name"], "namespace": route["metadata"]["namespace"]}
    if annotations:
        resource["annotations"] = annotations
    return {"envoy-gateway": {"resources": [resource]}}


def test_every_manifest_in_the_directory_is_a_kustomize_resource() -> None:
    listed = set(yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}


def test_kinds_and_api_versions() -> None:
    found = {(d["apiVersion"], d["kind"], d["metadata"]["name"]) for d in DOCS}
    assert found == {
        ("v1", "Service", "buffered-stream"),
        ("apps/v1", "Deployment", "buffered-stream"),
        (f"{GATEWAY_API}/v1", "HTTPRoute", "llm-completions"),
        (f"{GATEWAY_API}/v1", "HTTPRoute", "llm-completions-keepalive"),
        (f"{GATEWAY_API}/v1", "HTTPRoute", "llm-passthrough"),
        (ENVOY_GATEWAY_API, "EnvoyExtensionPolicy", "buffered-stream"),
        (ENVOY_GATEWAY_API, "EnvoyExtensionPolicy", "buffered-stream-keepalive"),
        (ENVOY_GATEWAY_API, "BackendTrafficPolicy", "llm-completions"),
        (ENVOY_GATEWAY_API, "ClientTrafficPolicy", "eg"),
    }
    namespaces = {d["metadata"]["namespace"] for d in DOCS}
    assert namespaces == {"llm"}  # policies only attach to targets in their own namespace


@pytest.mark.parametrize(("policy", "route"), [(POLICY, ROUTE), (KEEPALIVE_POLICY, KEEPALIVE_ROUTE)])
def test_each_extension_policy_targets_only_its_converting_route(policy: dict[str, Any], route: dict[str, Any]) -> None:
    assert policy["metadata"]["namespace"] == route["metadata"]["namespace"]
    assert policy["spec"]["targetRefs"] == [{"group": GATEWAY_API, "kind": "HTTPRoute", "name": route["metadata"]["name"]}]
    assert "targetSelectors" not in policy["spec"] and "targetRef" not in policy["spec"]


def test_processing_mode_is_what_the_service_relies_on() -> None:
    mode = EXT_PROC["processingMode"]
    assert mode["allowModeOverride"] is True
    assert mode["request"]["body"] == "Buffered"
    assert "xds.route_metadata" in mode["request"]["attributes"]
    # Response headers are sent; the body only when the service switches it on per request.
    assert "response" in mode and "body" not in mode["response"]
    assert EXT_PROC["failOpen"] is False
    assert 2 <= gateway_duration(EXT_PROC["messageTimeout"]) <= 10
    assert EXT_PROC["metadata"]["writableNamespaces"] == ["buffered_stream"]


def test_policy_reaches_the_service_grpc_port() -> None:
    (backend,) = EXT_PROC["backendRefs"]
    service = find("Service", backend["name"])
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == backend["port"]]
    pod = find("Deployment", "buffered-stream")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    container_port = {p["name"]: p["containerPort"] for p in container["ports"]}[port["targetPort"]]
    args = build_parser().parse_args(container["args"])
    assert args.command == "serve"
    assert args.listen == f"0.0.0.0:{container_port}"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()


def test_converting_route_has_a_large_finite_request_timeout() -> None:
    (rule,) = ROUTE["spec"]["rules"]
    assert {m["path"]["value"] for m in rule["matches"]} == {"/v1/chat/completions", "/v1/completions"}
    timeout = gateway_duration(rule["timeouts"]["request"])
    # 0s would also disable Envoy Gateway's route idle timeout; anything short cuts generations.
    assert 600 <= timeout < float("inf")


def test_buffer_limits_and_stream_idle_timeout() -> None:
    backend = find("BackendTrafficPolicy", "llm-completions")
    assert backend["spec"]["targetRefs"] == POLICY["spec"]["targetRefs"] + KEEPALIVE_POLICY["spec"]["targetRefs"]
    client = find("ClientTrafficPolicy", "eg")
    assert client["spec"]["targetRefs"] == [{"group": GATEWAY_API, "kind": "Gateway", "name": "eg"}]
    assert {p["name"] for p in ROUTE["spec"]["parentRefs"]} == {"eg"}
    settings = route_settings_from_metadata(route_metadata_from_annotations(ROUTE))
    for policy in (backend, client):
        limit = quantity_bytes(policy["spec"]["connection"]["bufferLimit"])
        assert limit == SIXTEEN_MIB
        assert settings.max_body_bytes <= limit
    assert 60 <= gateway_duration(client["spec"]["timeout"]["http"]["streamIdleTimeout"])


@pytest.mark.parametrize("route", CONVERTING_ROUTES, ids=lambda r: r["metadata"]["name"])
def test_annotations_are_valid_kubernetes_annotation_keys(route: dict[str, Any]) -> None:
    annotations = route["metadata"]["annotations"]
    assert annotations
    for key, value in annotations.items():
        assert key.startswith(ANNOTATION_PREFIX)
        assert ANNOTATION_NAME.fullmatch(key.removeprefix(ANNOTATION_PREFIX)), key
        assert isinstance(value, str), f"{key}: annotation values must be strings, got {value!r}"


def test_annotations_parse_into_the_route_settings() -> None:
    settings = route_settings_from_metadata(route_metadata_from_annotations(ROUTE))
    assert settings == RouteSettings(
        enabled=True, mode="buffered", models=("llama-*", "qwen-*"), max_body_bytes=SIXTEEN_MIB
    )


@pytest.mark.parametrize("route", CONVERTING_ROUTES, ids=lambda r: r["metadata"]["name"])
def test_annotations_mean_the_same_as_plain_envoy_route_metadata(route: dict[str, Any]) -> None:
    annotations = route_metadata_from_annotations(route)["envoy-gateway"]["resources"][0]["annotations"]
    plain = {key.removeprefix("buffered-stream."): yaml.safe_load(value) for key, value in annotations.items()}
    plain["models"] = plain["models"].split(",")
    assert route_settings_from_metadata({"buffered_stream": plain}) == route_settings_from_metadata(
        route_metadata_from_annotations(route)
    )


def test_passthrough_route_has_no_settings_and_no_policy() -> None:
    passthrough = find("HTTPRoute", "llm-passthrough")
    assert route_settings_from_metadata(route_metadata_from_annotations(passthrough)).enabled is False
    targeted = {ref["name"] for d in DOCS if d["kind"] == "EnvoyExtensionPolicy" for ref in d["spec"]["targetRefs"]}
    assert "llm-passthrough" not in targeted


SERVICE_POD = find("Deployment", "buffered-stream")["spec"]["template"]["spec"]
(SERVICE_CONTAINER,) = SERVICE_POD["containers"]


@pytest.mark.parametrize(
    ("probe", "path"),
    # A draining service answers 503 on /healthz (it leaves the endpoints) but must stay alive.
    [("startupProbe", "/healthz"), ("readinessProbe", "/healthz"), ("livenessProbe", "/metrics")],
)
def test_service_probes(probe: str, path: str) -> None:
    assert SERVICE_CONTAINER[probe]["httpGet"] == {"path": path, "port": "metrics"}


def test_service_is_hardened_and_drains_within_its_grace_period() -> None:
    assert SERVICE_CONTAINER["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert SERVICE_POD["securityContext"]["runAsNonRoot"] is True
    for bound in ("requests", "limits"):
        assert set(SERVICE_CONTAINER["resources"][bound]) == {"cpu", "memory"}
    assert SERVICE_CONTAINER["image"].rpartition(":")[2] not in ("", "latest")
    args = SERVICE_CONTAINER["args"]
    drain = float(args[args.index("--drain-seconds") + 1])
    pre_stop = SERVICE_CONTAINER["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert SERVICE_POD["terminationGracePeriodSeconds"] > pre_stop + drain


# --- keep-alive ------------------------------------------------------------------------------


def test_keepalive_policy_is_the_plain_one_with_a_full_duplex_response_body() -> None:
    mode = KEEPALIVE_EXT_PROC["processingMode"]
    # Envoy Gateway >= 1.5 accepts FullDuplexStreamed (and then refuses failOpen: true).
    assert mode["response"] == {"body": "FullDuplexStreamed"}
    assert KEEPALIVE_EXT_PROC["failOpen"] is False
    plain = copy.deepcopy(EXT_PROC)
    plain["processingMode"]["response"] = mode["response"]
    assert KEEPALIVE_EXT_PROC == plain


def test_keepalive_route_serves_the_converting_paths_under_its_prefix() -> None:
    (plain_rule,) = ROUTE["spec"]["rules"]
    served = {}
    for rule in KEEPALIVE_ROUTE["spec"]["rules"]:
        (match,) = rule["matches"]
        (rewrite,) = rule["filters"]
        assert match["path"]["type"] == "Exact"
        assert rewrite["urlRewrite"]["path"]["type"] == "ReplaceFullPath"
        served[match["path"]["value"]] = rewrite["urlRewrite"]["path"]["replaceFullPath"]
        assert (rule["backendRefs"], rule["timeouts"]) == (plain_rule["backendRefs"], plain_rule["timeouts"])
    assert served == {KEEPALIVE_PREFIX + m["path"]["value"]: m["path"]["value"] for m in plain_rule["matches"]}
    # The service judges the path Envoy received, before the rewrite.
    assert all(schema_for_path(path) for path in served)


def test_keepalive_route_settings() -> None:
    settings = route_settings_from_metadata(route_metadata_from_annotations(KEEPALIVE_ROUTE))
    assert settings == RouteSettings(enabled=True, models=("llama-*", "qwen-*"), keepalive_seconds=5.0)


def test_keepalive_clients_reach_the_rest_of_the_api_under_the_same_prefix() -> None:
    passthrough = find("HTTPRoute", "llm-passthrough")
    prefix_match = [{"path": {"type": "PathPrefix", "value": KEEPALIVE_PREFIX}}]
    (rule,) = [r for r in passthrough["spec"]["rules"] if r["matches"] == prefix_match]
    assert rule["filters"] == [
        {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}
    ]


BODY_MODES = {"Buffered": "BUFFERED", "BufferedPartial": "BUFFERED_PARTIAL", "Streamed": "STREAMED",
              "FullDuplexStreamed": "FULL_DUPLEX_STREAMED"}


def gateway_ext_proc(ext_proc: dict[str, Any]) -> dict[str, Any]:
    """The ext_proc filter settings Envoy Gateway v1.6 writes for one policy entry (gateway repo:
    internal/gatewayapi/envoyextensionpolicy.go, internal/xds/translator/extproc.go
    ``extProcConfig``/``buildProcessingMode``): a present side sends its headers; a full-duplex body
    also sends that side's trailers."""
    policy_mode = ext_proc["processingMode"]
    mode = {f"{side}_{part}_mode": "SKIP" for side in ("request", "response") for part in ("header", "trailer")}
    mode |= {"request_body_mode": "NONE", "response_body_mode": "NONE"}
    for side in ("request", "response"):
        if side in policy_mode:
            mode[f"{side}_header_mode"] = "SEND"
            body = policy_mode[side].get("body")
            if body:
                mode[f"{side}_body_mode"] = BODY_MODES[body]
                if body == "FullDuplexStreamed":
                    mode[f"{side}_trailer_mode"] = "SEND"
    return {
        "processing_mode": mode,
        "failure_mode_allow": ext_proc.get("failOpen", False),
        "message_timeout": ext_proc["messageTimeout"],
        "allow_mode_override": policy_mode.get("allowModeOverride", False),
        "request_attributes": policy_mode["request"]["attributes"],
        "metadata_options": {"receiving_namespaces": {"untyped": ext_proc["metadata"]["writableNamespaces"]}},
    }


def as_gateway_writes_it(config: dict[str, Any]) -> None:
    """The packaged Envoy config turned into what the keep-alive policy and route become: the
    policy's ext_proc filter, the route's annotations as metadata (keep-alive every 0.5 s instead
    of 5 s), the route's paths and rewrites."""
    ext_proc = ext_proc_filter(config, LISTENER_NAME)
    kept = {key: ext_proc[key] for key in ("@type", "grpc_service")}
    ext_proc.clear()
    ext_proc.update(kept, **gateway_ext_proc(KEEPALIVE_EXT_PROC))
    metadata = route_metadata_from_annotations(KEEPALIVE_ROUTE)
    metadata["envoy-gateway"]["resources"][0]["annotations"]["buffered-stream.keepalive_seconds"] = "0.5"
    for route in converting_routes(config):
        route["metadata"] = {"filter_metadata": metadata}
        upstream_path = route["match"]["path"]
        route["match"] = {"path": KEEPALIVE_PREFIX + upstream_path}
        route["route"]["regex_rewrite"] = {"pattern": {"regex": "^/.*$"}, "substitution": upstream_path}


@pytest.fixture(scope="module")
def gateway(module_harness: Harness) -> Stack:
    return module_harness.stack(customize=as_gateway_writes_it)


@pytest.mark.e2e
def test_keepalive_route_as_envoy_gateway_configures_it_sends_newlines_then_the_answer(gateway: Stack) -> None:
    reply = Completion("one two three four five", token_delay=0.4)  # ~2.4 s: several keep-alive bytes
    gateway.backend.on(reply, model="llama-3")
    request = {"model": "llama-3", "messages": [{"role": "user", "content": "hi"}]}

    result = http_request(f"{gateway.url}{KEEPALIVE_PREFIX}/v1/chat/completions", "POST", request)

    assert result.status == 200 and result.headers["content-type"] == "application/json"
    document = result.body.lstrip(b"\n")
    assert len(result.body) - len(document) >= 2, result.body[:20]
    native = reply.pair("/v1/chat/completions", request)[1]
    assert {k: v for k, v in orjson.loads(document).items() if k not in ("id", "created")} == {
        k: v for k, v in native.items() if k not in ("id", "created")
    }
    upstream = gateway.backend.requests[-1]
    assert (upstream.path, upstream.json["stream"]) == ("/v1/chat/completions", True)


@pytest.mark.e2e
def test_keepalive_route_as_envoy_gateway_configures_it_passes_what_it_does_not_convert(gateway: Stack) -> None:
    chunks = [{"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "hi"}}]}]
    gateway.backend.on(Sse([*chunks, "[DONE]"], delay=0.2), model="streaming")
    gateway.backend.on(Json({"error": {"message": "use POST"}}, status=405), method="GET")
    url = f"{gateway.url}{KEEPALIVE_PREFIX}/v1/chat/completions"

    streamed = http_request(url, "POST", {"model": "streaming", "messages": [], "stream": True})
    assert streamed.status == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.body == gateway.backend.requests[-1].response_body
    other_model = http_request(url, "POST", {"model": "other", "messages": []})
    assert other_model.status == 200 and "stream" not in gateway.backend.requests[-1].json  # outside `models`
    get = http_request(url)
    assert (get.status, get.json()) == (405, {"error": {"message": "use POST"}})
