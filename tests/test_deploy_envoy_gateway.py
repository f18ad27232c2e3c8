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

from buffered_stream.apis import schema_for_path
from buffered_stream.cli import build_parser
from buffered_stream.envoy_config import LISTENER_NAME, converting_routes
from buffered_stream.settings import RouteSettings, route_settings_from_metadata
from support.backend import Completion, Json, Sse
from support.manifests import Manifests, ext_proc_filter
from support.net import http_request
from support.stack import Harness, Stack

MANIFESTS = Path(__file__).resolve().parents[1] / "deploy" / "envoy-gateway"
GATEWAY_API = "gateway.networking.k8s.io"
ENVOY_GATEWAY_API = "gateway.envoyproxy.io/v1alpha1"
CERT_MANAGER_API = "cert-manager.io/v1"
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
        # Mutual TLS to the service, and who may reach it (tests at the end of this file).
        (CERT_MANAGER_API, "Issuer", "buffered-stream-selfsigned"),
        (CERT_MANAGER_API, "Certificate", "buffered-stream-ca"),
        (CERT_MANAGER_API, "Issuer", "buffered-stream-ca"),
        (CERT_MANAGER_API, "Certificate", "buffered-stream-server"),
        (CERT_MANAGER_API, "Certificate", "buffered-stream-client"),
        (f"{GATEWAY_API}/v1", "BackendTLSPolicy", "buffered-stream"),
        (ENVOY_GATEWAY_API, "EnvoyProxy", "eg-proxy"),
        ("networking.k8s.io/v1", "NetworkPolicy", "buffered-stream"),
    }
    namespaces = {d["metadata"]["namespace"] for d in DOCS}
    assert namespaces == {"llm"}  # policies only attach to targets in their own namespace


@pytest.mark.parametrize(("policy", "route"), [(POLICY, ROUTE), (KEEPALIVE_POLICY, KEEPALIVE_ROUTE)])
def test_each_extension_policy_targets_only_its_converting_route(policy: dict[str, Any], route: dict[str, Any]) -> None:
    assert policy["metadata"]["namespace"] == route["metadata"]["namespace"]
    assert policy["spec"]["targetRefs"] == [
        {"group": GATEWAY_API, "kind": "HTTPRoute", "name": route["metadata"]["name"]}
    ]
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
        (rewrite,) = [f for f in rule["filters"] if f["type"] == "URLRewrite"]
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


BODY_MODES = {
    "Buffered": "BUFFERED",
    "BufferedPartial": "BUFFERED_PARTIAL",
    "Streamed": "STREAMED",
    "FullDuplexStreamed": "FULL_DUPLEX_STREAMED",
}


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


def removed_request_headers(route: dict[str, Any]) -> list[str]:
    """The request headers the HTTPRoute's RequestHeaderModifier filters remove (Envoy Gateway writes
    them into the xDS route's ``request_headers_to_remove``); every rule of the route alike."""
    removed = [
        [
            name
            for f in rule.get("filters", ())
            if f["type"] == "RequestHeaderModifier"
            for name in f["requestHeaderModifier"].get("remove", ())
        ]
        for rule in route["spec"]["rules"]
    ]
    assert all(r == removed[0] for r in removed), "every rule of the route removes the same headers"
    return removed[0]


def rendering(http_route: dict[str, Any], ext_proc_policy: dict[str, Any], keepalive: str | None = None):
    """A customize(config) that turns the packaged Envoy config into what Envoy Gateway v1.6 writes
    for ``http_route`` and its policy entry: the policy's ext_proc filter, the route's annotations as
    metadata (``keepalive``: another keep-alive interval, for a fast test), the headers its rules
    remove, and its request timeout; ``/keepalive/`` routes also get its paths and rewrites."""

    def customize(config: dict[str, Any]) -> None:
        ext_proc = ext_proc_filter(config, LISTENER_NAME)
        kept = {key: ext_proc[key] for key in ("@type", "grpc_service")}
        ext_proc.clear()
        ext_proc.update(kept, **gateway_ext_proc(ext_proc_policy))
        metadata = route_metadata_from_annotations(http_route)
        if keepalive is not None:
            metadata["envoy-gateway"]["resources"][0]["annotations"]["buffered-stream.keepalive_seconds"] = keepalive
        timeout = {rule["timeouts"]["request"] for rule in http_route["spec"]["rules"]}
        for route in converting_routes(config):
            route["metadata"] = {"filter_metadata": metadata}
            route["request_headers_to_remove"] = removed_request_headers(http_route)
            (route["route"]["timeout"],) = timeout
            if http_route is KEEPALIVE_ROUTE:
                upstream_path = route["match"]["path"]
                route["match"] = {"path": KEEPALIVE_PREFIX + upstream_path}
                route["route"]["regex_rewrite"] = {"pattern": {"regex": "^/.*$"}, "substitution": upstream_path}

    return customize


