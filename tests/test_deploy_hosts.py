"""The per-host recipes in deploy/hosts/ and docs/hosts.md.

Structure: every YAML document parses and is of a kind its host knows; names, namespaces, ports and
references agree between documents (a filter's cluster is the Service's port, a policy targets a
route that exists, an extension's namespace is one the service reads); every route setting a
recipe sends is one the service accepts; each host's processing modes are the shape
``support.hosts`` runs for real in tests/test_e2e_hosts.py. Core kinds are validated against the
Kubernetes schemas (PyPI ``kubernetes-validate``). Where a recipe writes Envoy config (Istio's
EnvoyFilter patches), Envoy itself must accept it (``envoy --mode validate``), and the Istio and
Inference Gateway filters also run once for real: real Envoy with exactly those filters and routes,
the service and the scripted backend. The control planes themselves are not run here.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from buffered_stream.envoy_config import (
    EXT_PROC_FILTER,
    FULL_DUPLEX_MODE,
    LISTENER_NAME,
    METADATA_NAMESPACE,
    load_packaged_config,
)
from buffered_stream.settings import RouteSettings, ServiceSettings, load_service_settings, route_settings_from_metadata
from support.backend import Completion
from support.endpoint_picker import DESTINATION_HEADER, EndpointPicker
from support.hosts import GCP_NAMESPACE, HOSTS, add_endpoint_picker
from support.manifests import Manifests, assert_envoy_accepts
from support.net import http_request
from support.probes import raw_post, service_samples, wait_service_idle
from support.stack import Harness

REPO_ROOT = Path(__file__).resolve().parents[1]
HOSTS_DIR = REPO_ROOT / "deploy" / "hosts"
DOCS = REPO_ROOT / "docs" / "hosts.md"
KUBERNETES_VERSION = "1.33.0"

# Every (apiVersion, kind) a recipe may use, and which host defines it.
KNOWN_KINDS = {
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("gateway.networking.k8s.io/v1", "Gateway"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("networking.istio.io/v1", "Gateway"),
    ("networking.istio.io/v1", "VirtualService"),
    ("networking.istio.io/v1alpha3", "EnvoyFilter"),
    ("gateway.kgateway.dev/v1alpha1", "GatewayExtension"),
    ("gateway.kgateway.dev/v1alpha1", "TrafficPolicy"),
    ("agentgateway.dev/v1alpha1", "AgentgatewayPolicy"),
    ("inference.networking.k8s.io/v1", "InferencePool"),
}
CORE_API_VERSIONS = {"v1", "apps/v1"}
KUBERNETES_RECIPES = ["istio", "kgateway", "agentgateway", "inference-extension"]
# Files of a recipe directory that are not Kubernetes resources.
NOT_RESOURCES = {"agentgateway": {"config.yaml"}}

ROUTER = "envoy.filters.http.router"
HCM = "envoy.filters.network.http_connection_manager"
FILTER_CONFIG_TYPE = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
SET_METADATA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config"
ISTIO_CLUSTER = re.compile(r"outbound\|(\d+)\|\|([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local")
RFC1034_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
MESSAGES = [{"role": "user", "content": "Say something."}]


def recipe(name: str) -> Manifests:
    return Manifests(HOSTS_DIR / name)


def find(manifests: Manifests, kind: str, name: str) -> dict[str, Any]:
    return manifests.find(kind, name)


def of_kind(manifests: Manifests, kind: str) -> list[dict[str, Any]]:
    return [d for d in manifests.docs if d["kind"] == kind]


def gcp_extensions() -> dict[str, dict[str, Any]]:
    return {
        p.name: yaml.safe_load(p.read_text()) for p in sorted((HOSTS_DIR / "gcp").glob("lb-traffic-extension*.yaml"))
    }


def shipped_ext_proc() -> dict[str, Any]:
    hcm = load_packaged_config()["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (found,) = [f for f in hcm["http_filters"] if f["name"] == EXT_PROC_FILTER]
    return found["typed_config"]


def without(mapping: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k not in keys}


def service_port(manifests: Manifests, name: str, namespace: str, port: int) -> dict[str, Any]:
    service = find(manifests, "Service", name)
    assert service["metadata"]["namespace"] == namespace
    (found,) = [p for p in service["spec"]["ports"] if p["port"] == port]
    return found


def settings_file(manifests: Manifests, tmp_path: Path) -> ServiceSettings:
    """The service's settings as its Deployment loads them (the defaults when it has no file)."""
    container = deployment_container(manifests)
    args = container["args"]
    if "--settings" not in args:
        return ServiceSettings()
    path = Path(args[args.index("--settings") + 1])
    (mount,) = [m for m in container["volumeMounts"] if path.is_relative_to(m["mountPath"])]
    pod = find(manifests, "Deployment", "buffered-stream")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    config_map = find(manifests, "ConfigMap", volume["configMap"]["name"])
    local = tmp_path / path.name
    local.write_text(config_map["data"][str(path.relative_to(mount["mountPath"]))])
    return load_service_settings(str(local))


