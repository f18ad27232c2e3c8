"""The Envoy Gateway manifests: the policy enables the filter on exactly one route with the modes
and attributes the service relies on, the route carries valid settings in the annotation shape
the service parses, and the timeouts and buffers fit a long buffered generation."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.manifests import Manifests

from buffered_stream.cli import build_parser
from buffered_stream.settings import RouteSettings, route_settings_from_metadata

MANIFESTS = Path(__file__).resolve().parents[1] / "deploy" / "envoy-gateway"
GATEWAY_API = "gateway.networking.k8s.io"
ENVOY_GATEWAY_API = "gateway.envoyproxy.io/v1alpha1"
# Envoy Gateway copies annotations with this prefix into route metadata, prefix stripped.
ANNOTATION_PREFIX = "gateway.envoyproxy.io/"
# Kubernetes annotation name (after the prefix): 63 chars, alphanumeric at both ends.
ANNOTATION_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
SIXTEEN_MIB = 16 * 1024 * 1024


_MANIFESTS = Manifests(MANIFESTS)
DOCS = _MANIFESTS.docs
find = _MANIFESTS.find


ROUTE = find("HTTPRoute", "llm-completions")
POLICY = find("EnvoyExtensionPolicy", "buffered-stream")
(EXT_PROC,) = POLICY["spec"]["extProc"]


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
        (f"{GATEWAY_API}/v1", "HTTPRoute", "llm-passthrough"),
        (ENVOY_GATEWAY_API, "EnvoyExtensionPolicy", "buffered-stream"),
        (ENVOY_GATEWAY_API, "BackendTrafficPolicy", "llm-completions"),
        (ENVOY_GATEWAY_API, "ClientTrafficPolicy", "eg"),
    }
    namespaces = {d["metadata"]["namespace"] for d in DOCS}
    assert namespaces == {"llm"}  # policies only attach to targets in their own namespace


def test_extension_policy_targets_only_the_converting_route() -> None:
    assert POLICY["metadata"]["namespace"] == ROUTE["metadata"]["namespace"]
    assert POLICY["spec"]["targetRefs"] == [{"group": GATEWAY_API, "kind": "HTTPRoute", "name": "llm-completions"}]
    assert "targetSelectors" not in POLICY["spec"] and "targetRef" not in POLICY["spec"]


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
    assert backend["spec"]["targetRefs"] == POLICY["spec"]["targetRefs"]
    client = find("ClientTrafficPolicy", "eg")
    assert client["spec"]["targetRefs"] == [{"group": GATEWAY_API, "kind": "Gateway", "name": "eg"}]
    assert {p["name"] for p in ROUTE["spec"]["parentRefs"]} == {"eg"}
    settings = route_settings_from_metadata(route_metadata_from_annotations(ROUTE))
    for policy in (backend, client):
        limit = quantity_bytes(policy["spec"]["connection"]["bufferLimit"])
        assert limit == SIXTEEN_MIB
        assert settings.max_body_bytes <= limit
    assert 60 <= gateway_duration(client["spec"]["timeout"]["http"]["streamIdleTimeout"])


def test_annotations_are_valid_kubernetes_annotation_keys() -> None:
    annotations = ROUTE["metadata"]["annotations"]
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


def test_annotations_mean_the_same_as_plain_envoy_route_metadata() -> None:
    annotations = route_metadata_from_annotations(ROUTE)["envoy-gateway"]["resources"][0]["annotations"]
    plain = {key.removeprefix("buffered-stream."): yaml.safe_load(value) for key, value in annotations.items()}
    plain["models"] = plain["models"].split(",")
    assert route_settings_from_metadata({"buffered_stream": plain}) == route_settings_from_metadata(
        route_metadata_from_annotations(ROUTE)
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