def as_gateway_writes_it(config: dict[str, Any]) -> None:
    """The packaged Envoy config turned into what the keep-alive policy and route become
    (keep-alive every 0.5 s instead of 5 s)."""
    rendering(KEEPALIVE_ROUTE, KEEPALIVE_EXT_PROC, keepalive="0.5")(config)


@pytest.mark.parametrize("route", CONVERTING_ROUTES, ids=lambda r: r["metadata"]["name"])
def test_converting_routes_drop_accept_encoding(route: dict[str, Any]) -> None:
    """The service must read the upstream SSE: Envoy Gateway removes the header on every rule."""
    assert [h.lower() for h in removed_request_headers(route)] == ["accept-encoding"]


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


# --- mutual TLS to the service, and who may reach it (tls.yaml, networkpolicy.yaml) -------------

import kubernetes_validate  # noqa: E402

from buffered_stream.envoy_config import SERVICE_CLUSTER, cluster  # noqa: E402
from buffered_stream.settings import load_service_settings  # noqa: E402
from support.certs import CertificateAuthority, SecretVolume, write_pair  # noqa: E402

CORE_APIS = ("v1", "apps/v1", "networking.k8s.io/v1")
# The oldest Kubernetes the manifests need (native preStop `sleep`), and the newest schemas shipped.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
NAMESPACE = "llm"
# The labels Envoy Gateway v1.6 puts on its proxy pods (internal/infrastructure/kubernetes/proxy/
# resource.go EnvoyAppLabel) and the owning-gateway ones (internal/gatewayapi/translator.go).
ENVOY_PROXY_POD_LABELS = {
    "app.kubernetes.io/name": "envoy",
    "app.kubernetes.io/component": "proxy",
    "app.kubernetes.io/managed-by": "envoy-gateway",
}
CONTROLLER_NAMESPACE = "envoy-gateway-system"
# What cert-manager writes into a Certificate's Secret (kubernetes.io/tls, plus the CA).
SECRET_FILES = {"tls.crt", "tls.key", "ca.crt"}

SERVER_CERT = find("Certificate", "buffered-stream-server")
CLIENT_CERT = find("Certificate", "buffered-stream-client")
CA_CERT = find("Certificate", "buffered-stream-ca")
BACKEND_TLS = find("BackendTLSPolicy", "buffered-stream")
ENVOY_PROXY = find("EnvoyProxy", "eg-proxy")
NETWORK_POLICY = find("NetworkPolicy", "buffered-stream")
SERVICE = find("Service", "buffered-stream")
POD = find("Deployment", "buffered-stream")["spec"]["template"]


def issuer_of(certificate: dict[str, Any]) -> dict[str, Any]:
    ref = certificate["spec"]["issuerRef"]
    assert ref.get("group", "cert-manager.io") == "cert-manager.io" and ref.get("kind", "Issuer") == "Issuer"
    issuer = find("Issuer", ref["name"])
    assert issuer["metadata"]["namespace"] == certificate["metadata"]["namespace"]  # an Issuer is namespaced
    return issuer


def secret_of_certificate(secret_name: str) -> dict[str, Any]:
    (certificate,) = [d for d in DOCS if d["kind"] == "Certificate" and d["spec"]["secretName"] == secret_name]
    return certificate


def grpc_port() -> dict[str, Any]:
    (port,) = [p for p in SERVICE["spec"]["ports"] if p["name"] == "grpc"]
    return port


def served_tls_args() -> dict[str, str]:
    """The service container's TLS options, as `serve` parses them."""
    args = build_parser().parse_args(SERVICE_CONTAINER["args"])
    return {
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_client_ca": args.tls_client_ca,
        "listen": args.listen,
    }


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_kinds_validate_against_the_kubernetes_schemas(version: str) -> None:
    core = [d for d in DOCS if d["apiVersion"] in CORE_APIS]
    assert {d["kind"] for d in core} == {"Service", "Deployment", "NetworkPolicy"}
    for doc in core:
        kubernetes_validate.validate(doc, version, strict=True)