def deployment_container(manifests: Manifests) -> dict[str, Any]:
    pod = find(manifests, "Deployment", "buffered-stream")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "buffered-stream"]
    return container


# --- every recipe --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", KUBERNETES_RECIPES)
def test_every_manifest_is_a_kustomize_resource_of_a_known_kind(name: str) -> None:
    manifests = recipe(name)
    on_disk = (
        {p.name for p in (HOSTS_DIR / name).glob("*.yaml")} - {"kustomization.yaml"} - NOT_RESOURCES.get(name, set())
    )
    assert set(manifests.resources) == on_disk, "a manifest left out of resources is never applied"
    assert manifests.docs
    for doc in manifests.docs:
        assert (doc["apiVersion"], doc["kind"]) in KNOWN_KINDS, (doc["apiVersion"], doc["kind"])
        assert doc["metadata"]["name"] and doc["metadata"]["namespace"], doc["metadata"]
    assert (HOSTS_DIR / name / "README.md").exists()


@pytest.mark.parametrize("name", KUBERNETES_RECIPES)
def test_core_kinds_pass_the_kubernetes_schemas(name: str) -> None:
    import kubernetes_validate  # PyPI kubernetes-validate: the schemas of every Kubernetes release

    core = [d for d in recipe(name).docs if d["apiVersion"] in CORE_API_VERSIONS]
    assert {d["kind"] for d in core} >= {"Service", "Deployment"}
    for doc in core:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", KUBERNETES_RECIPES)
