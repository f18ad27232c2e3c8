"""Build a runnable Envoy config from the packaged, commented ``envoy.yaml``.

The YAML is the single source of truth (it is also what an operator reads); this module only
patches the addresses in it, so ``buffered-stream run`` and the tests run exactly the shipped
settings.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import ssl
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

LISTENER_NAME = "ingress"
BACKEND_CLUSTER = "backend"
SERVICE_CLUSTER = "buffered_stream"
METADATA_NAMESPACE = "buffered_stream"
MODES = ("buffered", "streamed")
EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
_PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
# The response body flows to the service without waiting for its replies, and the service sends
# body bytes of its own (keep-alive) at its own pace; this body mode requires trailers SEND.
FULL_DUPLEX_MODE = {
    "request_header_mode": "SKIP",
    "request_body_mode": "BUFFERED",
    "response_header_mode": "SEND",
    "response_body_mode": "FULL_DUPLEX_STREAMED",
    "request_trailer_mode": "SKIP",
    "response_trailer_mode": "SEND",
}

_TLS_SOCKET = "envoy.transport_sockets.tls"
_TLS_CONTEXT_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


@dataclass(frozen=True)
class ServiceTls:
    """How Envoy reaches the service over (mutual) TLS: the other half of ``serve --tls-cert``.

    ``trusted_ca``: PEM file of the CA(s) that signed the service's certificate;
    ``server_name``: the name Envoy sends as SNI (unless it is an IP address) and requires in the
    service certificate's subject alternative names (a DNS name, or an IP address SAN);
    ``client_cert``/``client_key``: the certificate Envoy presents, for a service started with
    ``--tls-client-ca``. Envoy reads these files when it loads the config; to rotate them without a
    restart deliver them through SDS instead (Envoy Gateway does that from its Secrets).
    """

    trusted_ca: str
    server_name: str
    client_cert: str | None = None
    client_key: str | None = None

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together")
        if not self.trusted_ca or not self.server_name:
            raise ValueError("TLS to the service needs trusted_ca and server_name")


def load_packaged_config() -> dict[str, Any]:
    """The shipped ``envoy.yaml`` as a dict (a fresh copy on every call)."""
    text = resources.files("buffered_stream").joinpath("envoy.yaml").read_text()
    return yaml.safe_load(text)


def build_envoy_config(
    *,
    backend_url: str,
    listen: tuple[str, int] = ("127.0.0.1", 10000),
    admin_port: int | None = 9901,
    ext_proc_target: str | list[str] = "127.0.0.1:50051",
    mode: str | None = None,
    keepalive_seconds: float = 0.0,
    ext_proc_tls: ServiceTls | None = None,
) -> dict[str, Any]:
    """The packaged config pointed at ``backend_url`` and the service at ``ext_proc_target``.

    ``backend_url`` is ``http://`` or ``https://`` host[:port] (TLS with SNI, verified against
    the system CA bundle, which ``SSL_CERT_FILE`` overrides);
    ``ext_proc_target`` is ``host:port`` or ``unix:/path``, or a list of them (one endpoint per
    service process, e.g. the per-worker sockets of ``serve --workers N --listen unix:PATH``); ``admin_port=None`` drops the admin
    interface; ``mode`` is written into the converting routes' metadata (None: the shipped
    routes' own); ``keepalive_seconds`` turns keep-alive on for them (see ``enable_keepalive``);
    ``ext_proc_tls`` reaches a TCP ``ext_proc_target`` over TLS (see ``enable_service_tls``).
    """
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    cfg = copy.deepcopy(load_packaged_config())
    host, port = listen
    _listener(cfg)["address"] = _socket_address(host, port)
    if admin_port is None:
        cfg.pop("admin", None)
    else:
        cfg["admin"]["address"] = _socket_address("127.0.0.1", admin_port)
    _point_backend(cfg, backend_url)
    _point_service(cfg, ext_proc_target)
    if ext_proc_tls is not None:
        enable_service_tls(cfg, ext_proc_tls)
    for route in converting_routes(cfg):
        if mode is not None:
            route["metadata"]["filter_metadata"][METADATA_NAMESPACE]["mode"] = mode
        if keepalive_seconds:
            enable_keepalive(route, keepalive_seconds)
    return cfg


def enable_keepalive(route: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Turn keep-alive on for a converting ``route`` (in place): both halves it needs.

    The route metadata tells the service how often to send a byte; the ext_proc per-route
    override switches the response body to full-duplex, the only Envoy mode in which the service
    may send body bytes on its own timer (Envoy tells the service the mode with each stream).
    """
    route["metadata"]["filter_metadata"][METADATA_NAMESPACE]["keepalive_seconds"] = seconds
    route.setdefault("typed_per_filter_config", {})[EXT_PROC_FILTER] = {
        "@type": _PER_ROUTE_TYPE,
        "overrides": {"processing_mode": dict(FULL_DUPLEX_MODE)},
    }
    return route


