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
_TLS_CONTEXT_TYPE = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
)


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
    mode: str = "buffered",
    keepalive_seconds: float = 0.0,
) -> dict[str, Any]:
    """The packaged config pointed at ``backend_url`` and the service at ``ext_proc_target``.

    ``backend_url`` is ``http://`` or ``https://`` host[:port] (TLS with SNI, verified against
    the system CA bundle, which ``SSL_CERT_FILE`` overrides);
    ``ext_proc_target`` is ``host:port`` or ``unix:/path``, or a list of them (one endpoint per
    service process, e.g. the per-worker sockets of ``serve --workers N --listen unix:PATH``); ``admin_port=None`` drops the admin
    interface; ``mode`` is the conversion mode of the converting routes; ``keepalive_seconds``
    turns keep-alive on for them (see ``enable_keepalive``).
    """
    if mode not in MODES:
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
    for route in converting_routes(cfg):
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
        raise ValueError(
            f"backend URL must not have a path ({backend_url!r}): routes forward /v1/... as received"
        )
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