def test_service_selects_the_deployment_and_its_ports(name: str, tmp_path: Path) -> None:
    manifests = recipe(name)
    service = find(manifests, "Service", "buffered-stream")
    deployment = find(manifests, "Deployment", "buffered-stream")
    assert service["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = deployment_container(manifests)
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in container_ports
    args = container["args"]
    grpc = {p["name"]: p for p in service["spec"]["ports"]}["grpc"]
    assert args[args.index("--listen") + 1] == f"0.0.0.0:{container_ports[grpc['targetPort']]}"
    assert args[args.index("--metrics-listen") + 1].endswith(f":{container_ports['metrics']}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "metrics"
    settings_file(manifests, tmp_path)  # loads (strict: unknown keys and bad values fail)


# --- Istio -----------------------------------------------------------------------------------------


ISTIO = recipe("istio")
ISTIO_FILTER = find(ISTIO, "EnvoyFilter", "buffered-stream")
ISTIO_PATCHES = ISTIO_FILTER["spec"]["configPatches"]
VIRTUAL_SERVICE = find(ISTIO, "VirtualService", "llm")


def patches(applies_to: str, filters: list[dict[str, Any]] = ISTIO_PATCHES) -> list[dict[str, Any]]:
    return [p for p in filters if p["applyTo"] == applies_to]


def route_patches() -> dict[str, dict[str, Any]]:
    return {
        p["match"]["routeConfiguration"]["vhost"]["route"]["name"]: p["patch"]["value"] for p in patches("HTTP_ROUTE")
    }


def inserted_filters(filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """HTTP filters the patches insert before the router, in chain order (each INSERT_BEFORE
    router lands right before it, so later patches come later in the chain)."""
    found = []
    for p in patches("HTTP_FILTER", filters):
        listener = p["match"]["listener"]["filterChain"]["filter"]
        assert p["match"]["context"] == "GATEWAY"
        assert (listener["name"], listener["subFilter"]["name"], p["patch"]["operation"]) == (
            HCM,
            ROUTER,
            "INSERT_BEFORE",
        )
        found.append(p["patch"]["value"])
    return found


def test_istio_filter_is_the_shipped_filter_disabled_by_default() -> None:
    (ext_proc,) = inserted_filters(ISTIO_PATCHES)
    assert ext_proc["name"] == EXT_PROC_FILTER and ext_proc["disabled"] is True
    assert without(ext_proc["typed_config"], "grpc_service") == without(shipped_ext_proc(), "grpc_service")
    gateway = find(ISTIO, "Gateway", "llm-gateway")
    assert ISTIO_FILTER["spec"]["workloadSelector"]["labels"] == gateway["spec"]["selector"]
    assert VIRTUAL_SERVICE["spec"]["gateways"] == [gateway["metadata"]["name"]]


def test_istio_cluster_is_the_grpc_port_of_the_service() -> None:
    (ext_proc,) = inserted_filters(ISTIO_PATCHES)
    cluster = ext_proc["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
    port, name, namespace = ISTIO_CLUSTER.fullmatch(cluster).groups()
    found = service_port(ISTIO, name, namespace, int(port))
    # Istio's protocol selection: gRPC (HTTP/2) from appProtocol or the port name.
    assert found["appProtocol"] == "grpc" and found["name"].startswith("grpc")


def test_istio_routes_enable_the_filter_with_valid_settings() -> None:
    by_name = {r["name"]: r for r in VIRTUAL_SERVICE["spec"]["http"]}
    patched = route_patches()
    assert set(patched) <= set(by_name), "every HTTP_ROUTE patch names a VirtualService route"
    assert "passthrough" in by_name and "passthrough" not in patched
    for name, value in patched.items():
        settings = route_settings_from_metadata(value["metadata"]["filter_metadata"])
        assert settings.enabled, name
        enable = value["typed_per_filter_config"][EXT_PROC_FILTER]
        assert enable["@type"] == FILTER_CONFIG_TYPE and enable["config"]["@type"] == PER_ROUTE_TYPE
        assert "disabled" not in enable
        assert by_name[name]["headers"]["request"]["remove"] == ["accept-encoding"]
        assert "timeout" not in by_name[name], "Istio's default (no route timeout) lets a generation run"
        overrides = enable["config"]["overrides"]
        if settings.keepalive_seconds:
            assert overrides == {"processing_mode": FULL_DUPLEX_MODE}, name
        else:
            assert overrides == {}, name
    assert any(
        route_settings_from_metadata(v["metadata"]["filter_metadata"]).keepalive_seconds for v in patched.values()
    )


def test_istio_buffer_patches_cover_the_backend_of_the_routes() -> None:
    (listener,) = patches("LISTENER")
    (cluster,) = patches("CLUSTER")
    limit = listener["patch"]["value"]["per_connection_buffer_limit_bytes"]
    assert limit == cluster["patch"]["value"]["per_connection_buffer_limit_bytes"] == 16 << 20
    destinations = {d["destination"]["host"] for r in VIRTUAL_SERVICE["spec"]["http"] for d in r["route"]}
    ports = {d["destination"]["port"]["number"] for r in VIRTUAL_SERVICE["spec"]["http"] for d in r["route"]}
    assert destinations == {cluster["match"]["cluster"]["service"]}
    assert ports == {cluster["match"]["cluster"]["portNumber"]}


def istio_routes(backend_cluster: str) -> list[dict[str, Any]]:
    """The Envoy routes Istio writes for the VirtualService, with the HTTP_ROUTE patches merged."""
    patched = route_patches()
    out = []
    for http in VIRTUAL_SERVICE["spec"]["http"]:
        match = {"prefix": "/"}
        if "match" in http:
            (m,) = http["match"]
            match = {"path": m["uri"]["exact"]}
        action: dict[str, Any] = {"cluster": backend_cluster, "timeout": http.get("timeout", "0s")}
        if "rewrite" in http:
            action["prefix_rewrite"] = http["rewrite"]["uri"]
        route: dict[str, Any] = {"name": http["name"], "match": match, "route": action}
        if "headers" in http:
            route["request_headers_to_remove"] = http["headers"]["request"]["remove"]
        value = copy.deepcopy(patched.get(http["name"], {}))
        route["route"].update(value.pop("route", {}))
        route.update(value)
        out.append(route)
    return out


def istio_filter(service_cluster: str) -> dict[str, Any]:
    (ext_proc,) = copy.deepcopy(inserted_filters(ISTIO_PATCHES))
    ext_proc["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] = service_cluster
    return ext_proc


def bootstrap(http_filters: list[dict[str, Any]], routes: list[dict[str, Any]], clusters: list[str]) -> dict[str, Any]:
    def cluster(name: str, port: int, http2: bool) -> dict[str, Any]:
        c: dict[str, Any] = {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
                        ]
                    }
                ],
            },
        }
        if http2:
            c["typed_extension_protocol_options"] = {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            }
        return c

    return {
        "static_resources": {
            "listeners": [
                {
                    "name": LISTENER_NAME,
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": HCM,
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                                        "stat_prefix": "ingress",
                                        "route_config": {
                                            "name": "llm",
                                            "virtual_hosts": [{"name": "llm", "domains": ["*"], "routes": routes}],
                                        },
                                        "http_filters": [
                                            *http_filters,
                                            {
                                                "name": ROUTER,
                                                "typed_config": {
                                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                                                },
                                            },
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [cluster(name, 50051 + i, http2=i > 0) for i, name in enumerate(clusters)],
        }
    }


def test_istio_patches_are_config_envoy_accepts(envoy_binary: Path, tmp_path: Path) -> None:
    (ext_proc,) = inserted_filters(ISTIO_PATCHES)
    grpc_cluster = ext_proc["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
    (backend,) = patches("CLUSTER")
    backend_cluster = f"outbound|{backend['match']['cluster']['portNumber']}||{backend['match']['cluster']['service']}"
    config = bootstrap([ext_proc], istio_routes(backend_cluster), [backend_cluster, grpc_cluster])
    config["static_resources"]["listeners"][0].update(patches("LISTENER")[0]["patch"]["value"])
    config["static_resources"]["clusters"][0].update(backend["patch"]["value"])
    assert_envoy_accepts(envoy_binary, json.dumps(config), tmp_path)


@pytest.mark.e2e
def test_istio_filter_and_routes_convert_through_real_envoy(harness: Harness) -> None:
    """Real Envoy with the recipe's filter and routes (the service's cluster and the backend's
    renamed to the harness's): a converting route converts, keep-alive bytes flow on the keep-alive
    route, and a route that does not enable the filter opens no gRPC stream."""

    def customize(cfg: dict[str, Any]) -> None:
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"] = [
            istio_filter("buffered_stream"),
            *[f for f in hcm["http_filters"] if f["name"] == ROUTER],
        ]
        routes = istio_routes("backend")
        for route in routes:  # the 5 s of the recipe, shortened for the test
            settings = route.get("metadata", {}).get("filter_metadata", {}).get(METADATA_NAMESPACE, {})
            if settings.get("keepalive_seconds"):
                settings["keepalive_seconds"] = 0.5
        hcm["route_config"]["virtual_hosts"][0]["routes"] = routes

    stack = harness.stack(customize=customize)
    stack.backend.on(Completion("Istio converts.", token_delay=0.01), model="istio")
    result = raw_post(f"{stack.url}/v1/chat/completions", {"model": "istio", "messages": MESSAGES})
    assert result.status == 200 and result.complete, result.body[:300]
    assert orjson.loads(result.body)["choices"][0]["message"]["content"] == "Istio converts."
    assert [r.stream for r in stack.backend.requests if r.model == "istio"] == [True]

    stack.backend.on(Completion("one two three", token_delay=0.8), model="slow")
    result = raw_post(f"{stack.url}/keepalive/v1/chat/completions", {"model": "slow", "messages": MESSAGES})
    assert result.status == 200 and result.complete
    assert re.match(rb"\n\n+\{", result.body), result.body[:40]

    wait_service_idle(stack.service)  # the keep-alive stream's last messages are counted
    before = service_samples(stack.service)
    assert http_request(f"{stack.url}/v1/models").status == 200
    after = service_samples(stack.service)
    messages = {k: after[k] - before.get(k, 0) for k in after if k.startswith("buffered_stream_grpc_messages_total")}
    assert messages and not any(messages.values()), messages


# --- kgateway --------------------------------------------------------------------------------------


KGATEWAY = recipe("kgateway")
KGATEWAY_MODES = {  # kgateway's CRD values are Envoy's enum names
    "requestHeaderMode": "request_header_mode",
    "requestBodyMode": "request_body_mode",
    "requestTrailerMode": "request_trailer_mode",
    "responseHeaderMode": "response_header_mode",
    "responseBodyMode": "response_body_mode",
    "responseTrailerMode": "response_trailer_mode",
}


def test_kgateway_policy_targets_the_route_and_the_extension() -> None:
    policy = find(KGATEWAY, "TrafficPolicy", "buffered-stream")
    (target,) = policy["spec"]["targetRefs"]
    assert (target["group"], target["kind"]) == ("gateway.networking.k8s.io", "HTTPRoute")
    route = find(KGATEWAY, "HTTPRoute", target["name"])
    assert route["metadata"]["namespace"] == policy["metadata"]["namespace"]
    extension = find(KGATEWAY, "GatewayExtension", policy["spec"]["extProc"]["extensionRef"]["name"])
    assert extension["metadata"]["namespace"] == policy["metadata"]["namespace"]
    backend = extension["spec"]["extProc"]["grpcService"]["backendRef"]
    port = service_port(KGATEWAY, backend["name"], extension["metadata"]["namespace"], backend["port"])
    assert port["appProtocol"] == "kubernetes.io/h2c"
    # kgateway fails open by default: the recipe must not.
    assert extension["spec"]["extProc"]["failOpen"] is False
    (rule,) = route["spec"]["rules"]
    paths = {m["path"]["value"] for m in rule["matches"]}
    assert paths == {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"}
    assert rule["filters"] == [
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {"remove": ["accept-encoding"]}}
    ]
    gateways = {ref["name"] for r in of_kind(KGATEWAY, "HTTPRoute") for ref in r["spec"]["parentRefs"]}
    assert gateways == {"llm-gateway"}


def test_kgateway_modes_are_the_shape_run_for_real() -> None:
    extension = find(KGATEWAY, "GatewayExtension", "buffered-stream")["spec"]["extProc"]
    policy = find(KGATEWAY, "TrafficPolicy", "buffered-stream")["spec"]["extProc"]
    expected = HOSTS["kgateway"].modes
    for mode in (extension["processingMode"], policy["processingMode"]):
        assert {KGATEWAY_MODES[k]: v for k, v in mode.items()} == expected
    assert extension["allowProcessingModeOverride"] is HOSTS["kgateway"].allow_mode_override is False


def test_kgateway_service_enables_the_route_and_reads_the_forwarded_namespace(tmp_path: Path) -> None:
    settings = settings_file(KGATEWAY, tmp_path)
    assert settings.defaults.enabled, "kgateway sends no route metadata: the defaults enable conversion"
    forwarded = find(KGATEWAY, "GatewayExtension", "buffered-stream")["spec"]["extProc"]["metadataOptions"][
        "forwarding"
    ]
    assert set(forwarded["untyped"]) <= set(settings.metadata_namespaces)
    assert HOSTS["kgateway"].service_defaults == {"enabled": True}, "the shape run for real enables by defaults too"


# --- GCP Service Extensions --------------------------------------------------------------------------


GCP_EVENTS = {
    "REQUEST_HEADERS",
    "REQUEST_BODY",
    "REQUEST_TRAILERS",
    "RESPONSE_HEADERS",
    "RESPONSE_BODY",
    "RESPONSE_TRAILERS",
}
GCP_BODY_MODES = {"BODY_SEND_MODE_STREAMED": "STREAMED", "BODY_SEND_MODE_FULL_DUPLEX_STREAMED": "FULL_DUPLEX_STREAMED"}
GCP_SHAPES = {"lb-traffic-extension.yaml": "gcp-streamed", "lb-traffic-extension-keepalive.yaml": "gcp-full-duplex"}


def gcp_modes(extension: dict[str, Any]) -> dict[str, str]:
    """The Envoy processing mode a traffic extension's events and send modes amount to."""
    events = set(extension["supportedEvents"])
    modes = {}
    for side in ("request", "response"):
        upper = side.upper()
        modes[f"{side}_header_mode"] = "SEND" if f"{upper}_HEADERS" in events else "SKIP"
        send = extension.get(f"{side}BodySendMode", "BODY_SEND_MODE_STREAMED")
        modes[f"{side}_body_mode"] = GCP_BODY_MODES[send] if f"{upper}_BODY" in events else "NONE"
        modes[f"{side}_trailer_mode"] = "SEND" if f"{upper}_TRAILERS" in events else "SKIP"
    return modes


def gcp_seconds(value: str) -> float:
    number = re.fullmatch(r"([0-9]+(\.[0-9]+)?)s", value)
    assert number, value
    return float(number.group(1))


@pytest.mark.parametrize("file", sorted(GCP_SHAPES))
def test_gcp_traffic_extension_fields(file: str) -> None:
    resource = gcp_extensions()[file]
    assert set(resource) == {"name", "forwardingRules", "loadBalancingScheme", "metadata", "extensionChains"}
    assert RFC1034_NAME.fullmatch(resource["name"])
    assert resource["loadBalancingScheme"] in {"INTERNAL_MANAGED", "EXTERNAL_MANAGED"}
    assert resource["forwardingRules"] and all("/forwardingRules/" in r for r in resource["forwardingRules"])
    assert 1 <= len(resource["extensionChains"]) <= 5
    for chain in resource["extensionChains"]:
        assert RFC1034_NAME.fullmatch(chain["name"]) and chain["matchCondition"]["celExpression"]
        assert 1 <= len(chain["extensions"]) <= 3
        for extension in chain["extensions"]:
            assert RFC1034_NAME.fullmatch(extension["name"])
            assert "/backendServices/" in extension["service"] and extension["authority"]
            events = set(extension["supportedEvents"])
            assert (
                events <= GCP_EVENTS
                and {"REQUEST_HEADERS", "REQUEST_BODY", "RESPONSE_HEADERS", "RESPONSE_BODY"} <= events
            )
            for side in ("request", "response"):
                mode = extension[f"{side}BodySendMode"]
                assert mode in GCP_BODY_MODES
                if mode == "BODY_SEND_MODE_FULL_DUPLEX_STREAMED":  # GCP requires the trailers with it
                    assert f"{side.upper()}_TRAILERS" in events
            assert 0.01 <= gcp_seconds(extension["timeout"]) <= 10
            assert extension["failOpen"] is False
            assert "forwardHeaders" not in extension, "the service needs every header (all are sent without it)"


@pytest.mark.parametrize("file", sorted(GCP_SHAPES))
def test_gcp_modes_are_the_shapes_run_for_real(file: str) -> None:
    resource = gcp_extensions()[file]
    host = HOSTS[GCP_SHAPES[file]]
    (chain,) = resource["extensionChains"]
    (extension,) = chain["extensions"]
    assert gcp_modes(extension) == host.modes
    assert not host.allow_mode_override
    settings = RouteSettings().merged(resource["metadata"], where=f"{file}: metadata")
    assert settings.enabled and bool(settings.keepalive_seconds) is host.full_duplex


def test_gcp_namespace_is_the_one_the_service_reads(tmp_path: Path) -> None:
    local = tmp_path / "service-settings.yaml"
    local.write_text((HOSTS_DIR / "gcp" / "service-settings.yaml").read_text())
    settings = load_service_settings(str(local))
    assert settings.tls, "GCP's HTTP2 callout backend service speaks TLS"
    for file, resource in gcp_extensions().items():
        namespace = f"com.google.lb_traffic_extension.{resource['name']}"
        assert namespace == GCP_NAMESPACE == HOSTS[GCP_SHAPES[file]].settings_namespace
        assert namespace in settings.metadata_namespaces
        assert settings.metadata_namespaces == HOSTS[GCP_SHAPES[file]].service_namespaces
        # GCP's limits on extension metadata (the resource-level metadata is kept within them too).
        assert len(resource["metadata"]) < 16 and len(json.dumps(resource["metadata"])) < 1024


# --- agentgateway --------------------------------------------------------------------------------


AGENTGATEWAY = recipe("agentgateway")
AGENTGATEWAY_CONFIG = yaml.safe_load((HOSTS_DIR / "agentgateway" / "config.yaml").read_text())
AGW_MODE_VALUES = {
    "Send": "SEND",
    "Skip": "SKIP",
    "Buffered": "BUFFERED",
    "FullDuplexStreamed": "FULL_DUPLEX_STREAMED",
    "None": "NONE",
}


def snake(name: str) -> str:
    return re.sub(r"([A-Z])", r"_\1", name).lower()


def cel_literal(expression: str) -> Any:
    """The value of a constant CEL expression (the recipe sends constants only)."""
    if re.fullmatch(r"'[^'\\]*'", expression):
        return expression[1:-1]
    return json.loads(expression)


def agentgateway_ext_procs() -> list[dict[str, Any]]:
    policy = find(AGENTGATEWAY, "AgentgatewayPolicy", "buffered-stream")["spec"]["traffic"]["extProc"]
    (route,) = [
        r for b in AGENTGATEWAY_CONFIG["binds"] for lis in b["listeners"] for r in lis["routes"] if "policies" in r
    ]
    return [policy, route["policies"]["extProc"]]


def test_agentgateway_policy_targets_the_route_and_the_service() -> None:
    policy = find(AGENTGATEWAY, "AgentgatewayPolicy", "buffered-stream")
    (target,) = policy["spec"]["targetRefs"]
    assert (target["group"], target["kind"]) == ("gateway.networking.k8s.io", "HTTPRoute")
    route = find(AGENTGATEWAY, "HTTPRoute", target["name"])
    assert route["metadata"]["namespace"] == policy["metadata"]["namespace"]
    ext_proc = policy["spec"]["traffic"]["extProc"]
    port = service_port(
        AGENTGATEWAY, ext_proc["backendRef"]["name"], policy["metadata"]["namespace"], ext_proc["backendRef"]["port"]
    )
    assert port["appProtocol"] == "kubernetes.io/h2c"
    assert ext_proc["failureMode"] == "FailClosed"
    standalone = agentgateway_ext_procs()[1]
    assert standalone["host"] == f"127.0.0.1:{port['port']}" and standalone["failureMode"] == "failClosed"


def test_agentgateway_modes_are_the_shape_run_for_real() -> None:
    for ext_proc in agentgateway_ext_procs():
        options = dict(ext_proc["processingOptions"])
        assert options.pop("allowModeOverride") is HOSTS["agentgateway"].allow_mode_override is False
        modes = {snake(k): AGW_MODE_VALUES[v[0].upper() + v[1:]] for k, v in options.items()}
        assert modes == HOSTS["agentgateway"].modes


def test_agentgateway_metadata_context_is_valid_route_settings(tmp_path: Path) -> None:
    service_namespaces = settings_file(AGENTGATEWAY, tmp_path).metadata_namespaces
    contexts = [e["metadataContext"] for e in agentgateway_ext_procs()]
    assert contexts[0] == contexts[1], "the Kubernetes policy and the standalone config send the same"
    for namespace, expressions in contexts[0].items():
        assert namespace in service_namespaces
        values = {key: cel_literal(expression) for key, expression in expressions.items()}
        settings = RouteSettings().merged(values, where=f"metadataContext {namespace}")
        assert settings.enabled and settings.keepalive_seconds, "full-duplex bodies carry keep-alive"


# --- Inference Extension (endpoint picker + buffered-stream on one Istio gateway) -----------------------


INFERENCE = recipe("inference-extension")
INFERENCE_PATCHES = find(INFERENCE, "EnvoyFilter", "buffered-stream")["spec"]["configPatches"]


def inference_filters() -> tuple[dict[str, Any], dict[str, Any]]:
    set_metadata, ext_proc = inserted_filters(INFERENCE_PATCHES)
    return set_metadata, ext_proc


def test_inference_resources_reference_each_other() -> None:
    envoy_filter = find(INFERENCE, "EnvoyFilter", "buffered-stream")
    (target,) = envoy_filter["spec"]["targetRefs"]
    gateway = find(INFERENCE, "Gateway", target["name"])
    assert target["kind"] == "Gateway" and gateway["spec"]["gatewayClassName"] == "istio"
    route = find(INFERENCE, "HTTPRoute", "llm-route")
    assert [p["name"] for p in route["spec"]["parentRefs"]] == [gateway["metadata"]["name"]]
    (rule,) = route["spec"]["rules"]
    (backend,) = rule["backendRefs"]
    assert (backend["group"], backend["kind"]) == ("inference.networking.k8s.io", "InferencePool")
    pool = find(INFERENCE, "InferencePool", backend["name"])
    assert pool["spec"]["endpointPickerRef"]["port"]["number"] and pool["spec"]["targetPorts"]
    for doc in (envoy_filter, gateway, route, pool):
        assert doc["metadata"]["namespace"] == "llm"
    (_, ext_proc) = inference_filters()
    cluster = ext_proc["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
    port, name, namespace = ISTIO_CLUSTER.fullmatch(cluster).groups()
    assert service_port(INFERENCE, name, namespace, int(port))["appProtocol"] == "grpc"


def test_inference_settings_travel_as_forwarded_dynamic_metadata(tmp_path: Path) -> None:
    set_metadata, ext_proc = inference_filters()
    assert set_metadata["typed_config"]["@type"] == SET_METADATA_TYPE
    (entry,) = set_metadata["typed_config"]["metadata"]
    namespace = entry["metadata_namespace"]
    settings = RouteSettings().merged(entry["value"], where=f"set_metadata {namespace}")
    assert settings.enabled
    options = ext_proc["typed_config"]["metadata_options"]
    assert options["forwarding_namespaces"]["untyped"] == [namespace]
    assert namespace in settings_file(INFERENCE, tmp_path).metadata_namespaces
    # The shipped filter but for its name (not the EPP's), the cluster and the forwarded namespace;
    # its request body stays BUFFERED (two FULL_DUPLEX_STREAMED filters still truncate bodies).
    assert ext_proc["name"] != EXT_PROC_FILTER and ext_proc["name"].startswith(EXT_PROC_FILTER)
    shipped = shipped_ext_proc()
    assert without(ext_proc["typed_config"], "grpc_service", "metadata_options") == without(
        shipped, "grpc_service", "metadata_options"
    )
    assert without(options, "forwarding_namespaces") == shipped["metadata_options"]
    assert ext_proc["typed_config"]["processing_mode"]["request_body_mode"] == "BUFFERED"


def inference_chain(picker_cluster: str, service_cluster: str) -> list[dict[str, Any]]:
    """An endpoint picker's ext_proc filter (as the tests' picker is configured), then the recipe's."""
    set_metadata, ext_proc = copy.deepcopy(inference_filters())
    ext_proc["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] = service_cluster
    with_picker = add_endpoint_picker(bootstrap([{"name": EXT_PROC_FILTER}], [], []), "127.0.0.1:9002", first=True)
    picker_filter = with_picker["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "http_filters"
    ][0]
    picker_filter["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] = picker_cluster
    return [picker_filter, set_metadata, ext_proc]


def test_inference_filters_are_config_envoy_accepts(envoy_binary: Path, tmp_path: Path) -> None:
    (_, ext_proc) = inference_filters()
    service_cluster = ext_proc["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
    routes = [
        {
            "name": "llm-route",
            "match": {"prefix": "/"},
            "route": {"cluster": "pool", "timeout": "3600s"},
            "request_headers_to_remove": ["accept-encoding"],
        }
    ]
    config = bootstrap(inference_chain("epp", service_cluster), routes, ["pool", "epp", service_cluster])
    assert_envoy_accepts(envoy_binary, json.dumps(config), tmp_path)


@pytest.mark.e2e
def test_inference_filters_convert_next_to_an_endpoint_picker(harness: Harness) -> None:
    """Real Envoy: the tests' endpoint picker first (it picks the endpoint), then the recipe's
    set_metadata and ext_proc filters; the route carries no metadata of ours, so conversion is
    enabled by the forwarded dynamic metadata alone."""
    backend = harness.backend()
    picker = EndpointPicker(destination=backend.url.removeprefix("http://")).start()
    try:

        def customize(cfg: dict[str, Any]) -> None:
            cfg.update(add_endpoint_picker(cfg, picker.target, first=True))
            hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            picker_filter, set_metadata, ext_proc = inference_chain("endpoint_picker", "buffered_stream")
            keep = [f for f in hcm["http_filters"] if f["name"] in (picker_filter["name"], ROUTER)]
            hcm["http_filters"] = [keep[0], set_metadata, ext_proc, keep[1]]
            hcm["route_config"]["virtual_hosts"][0]["routes"] = [
                {
                    "name": "llm-route",
                    "match": {"prefix": "/"},
                    "route": {"cluster": "backend", "timeout": "3600s"},
                    "request_headers_to_remove": ["accept-encoding"],
                }
            ]

        stack = harness.stack(backend=backend, customize=customize)
        backend.on(Completion("Picked, then converted.", token_delay=0.01), model="pool-model")
        result = raw_post(f"{stack.url}/v1/chat/completions", {"model": "pool-model", "messages": MESSAGES})
        assert result.status == 200 and result.complete, result.body[:300]
        assert orjson.loads(result.body)["choices"][0]["message"]["content"] == "Picked, then converted."
        (sent,) = [r for r in backend.requests if r.model == "pool-model"]
        assert sent.stream is True and sent.headers.get(DESTINATION_HEADER) == picker.destination
    finally:
        picker.stop()


# --- docs/hosts.md ---------------------------------------------------------------------------------


def test_every_relative_link_in_the_hosts_doc_exists() -> None:
    text = DOCS.read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [link.split("#")[0] for link in links if not re.match(r"[a-z]+:", link) and not link.startswith("#")]
    assert len(relative) >= 10
    for link in relative:
        assert (DOCS.parent / link).resolve().exists(), link
    for name in (*KUBERNETES_RECIPES, "gcp"):
        assert f"../deploy/hosts/{name}/" in text, name