def defer_to_service_defaults(cfg: dict[str, Any], keepalive_seconds: float = 0.0) -> dict[str, Any]:
    """Leave every route setting of the converting routes to the service's route defaults (in place).

    Their metadata keeps only ``enabled``: a value of its own (the shipped ``mode: buffered``)
    would override the default the service applies first. What Envoy itself must know follows
    from the defaults: ``keepalive_seconds`` > 0 adds the full-duplex override (``enable_keepalive``,
    which also repeats the value in the metadata, where ``check-config`` reads it).
    """
    for route in converting_routes(cfg):
        route["metadata"]["filter_metadata"][METADATA_NAMESPACE] = {"enabled": True}
        if keepalive_seconds:
            enable_keepalive(route, keepalive_seconds)
    return cfg


def enable_service_tls(cfg: dict[str, Any], tls: ServiceTls) -> dict[str, Any]:
    """Reach the service cluster over TLS (in place): an ``UpstreamTlsContext`` that checks the
    service's certificate against ``tls.trusted_ca`` and ``tls.server_name`` and, for mutual TLS,
    presents ``tls.client_cert``. Only for TCP endpoints: the service refuses TLS on a Unix socket
    (the socket's directory permissions guard it), so a ``pipe`` endpoint is an error here."""
    c = cluster(cfg, SERVICE_CLUSTER)
    for group in c["load_assignment"]["endpoints"]:
        for lb_endpoint in group["lb_endpoints"]:
            if "pipe" in lb_endpoint["endpoint"]["address"]:
                raise ValueError("TLS to the service needs TCP endpoints: a unix: socket is served in plaintext")
    c["transport_socket"] = service_tls_transport_socket(tls)
    return cfg


def service_tls_transport_socket(tls: ServiceTls) -> dict[str, Any]:
    """The ``transport_socket`` of the service cluster for ``tls`` (see ``enable_service_tls``)."""
    is_ip = _is_ip(tls.server_name)
    common: dict[str, Any] = {
        # gRPC is HTTP/2, and says so in the handshake.
        "alpn_protocols": ["h2"],
        "validation_context": {
            "trusted_ca": {"filename": tls.trusted_ca},
            "match_typed_subject_alt_names": [
                {"san_type": "IP_ADDRESS" if is_ip else "DNS", "matcher": {"exact": tls.server_name}}
            ],
        },
    }
    if tls.client_cert is not None:
        common["tls_certificates"] = [
            {"certificate_chain": {"filename": tls.client_cert}, "private_key": {"filename": tls.client_key}}
        ]
    context: dict[str, Any] = {"@type": _TLS_CONTEXT_TYPE, "common_tls_context": common}
    if not is_ip:  # SNI carries host names only (RFC 6066)
        context["sni"] = tls.server_name
    return {"name": _TLS_SOCKET, "typed_config": context}


