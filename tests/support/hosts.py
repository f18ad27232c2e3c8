"""Envoy configs shaped the way each ext_proc host configures Envoy, built from the shipped one.

Each ``HostShape`` says what its host generates: the processing modes it fixes, whether it honours
``mode_override``, where the route settings arrive (route metadata, or dynamic metadata forwarded in
``metadata_context`` under some namespace) and which attributes it sends. ``shape_config`` turns a
``build_envoy_config`` result into that shape; the settings a host would attach to the route are
written by a ``set_metadata`` filter ahead of ext_proc (what a gateway policy or an extension's
``metadata`` does), and forwarded with ``metadata_options.forwarding_namespaces``. The recipes in
``deploy/hosts/`` and ``docs/hosts.md`` cite each host's own docs for these facts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from buffered_stream.envoy_config import EXT_PROC_FILTER, METADATA_NAMESPACE, converting_routes

_SET_METADATA = "envoy.filters.http.set_metadata"
_SET_METADATA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config"
GCP_NAMESPACE = "com.google.lb_traffic_extension.buffered-stream"

_FULL_DUPLEX_BOTH = {
    "request_header_mode": "SEND",
    "request_body_mode": "FULL_DUPLEX_STREAMED",
    "request_trailer_mode": "SEND",
    "response_header_mode": "SEND",
    "response_body_mode": "FULL_DUPLEX_STREAMED",
    "response_trailer_mode": "SEND",
}


@dataclass(frozen=True)
class HostShape:
    name: str
    #: the processing mode the host fixes (None: the shipped config's, with its overrides)
    modes: dict[str, str] | None
    allow_mode_override: bool
    #: the dynamic metadata namespace the route settings arrive in (None: route metadata)
    settings_namespace: str | None
    #: what the service must be told (its settings file's ``metadata_namespaces``)
    service_namespaces: tuple[str, ...] = (METADATA_NAMESPACE,)
    #: the host can carry keep-alive bytes (a full-duplex response body)
    full_duplex: bool = False
    #: settings the host attaches besides ``enabled`` (route metadata keys, as values)
    settings: dict[str, Any] = field(default_factory=dict)
    #: the request attributes the host sends (None: the shipped config's)
    attributes: list[str] | None = None
    #: the service's own route ``defaults`` (a host that can deliver no settings per request)
    service_defaults: dict[str, Any] = field(default_factory=dict)


HOSTS = {
    # Istio: the filter and the route metadata come in through EnvoyFilter patches: the shipped
    # config as it is.
    "istio": HostShape("istio", None, True, None),
    # Google Cloud Service Extensions (traffic callouts): STREAMED or FULL_DUPLEX_STREAMED bodies,
    # no mode override, the extension's `metadata` in metadata_context under its own namespace.
    "gcp-streamed": HostShape(
        "gcp-streamed",
        {
            "request_header_mode": "SEND",
            "request_body_mode": "STREAMED",
            "request_trailer_mode": "SKIP",
            "response_header_mode": "SEND",
            "response_body_mode": "STREAMED",
            "response_trailer_mode": "SKIP",
        },
        False,
        GCP_NAMESPACE,
        service_namespaces=(METADATA_NAMESPACE, GCP_NAMESPACE),
    ),
    "gcp-full-duplex": HostShape(
        "gcp-full-duplex",
        _FULL_DUPLEX_BOTH,
        False,
        GCP_NAMESPACE,
        service_namespaces=(METADATA_NAMESPACE, GCP_NAMESPACE),
        full_duplex=True,
        # Strings, as extension-level metadata must be.
        settings={"enabled": "true", "keepalive_seconds": "0.5"},
    ),
    # kgateway TrafficPolicy extProc: the policy's processing mode, no request attributes and no
    # metadata writer that runs before ext_proc: the policy scopes the filter to the LLM route and
    # the service's own defaults enable conversion.
    "kgateway": HostShape(
        "kgateway",
        {
            "request_header_mode": "SEND",
            "request_body_mode": "BUFFERED",
            "request_trailer_mode": "SKIP",
            "response_header_mode": "SEND",
            "response_body_mode": "BUFFERED",
            "response_trailer_mode": "SKIP",
        },
        False,
        None,
        attributes=[],
        service_defaults={"enabled": True},
    ),
    # agentgateway: full-duplex bodies by default, metadata_context built from CEL, no
    # CONTINUE_AND_REPLACE (the service never sends it).
    "agentgateway": HostShape(
        "agentgateway",
        _FULL_DUPLEX_BOTH,
        False,
        METADATA_NAMESPACE,
        full_duplex=True,
        settings={"keepalive_seconds": 0.5},
    ),
}


def http_filters(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    listener = cfg["static_resources"]["listeners"][0]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]


def ext_proc_config(cfg: dict[str, Any]) -> dict[str, Any]:
    (found,) = [f["typed_config"] for f in http_filters(cfg) if f["name"] == EXT_PROC_FILTER]
    return found


def shape_config(cfg: dict[str, Any], host: HostShape) -> dict[str, Any]:
    """``cfg`` (a ``build_envoy_config`` result) reshaped the way ``host`` configures Envoy."""
    cfg = copy.deepcopy(cfg)
    if host.modes is None:
        return cfg
    ext_proc = ext_proc_config(cfg)
    ext_proc["processing_mode"] = dict(host.modes)
    ext_proc["allow_mode_override"] = host.allow_mode_override
    ext_proc.pop("allowed_override_modes", None)
    if host.attributes is not None:
        ext_proc["request_attributes"] = list(host.attributes)
    elif host.modes["request_header_mode"] == "SEND":
        # The host sends the request headers: the path comes from them, not from attributes.
        ext_proc["request_attributes"] = ["xds.route_name"]
    if host.service_defaults:
        for route in converting_routes(cfg):
            route["metadata"]["filter_metadata"].pop(METADATA_NAMESPACE)
    if host.settings_namespace is not None:
        settings: dict[str, Any] = {"enabled": True}
        for route in converting_routes(cfg):
            route_settings = route["metadata"]["filter_metadata"].pop(METADATA_NAMESPACE)
            settings.update({k: v for k, v in route_settings.items() if k != "mode"})
        settings.update(host.settings)
        filters = http_filters(cfg)
        filters.insert(
            [f["name"] for f in filters].index(EXT_PROC_FILTER),
            {
                "name": _SET_METADATA,
                "typed_config": {
                    "@type": _SET_METADATA_TYPE,
                    "metadata": [{"metadata_namespace": host.settings_namespace, "value": settings}],
                },
            },
        )
        options = ext_proc.setdefault("metadata_options", {})
        options["forwarding_namespaces"] = {"untyped": [host.settings_namespace]}
    return cfg


def add_endpoint_picker(cfg: dict[str, Any], target: str, *, first: bool) -> dict[str, Any]:
    """A second ext_proc filter (the tests' endpoint picker at ``target``) before or after ours."""
    cfg = copy.deepcopy(cfg)
    host, _, port = target.rpartition(":")
    cfg["static_resources"]["clusters"].append(
        {
            "name": "endpoint_picker",
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
            "load_assignment": {
                "cluster_name": "endpoint_picker",
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {"endpoint": {"address": {"socket_address": {"address": host, "port_value": int(port)}}}}
                        ]
                    }
                ],
            },
        }
    )
    picker = {
        "name": "envoy.filters.http.ext_proc.endpoint_picker",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": "endpoint_picker"}},
            "failure_mode_allow": False,
            "message_timeout": "5s",
            # Like the Inference Extension's picker: the request headers and the whole request body.
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "request_trailer_mode": "SKIP",
                "response_header_mode": "SKIP",
                "response_body_mode": "NONE",
                "response_trailer_mode": "SKIP",
            },
        },
    }
    filters = http_filters(cfg)
    ours = [f["name"] for f in filters].index(EXT_PROC_FILTER)
    filters.insert(ours if first else ours + 1, picker)
    # The routes that disable our filter leave the picker on, as a gateway's would.
    return cfg