def test_cert_manager_objects_have_what_cert_manager_requires() -> None:
    for issuer in [d for d in DOCS if d["kind"] == "Issuer"]:
        assert issuer["apiVersion"] == CERT_MANAGER_API and issuer["metadata"]["namespace"] == NAMESPACE
        (kind,) = issuer["spec"]  # exactly one issuer type
        assert kind in ("selfSigned", "ca")
        if kind == "ca":  # signs with the key of a CA Certificate of this directory
            assert secret_of_certificate(issuer["spec"]["ca"]["secretName"])["spec"]["isCA"] is True
    for certificate in [d for d in DOCS if d["kind"] == "Certificate"]:
        spec = certificate["spec"]
        assert certificate["apiVersion"] == CERT_MANAGER_API and certificate["metadata"]["namespace"] == NAMESPACE
        assert spec["secretName"] and issuer_of(certificate)
        assert spec.get("dnsNames") or spec.get("commonName")
    assert "selfSigned" in issuer_of(CA_CERT)["spec"]
    # One dedicated CA signs both ends' certificates, and nothing else in this directory.
    leaves = [d for d in DOCS if d["kind"] == "Certificate" and not d["spec"].get("isCA")]
    assert {issuer_of(c)["metadata"]["name"] for c in leaves} == {"buffered-stream-ca"}
    assert issuer_of(SERVER_CERT)["spec"]["ca"]["secretName"] == CA_CERT["spec"]["secretName"]


@pytest.mark.parametrize(("certificate", "usage"), [(SERVER_CERT, "server auth"), (CLIENT_CERT, "client auth")])
def test_leaf_certificates_are_renewed_with_new_keys_well_before_they_expire(
    certificate: dict[str, Any], usage: str
) -> None:
    spec = certificate["spec"]
    assert usage in spec["usages"]
    assert spec["privateKey"]["rotationPolicy"] == "Always"
    duration, renew_before = (gateway_duration(spec[key]) for key in ("duration", "renewBefore"))
    assert 0 < renew_before < duration and renew_before >= 24 * 3600


def test_backend_tls_policy_targets_the_grpc_port_the_extension_policies_reach() -> None:
    assert BACKEND_TLS["apiVersion"] == f"{GATEWAY_API}/v1"  # what Envoy Gateway v1.6 watches
    spec = BACKEND_TLS["spec"]
    (target,) = spec["targetRefs"]
    assert {"group", "kind", "name"} <= target.keys()  # required by the CRD
    assert (target["group"], target["kind"], target["name"]) == ("", "Service", SERVICE["metadata"]["name"])
    assert (
        BACKEND_TLS["metadata"]["namespace"] == SERVICE["metadata"]["namespace"]
    )  # a policy targets its own namespace
    assert target["sectionName"] == grpc_port()["name"]
    for policy in (POLICY, KEEPALIVE_POLICY):
        (backend,) = policy["spec"]["extProc"][0]["backendRefs"]
        assert (backend["name"], backend["port"]) == (target["name"], grpc_port()["port"])


def test_backend_tls_policy_trusts_the_ca_that_signs_the_service_for_the_name_it_carries() -> None:
    validation = BACKEND_TLS["spec"]["validation"]
    assert validation["hostname"] == f"{SERVICE['metadata']['name']}.{NAMESPACE}.svc"
    assert validation["hostname"] in SERVER_CERT["spec"]["dnsNames"]
    assert "wellKnownCACertificates" not in validation  # the CRD allows one of the two
    (ca_ref,) = validation["caCertificateRefs"]
    assert {"group", "kind", "name"} <= ca_ref.keys()
    assert (ca_ref["group"], ca_ref["kind"]) == ("", "Secret")  # Envoy Gateway reads its `ca.crt`
    assert secret_of_certificate(ca_ref["name"]) is CA_CERT
    assert issuer_of(SERVER_CERT)["spec"]["ca"]["secretName"] == ca_ref["name"]