def write_envoy_config(cfg: dict[str, Any], path: str | Path) -> Path:
    """Write ``cfg`` as JSON (Envoy picks the format from the ``.json`` suffix)."""
    path = Path(path)
    path.write_text(json.dumps(cfg, indent=2))
    return path


def routes(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The routes of the listener's only virtual host, in match order (mutable)."""
    hcm = _listener(cfg)["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm["route_config"]["virtual_hosts"][0]["routes"]


def converting_routes(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The routes whose metadata enables conversion."""
    return [
        r
        for r in routes(cfg)
        if r.get("metadata", {}).get("filter_metadata", {}).get(METADATA_NAMESPACE, {}).get("enabled")
    ]


def cluster(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """The static cluster called ``name`` (mutable)."""
    for c in cfg["static_resources"]["clusters"]:
        if c["name"] == name:
            return c
    raise KeyError(name)


def _listener(cfg: dict[str, Any]) -> dict[str, Any]:
    for listener in cfg["static_resources"]["listeners"]:
        if listener["name"] == LISTENER_NAME:
            return listener
    raise KeyError(LISTENER_NAME)


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": int(port)}}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _set_endpoint(c: dict[str, Any], address: dict[str, Any]) -> None:
    c["load_assignment"]["endpoints"] = [{"lb_endpoints": [{"endpoint": {"address": address}}]}]


def _point_backend(cfg: dict[str, Any], backend_url: str) -> None:
    url = urlsplit(backend_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"backend URL must be http(s)://host[:port], got {backend_url!r}")
    if url.path not in ("", "/") or url.query:
        raise ValueError(f"backend URL must not have a path ({backend_url!r}): routes forward /v1/... as received")
    host = url.hostname
    port = url.port or (443 if url.scheme == "https" else 80)
    c = cluster(cfg, BACKEND_CLUSTER)
    _set_endpoint(c, _socket_address(host, port))
    if not _is_ip(host):
        # A name: resolve it, and send it as the Host header (virtual-hosted backends need that).
        c["type"] = "LOGICAL_DNS"
        c["dns_lookup_family"] = "V4_PREFERRED"
        for r in routes(cfg):
            r["route"]["auto_host_rewrite"] = True
    if url.scheme == "https":
        c["transport_socket"] = {
            "name": _TLS_SOCKET,
            "typed_config": {
                "@type": _TLS_CONTEXT_TYPE,
                "sni": host,
                "common_tls_context": {
                    "validation_context": {
                        "trusted_ca": {"filename": _system_ca_bundle()},
                        "match_typed_subject_alt_names": [
                            {"san_type": "IP_ADDRESS" if _is_ip(host) else "DNS", "matcher": {"exact": host}}
                        ],
                    }
                },
            },
        }


def _system_ca_bundle() -> str:
    # Envoy itself has no "system roots" option on Linux: hand it the file OpenSSL would use.
    cafile = ssl.get_default_verify_paths().cafile
    if cafile is None:
        raise ValueError("no system CA bundle found for the https backend; set SSL_CERT_FILE")
    return cafile


def _point_service(cfg: dict[str, Any], target: str | list[str]) -> None:
    c = cluster(cfg, SERVICE_CLUSTER)
    targets = [target] if isinstance(target, str) else list(target)
    if not targets:
        raise ValueError("ext_proc target list is empty")
    addresses = [_service_address(c, t) for t in targets]
    c["load_assignment"]["endpoints"] = [{"lb_endpoints": [{"endpoint": {"address": a}} for a in addresses]}]


def _service_address(c: dict[str, Any], target: str) -> dict[str, Any]:
    if target.startswith("unix:"):
        path = target.removeprefix("unix:")
        if not path:
            raise ValueError("ext_proc target unix: needs a socket path")
        return {"pipe": {"path": path}}
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"ext_proc target must be host:port or unix:/path, got {target!r}")
    host = host.strip("[]")
    if not _is_ip(host):
        c["type"] = "STRICT_DNS"
    return _socket_address(host, int(port))