def test_the_gateway_presents_a_client_certificate_the_service_trusts() -> None:
    ref = ENVOY_PROXY["spec"]["backendTLS"]["clientCertificateRef"]
    assert ref.get("kind", "Secret") == "Secret" and ref.get("group", "") == ""
    # Envoy Gateway reads it only from the EnvoyProxy's namespace; a Gateway-level EnvoyProxy lives
    # in the Gateway's, and the routes' Gateway `eg` is in theirs.
    assert (
        ref.get("namespace", ENVOY_PROXY["metadata"]["namespace"]) == ENVOY_PROXY["metadata"]["namespace"] == NAMESPACE
    )
    assert {p.get("namespace", NAMESPACE) for p in ROUTE["spec"]["parentRefs"]} == {NAMESPACE}
    assert secret_of_certificate(ref["name"]) is CLIENT_CERT
    # The service's --tls-client-ca is its own Secret's ca.crt: the CA that issued the client certificate.
    assert issuer_of(CLIENT_CERT) is issuer_of(SERVER_CERT)


def test_service_serves_mutual_tls_from_its_whole_mounted_secret() -> None:
    args = served_tls_args()
    (mount,) = SERVICE_CONTAINER["volumeMounts"]
    assert mount["readOnly"] is True and "subPath" not in mount  # subPath mounts never see a renewal
    (volume,) = [v for v in SERVICE_POD["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == SERVER_CERT["spec"]["secretName"]
    files = {}
    for key in ("tls_cert", "tls_key", "tls_client_ca"):
        directory, _, name = args[key].rpartition("/")
        assert directory == mount["mountPath"], args[key]
        files[key] = name
    assert files == {"tls_cert": "tls.crt", "tls_key": "tls.key", "tls_client_ca": "ca.crt"}
    # Readable by the container's group only.
    assert (
        volume["secret"]["defaultMode"] == 0o440
        and SERVICE_POD["securityContext"]["fsGroup"] == SERVICE_POD["securityContext"]["runAsGroup"]
    )
    assert load_service_settings(None, **args).tls  # a TCP address: TLS allowed


def test_network_policy_admits_only_the_gateway_to_grpc_and_only_prometheus_to_metrics() -> None:
    spec = NETWORK_POLICY["spec"]
    assert NETWORK_POLICY["metadata"]["namespace"] == NAMESPACE
    assert spec["podSelector"]["matchLabels"].items() <= POD["metadata"]["labels"].items()
    assert spec["policyTypes"] == ["Ingress", "Egress"] and spec["egress"] == []  # the service dials nothing
    container_ports = {p["name"]: p["containerPort"] for p in SERVICE_CONTAINER["ports"]}
    by_port = {}
    for rule in spec["ingress"]:
        (port,) = rule["ports"]
        assert port["protocol"] == "TCP" and port["port"] in container_ports  # a named port of the pod
        (peer,) = rule["from"]
        assert set(peer) == {"namespaceSelector", "podSelector"}  # both: pods of that namespace only
        by_port[port["port"]] = peer
    assert set(by_port) == set(container_ports)  # every port has its one admitted peer
    gateway = by_port[grpc_port()["targetPort"]]
    assert gateway["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": CONTROLLER_NAMESPACE}
    gateways = {p["name"] for route in CONVERTING_ROUTES for p in route["spec"]["parentRefs"]}
    assert (
        gateway["podSelector"]["matchLabels"]
        == {
            **ENVOY_PROXY_POD_LABELS,
            "gateway.envoyproxy.io/owning-gateway-name": gateways.pop(),
            "gateway.envoyproxy.io/owning-gateway-namespace": NAMESPACE,
        }
        and not gateways
    )
    scraper = by_port["metrics"]
    assert scraper["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    # The kubelet's probes come from the node, which a NetworkPolicy always admits.
    assert {SERVICE_CONTAINER[p]["httpGet"]["port"] for p in ("startupProbe", "readinessProbe", "livenessProbe")} == {
        "metrics"
    }


def test_security_page_is_linked_from_the_readme_and_the_manifests() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    page = REPO_ROOT / "docs" / "security.md"
    assert "](docs/security.md)" in readme and page.exists()
    text = page.read_text()
    for name in ("tls.yaml", "networkpolicy.yaml", "--tls-client-ca", "BackendTLSPolicy", "EnvoyProxy"):
        assert name in text, name
    assert "docs/security.md" in (MANIFESTS / "tls.yaml").read_text()


REPO_ROOT = MANIFESTS.parents[1]
UPSTREAM_TLS_CONTEXT = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def gateway_upstream_tls(ca_file: Path, client: tuple[Path, Path] | None) -> dict[str, Any]:
    """The transport socket Envoy Gateway v1.6 writes for the service's cluster from the
    BackendTLSPolicy and the EnvoyProxy's client certificate (internal/xds/translator/translator.go
    ``buildXdsUpstreamTLSSocketWthCert``): SNI the policy's hostname, SAN checked against it (auto SNI
    SAN validation: the policy lists no subjectAltNames), the CA refs as trusted CA, the client
    certificate (delivered by SDS; here as files), no ALPN (the policy sets none)."""
    validation = BACKEND_TLS["spec"]["validation"]
    assert "subjectAltNames" not in validation and "options" not in BACKEND_TLS["spec"]
    common: dict[str, Any] = {"validation_context": {"trusted_ca": {"filename": str(ca_file)}}}
    if client is not None:
        common["tls_certificates"] = [
            {"certificate_chain": {"filename": str(client[0])}, "private_key": {"filename": str(client[1])}}
        ]
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": UPSTREAM_TLS_CONTEXT,
            "sni": validation["hostname"],
            "auto_sni_san_validation": True,
            "common_tls_context": common,
        },
    }


@pytest.mark.e2e
def test_service_as_deployed_serves_the_gateways_mutual_tls_and_refuses_a_gateway_without_its_certificate(
    harness: Harness, tmp_path: Path
) -> None:
    # cert-manager's work, done here: the CA, the service's Secret (as the kubelet mounts it) and the client's.
    ca = CertificateAuthority(CA_CERT["spec"]["commonName"])
    server = ca.issue("buffered-stream", server_names=tuple(SERVER_CERT["spec"]["dnsNames"]))
    secret = SecretVolume(
        tmp_path / "secret", {"tls.crt": server.cert_pem, "tls.key": server.key_pem, "ca.crt": ca.cert_pem}
    )
    assert set(p.name for p in secret.directory.iterdir() if not p.name.startswith("..")) == SECRET_FILES
    client = write_pair(tmp_path / "client", "tls", ca.issue(CLIENT_CERT["spec"]["commonName"], client=True))
    ca_file = secret.path("ca.crt")
    (mount,) = SERVICE_CONTAINER["volumeMounts"]
    args = served_tls_args()
    tls_args = [
        arg.replace(mount["mountPath"], str(secret.directory))
        for flag in ("--tls-cert", "--tls-key", "--tls-client-ca")
        for arg in (flag, args[flag[2:].replace("-", "_")])
    ]

    def as_gateway(client_certificate: tuple[Path, Path] | None):
        return lambda config: cluster(config, SERVICE_CLUSTER).__setitem__(
            "transport_socket", gateway_upstream_tls(ca_file, client_certificate)
        )

    backend = harness.backend()
    backend.on(Completion("over mutual TLS", token_delay=0.01), model="llama-3")
    stack = harness.stack(backend=backend, extra_args=tuple(tls_args), customize=as_gateway(client))
    request = {"model": "llama-3", "messages": [{"role": "user", "content": "hi"}]}
    result = http_request(f"{stack.url}/v1/chat/completions", "POST", request)
    assert result.status == 200, result.body[:300]
    assert result.json()["choices"][0]["message"]["content"] == "over mutual TLS"
    assert stack.envoy.stats()[f"cluster.{SERVICE_CLUSTER}.ssl.handshake"] >= 1

    # The Gateway without the EnvoyProxy's client certificate (not attached): refused, and Envoy
    # answers with an error instead of letting the raw stream through (failOpen: false).
    config = copy.deepcopy(stack.envoy.config)
    as_gateway(None)(config)
    without = harness.envoy(config, name="envoy-without-client-certificate")
    refused = http_request(f"{without.url()}/v1/chat/completions", "POST", request)
    assert refused.status >= 500
    assert without.stats().get(f"cluster.{SERVICE_CLUSTER}.ssl.handshake", 0) == 0


def test_readme_names_vllms_keep_alive_flag_and_the_deadline() -> None:
    readme = (MANIFESTS / "README.md").read_text()
    assert "--sse-keep-alive-interval 2" in readme
    assert "hard deadline" in readme and "aborted_after_commit" in readme
