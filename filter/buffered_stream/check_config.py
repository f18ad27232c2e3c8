"""``buffered-stream check-config``: what buffered-stream will do on each route of an Envoy config,
and every setting there that defeats it.

Reads an Envoy bootstrap (YAML or JSON; a Kubernetes ConfigMap holding one is read too) and, for
every route of every HTTP connection manager with an inline route config, says whether the route
converts (in which mode, with keep-alive or not), passes through, or is broken, then lists the
findings that make a conversion fail or degrade, each with where it is and the fix:

- errors (exit status 1): keep-alive asked for without the full-duplex override, the attributes the
  service reads (``xds.route_metadata``, ``request.path``/``request.method`` when request headers
  are skipped) not sent, ``accept-encoding`` kept on a converting route, Envoy's default 15 s route
  ``timeout``, ``failure_mode_allow``, a mode override the service sends that Envoy refuses, a body
  or header mode the service cannot convert in, invalid route settings, an ext_proc cluster
  without HTTP/2;
- warnings: a finite route ``timeout`` without keep-alive, an ``idle_timeout`` (or the HTTP
  connection manager's ``stream_idle_timeout``) under a minute, the 200 ms default ``message_timeout``,
  no ``xds.route_name``;
- notes: a keep-alive route's ``timeout`` (its hard deadline) or the lack of one, routes that run
  the filter without converting, usage metadata Envoy will not accept.

The checks read the config as written: routes from RDS, or an ext_proc filter configured through
ECDS, are reported as not checked. ``buffered-stream run`` runs the same checks on the config it
generates and logs the findings.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .settings import NAMESPACE, RouteSettings, SettingsError, route_settings_from_metadata

EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
_EXT_PROC_TYPE = "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
_HCM_TYPE = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ERROR, WARNING, INFO = "error", "warning", "info"
LEVELS = (ERROR, WARNING, INFO)
DEFAULT_ROUTE_TIMEOUT_S = 15.0  # Envoy's RouteAction.timeout default
DEFAULT_STREAM_IDLE_TIMEOUT_S = 300.0  # Envoy's HttpConnectionManager.stream_idle_timeout default
DEFAULT_MESSAGE_TIMEOUT_S = 0.2  # Envoy's ExternalProcessor.message_timeout default
SHORT_IDLE_S = 60.0  # the common idle limits (AWS ALB, nginx): a time to first token can exceed it
MODE_FIELDS = (
    "request_header_mode",
    "request_body_mode",
    "response_header_mode",
    "response_body_mode",
    "request_trailer_mode",
    "response_trailer_mode",
)
# The two mode overrides the service sends (adapter/service.py ``SKIP_REST`` in reply to request
# headers, ``CONVERTING_RESPONSE_HEADERS`` in reply to response headers), as the fields they set.
SKIP_REST_OVERRIDE = {"request_body_mode": "NONE", "response_header_mode": "SKIP", "response_body_mode": "NONE"}
CONVERTING_OVERRIDE = {
    mode: {"request_body_mode": "BUFFERED", "response_header_mode": "SEND", "response_body_mode": mode.upper()}
    for mode in ("buffered", "streamed")
}
KEEPALIVE_OVERRIDE_FIX = """typed_per_filter_config:
  envoy.filters.http.ext_proc:
    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
    overrides:
      processing_mode: {request_header_mode: SKIP, request_body_mode: BUFFERED, response_header_mode: SEND,
                        response_body_mode: FULL_DUPLEX_STREAMED, request_trailer_mode: SKIP, response_trailer_mode: SEND}
(buffered_stream.envoy_config.enable_keepalive writes it; Envoy Gateway: processingMode.response.body: FullDuplexStreamed)"""


@dataclass(frozen=True)
class Finding:
    level: str  # error, warning or info
    where: str  # the route or filter, as named in the config
    message: str
    fix: str = ""

    def text(self) -> str:
        line = f"{self.level}: {self.where}: {self.message}"
        return line + (f"\n    fix: {self.fix}" if self.fix else "")


@dataclass
class RouteReport:
    """One route: what buffered-stream does there, and what defeats it."""

    listener: str
    name: str
    match: str
    action: str
    settings: RouteSettings | None = None
    findings: list[Finding] = field(default_factory=list)


@dataclass
class Report:
    routes: list[RouteReport] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)  # not tied to one route (filters, listeners)

    @property
    def all_findings(self) -> list[Finding]:
        return [*self.findings, *(f for route in self.routes for f in route.findings)]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.all_findings if f.level == ERROR]

    def text(self) -> str:
        lines = []
        for finding in self.findings:
            lines.append(finding.text())
        for route in self.routes:
            lines.append(f"route {route.name} ({route.listener}, {route.match}): {route.action}")
            for finding in route.findings:
                lines.append(f"  {finding.level}: {finding.message}")
                if finding.fix:
                    lines.append("    fix: " + finding.fix.replace("\n", "\n         "))
        counts = {level: sum(f.level == level for f in self.all_findings) for level in LEVELS}
        lines.append(
            f"{len(self.routes)} routes: {counts[ERROR]} errors, {counts[WARNING]} warnings, {counts[INFO]} notes"
        )
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "findings": [dataclasses.asdict(f) for f in self.findings],
            "routes": [
                {
                    "listener": r.listener,
                    "name": r.name,
                    "match": r.match,
                    "action": r.action,
                    "findings": [dataclasses.asdict(f) for f in r.findings],
                }
                for r in self.routes
            ],
            "errors": len(self.errors),
        }


class ConfigError(ValueError):
    """The file is not an Envoy bootstrap this command can read."""


def load_bootstrap(path: str) -> dict[str, Any]:
    """An Envoy bootstrap from a YAML/JSON file, or from the ConfigMap that holds one."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            documents = [d for d in yaml.safe_load_all(f) if d is not None]
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} does not parse: {exc}") from None
    for document in documents:
        if isinstance(document, dict) and "static_resources" in document:
            return document
        if isinstance(document, dict) and document.get("kind") == "ConfigMap":
            for value in (document.get("data") or {}).values():
                inner = yaml.safe_load(value) if isinstance(value, str) else None
                if isinstance(inner, dict) and "static_resources" in inner:
                    return inner
    raise ConfigError(f"{path} holds no Envoy bootstrap (no static_resources)")


def check(bootstrap: Mapping[str, Any], defaults: RouteSettings = RouteSettings()) -> Report:
    """The report for one Envoy bootstrap; ``defaults`` are the service's route defaults (its
    settings file's ``defaults``), applied before each route's metadata as the service does."""
    report = Report()
    static = bootstrap.get("static_resources") or {}
    clusters = {c.get("name"): c for c in static.get("clusters") or () if isinstance(c, Mapping)}
    for listener in static.get("listeners") or ():
        for hcm in _http_connection_managers(listener):
            _check_hcm(report, listener.get("name", "?"), hcm, clusters, defaults)
    if not report.routes and not report.findings:
        report.findings.append(Finding(INFO, "config", "no HTTP route found: nothing for buffered-stream to do"))
    return report


# --------------------------------------------------------------------------- walking the config


def _type_name(typed: Mapping[str, Any]) -> str:
    return str(typed.get("@type", "")).rpartition("/")[2]


def _http_connection_managers(listener: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    chains = list(listener.get("filter_chains") or ())
    if listener.get("default_filter_chain"):
        chains.append(listener["default_filter_chain"])
    for chain in chains:
        for network_filter in chain.get("filters") or ():
            typed = network_filter.get("typed_config") or {}
            if (
                network_filter.get("name") == "envoy.filters.network.http_connection_manager"
                or _type_name(typed) == _HCM_TYPE
            ):
                yield typed


def _ext_proc_filters(hcm: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    found = []
    for http_filter in hcm.get("http_filters") or ():
        typed = http_filter.get("typed_config") or {}
        if http_filter.get("name") == EXT_PROC_FILTER or _type_name(typed) == _EXT_PROC_TYPE:
            found.append((http_filter.get("name", EXT_PROC_FILTER), typed))
    return found


def _ours(filters: list[tuple[str, Mapping[str, Any]]]) -> tuple[str, Mapping[str, Any]] | None:
    """buffered-stream's ext_proc filter: the one sent the route metadata, else the only one."""
    for entry in filters:
        if "xds.route_metadata" in (entry[1].get("request_attributes") or ()):
            return entry
    return filters[0] if filters else None


def _seconds(value: Any) -> float | None:
    """Seconds of a protobuf JSON duration ("1.5s"), None when absent or unreadable."""
    if isinstance(value, Mapping):  # {"seconds": N, "nanos": M}
        return float(value.get("seconds", 0)) + float(value.get("nanos", 0)) / 1e9
    if isinstance(value, str):
        number = re.fullmatch(r"\s*(-?[0-9]+(?:\.[0-9]+)?)s\s*", value)
        if number:
            return float(number.group(1))
    return None


def _describe_match(match: Mapping[str, Any]) -> str:
    for key in ("path", "prefix", "path_separated_prefix"):
        if key in match:
            return f"{key} {match[key]}"
    if "safe_regex" in match:
        return f"regex {match['safe_regex'].get('regex', '?')}"
    return "match " + json.dumps(match, sort_keys=True)


def _normalised(mode: Mapping[str, Any]) -> dict[str, str]:
    """All six fields, Envoy's defaults filled in (headers: SEND, bodies: NONE, trailers: SKIP)."""
    out = {}
    for name in MODE_FIELDS:
        value = str(mode.get(name, "DEFAULT")).upper()
        if value == "DEFAULT":
            value = "SEND" if "header" in name else ("NONE" if "body" in name else "SKIP")
        out[name] = value
    return out


def _mode_text(mode: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{k}: {mode[k]}" for k in MODE_FIELDS) + "}"


# --------------------------------------------------------------------------- the checks


def _check_hcm(
    report: Report, listener: str, hcm: Mapping[str, Any], clusters: Mapping[str, Any], defaults: RouteSettings
) -> None:
    route_config = hcm.get("route_config")
    if route_config is None:
        if "rds" in hcm:
            report.findings.append(Finding(INFO, f"listener {listener}", "routes come from RDS: not checked"))
        return
    filters = _ext_proc_filters(hcm)
    ours = _ours(filters)
    filter_where = f"listener {listener}, filter {ours[0]}" if ours else f"listener {listener}"
    config = ours[1] if ours else {}
    if ours is not None:
        _check_filter(report, filter_where, config, clusters)
    idle_default = _seconds(hcm.get("stream_idle_timeout"))
    idle_default = DEFAULT_STREAM_IDLE_TIMEOUT_S if idle_default is None else idle_default
    # Findings whose cause is the filter's own settings are reported once, at the filter, naming
    # the converting routes they defeat.
    at_filter: dict[Finding, list[str]] = {}
    for vhost in route_config.get("virtual_hosts") or ():
        for index, route in enumerate(vhost.get("routes") or ()):
            name = route.get("name") or f"{vhost.get('name', '?')}[{index}]"
            entry = RouteReport(listener, name, _describe_match(route.get("match") or {}), "")
            report.routes.append(entry)
            _check_route(
                entry, f"route {name}", filter_where, route, vhost, route_config, ours, config, idle_default, defaults
            )
            if entry.settings is not None and entry.settings.enabled and ours is not None:
                entry.findings += _attribute_findings(
                    filter_where, config, _effective_mode(config, route, vhost, ours[0])
                )
            for finding in [f for f in entry.findings if f.where == filter_where]:
                entry.findings.remove(finding)
                at_filter.setdefault(finding, []).append(name)
    for finding, names in at_filter.items():
        report.findings.append(dataclasses.replace(finding, message=f"{finding.message} (routes {', '.join(names)})"))


def _check_filter(report: Report, where: str, config: Mapping[str, Any], clusters: Mapping[str, Any]) -> None:
    timeout = _seconds(config.get("message_timeout"))
    if timeout is None or timeout < 1.0:
        shown = "unset (Envoy's default 200 ms)" if timeout is None else f"{timeout:g} s"
        report.findings.append(
            Finding(
                WARNING,
                where,
                f"message_timeout is {shown}: a Python service under load misses it, and Envoy answers 504",
                "message_timeout: 5s (2-5 s; full-duplex routes have no message timeout)",
            )
        )
    if config.get("failure_mode_allow") is True:
        report.findings.append(
            Finding(
                ERROR,
                where,
                "failure_mode_allow: true: when the service fails, the upstream's raw SSE reaches a client that asked for JSON",
                "failure_mode_allow: false, with status_on_error: {code: 502}",
            )
        )
    namespaces = ((config.get("metadata_options") or {}).get("receiving_namespaces") or {}).get("untyped") or ()
    if NAMESPACE not in namespaces:
        report.findings.append(
            Finding(
                INFO,
                where,
                "the usage and outcome the service reports are not accepted into Envoy's dynamic metadata",
                f"metadata_options: {{receiving_namespaces: {{untyped: [{NAMESPACE}]}}}}",
            )
        )
    grpc = config.get("grpc_service") or {}
    cluster_name = (grpc.get("envoy_grpc") or {}).get("cluster_name")
    cluster = clusters.get(cluster_name) if cluster_name else None
    if cluster is not None and "http2_protocol_options" not in json.dumps(cluster):
        report.findings.append(
            Finding(
                ERROR,
                f"cluster {cluster_name}",
                "the ext_proc cluster does not speak HTTP/2: gRPC cannot reach the service",
                "typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: "
                "{explicit_http_config: {http2_protocol_options: {}}}}",
            )
        )


def _attribute_findings(where: str, config: Mapping[str, Any], mode: Mapping[str, str]) -> list[Finding]:
    attributes = set(config.get("request_attributes") or ())
    wanted = "request_attributes: [xds.route_metadata, xds.route_name, request.path, request.method]"
    findings = []
    if "xds.route_metadata" not in attributes:
        findings.append(
            Finding(
                ERROR,
                where,
                "request_attributes lacks xds.route_metadata: the service never sees the route settings, so nothing converts",
                wanted,
            )
        )
    if "xds.route_name" not in attributes:
        findings.append(
            Finding(
                WARNING, where, "request_attributes lacks xds.route_name: logs and errors cannot name the route", wanted
            )
        )
    if mode["request_header_mode"] == "SKIP" and not {"request.path", "request.method"} <= attributes:
        findings.append(
            Finding(
                ERROR,
                where,
                "request headers are skipped and request_attributes lacks request.path or request.method: "
                "the service cannot tell an API request from any other, so nothing converts",
                wanted,
            )
        )
    return findings


def _per_route(route: Mapping[str, Any], vhost: Mapping[str, Any], filter_name: str) -> Mapping[str, Any]:
    for holder in (route, vhost):
        per_route = (holder.get("typed_per_filter_config") or {}).get(filter_name)
        if per_route is not None:
            return per_route
    return {}


def _effective_mode(
    config: Mapping[str, Any], route: Mapping[str, Any], vhost: Mapping[str, Any], filter_name: str
) -> dict[str, str]:
    override = (_per_route(route, vhost, filter_name).get("overrides") or {}).get("processing_mode")
    return _normalised(override if override is not None else (config.get("processing_mode") or {}))


def _check_route(
    entry: RouteReport,
    where: str,
    filter_where: str,
    route: Mapping[str, Any],
    vhost: Mapping[str, Any],
    route_config: Mapping[str, Any],
    ours: tuple[str, Mapping[str, Any]] | None,
    config: Mapping[str, Any],
    idle_default: float,
    defaults: RouteSettings,
) -> None:
    add = entry.findings.append
    metadata = (route.get("metadata") or {}).get("filter_metadata") or {}
    try:
        settings = route_settings_from_metadata(metadata, defaults)
    except SettingsError as exc:
        entry.action = "broken: the service answers every request with a 500"
        add(Finding(ERROR, where, f"invalid route settings: {exc}", "fix the key named above (README: Per route)"))
        return
    entry.settings = settings
    action = route.get("route")
    if action is None:
        entry.action = "not proxied (" + ", ".join(k for k in route if k in ("direct_response", "redirect")) + ")"
        return
    if ours is None:
        entry.action = "passes through: no ext_proc filter on this listener"
        if settings.enabled:
            add(
                Finding(
                    ERROR,
                    where,
                    "the route enables buffered-stream but its listener has no ext_proc filter",
                    "add the ext_proc filter of the shipped envoy.yaml before the router",
                )
            )
        return
    filter_name = ours[0]
    per_route = _per_route(route, vhost, filter_name)
    if per_route.get("disabled") is True:
        entry.action = "passes through untouched (filter disabled: no gRPC stream)"
        if settings.enabled:
            add(
                Finding(
                    ERROR,
                    where,
                    "the route metadata enables conversion, but the ext_proc filter is disabled here",
                    "drop `disabled: true` from the route's ExtProcPerRoute",
                )
            )
        return
    if not settings.enabled:
        entry.action = "passes through (filter runs, conversion off: one gRPC round trip per request)"
        add(
            Finding(
                INFO,
                where,
                "the filter runs here without converting",
                "ExtProcPerRoute {disabled: true} on routes that never convert saves the round trip",
            )
        )
        return
    mode = _effective_mode(config, route, vhost, filter_name)
    # Where the mode comes from: the route's own override, else the filter.
    mode_where = where if (per_route.get("overrides") or {}).get("processing_mode") is not None else filter_where
    full_duplex = mode["response_body_mode"] == "FULL_DUPLEX_STREAMED"
    keepalive = settings.keepalive_seconds if full_duplex else 0.0
    if full_duplex:
        entry.action = (
            f"converts stream:false requests with keep-alive (a newline after {keepalive:g} s of silence)"
            if keepalive
            else "converts stream:false requests chunk by chunk (full duplex, no keep-alive)"
        )
    else:
        entry.action = f"converts stream:false requests ({settings.mode} mode)"
    extras = [f"profile {settings.profile}"] if settings.profile != "auto" else []
    if settings.models:
        extras.append("models " + ", ".join(settings.models))
    if extras:
        entry.action += "; " + "; ".join(extras)

    if (per_route.get("overrides") or {}).get("failure_mode_allow") is True:
        add(
            Finding(
                ERROR,
                where,
                "failure_mode_allow: true on this route: a failing service lets raw SSE reach the client",
                "remove the per-route failure_mode_allow override",
            )
        )

    # Keep-alive needs the full-duplex body mode.
    if settings.keepalive_seconds and not full_duplex:
        add(
            Finding(
                ERROR,
                where,
                f"keepalive_seconds: {settings.keepalive_seconds:g}, but the response body mode is "
                f"{mode['response_body_mode']}, not FULL_DUPLEX_STREAMED: the route converts without keep-alive",
                KEEPALIVE_OVERRIDE_FIX,
            )
        )
    if full_duplex and mode["response_trailer_mode"] != "SEND":
        add(
            Finding(
                ERROR,
                where,
                "FULL_DUPLEX_STREAMED needs response_trailer_mode: SEND (Envoy rejects the mode otherwise)",
                "response_trailer_mode: SEND in the same processing_mode",
            )
        )
    if full_duplex and not settings.keepalive_seconds:
        add(
            Finding(
                INFO,
                where,
                "full duplex without keepalive_seconds: the 200 goes out early, but no keep-alive byte follows",
                "keepalive_seconds: 5 in the route metadata (or the service's defaults)",
            )
        )

    # The modes the service converts in.
    if mode["request_body_mode"] != "BUFFERED":
        add(
            Finding(
                ERROR,
                mode_where,
                f"request_body_mode is {mode['request_body_mode']}: the service cannot rewrite the request to "
                "stream: true, so nothing converts",
                "request_body_mode: BUFFERED",
            )
        )
    if mode["response_header_mode"] != "SEND":
        add(
            Finding(
                ERROR,
                mode_where,
                "response_header_mode is SKIP: the service never sees the upstream's answer, so nothing converts",
                "response_header_mode: SEND",
            )
        )
    if not full_duplex:
        if mode["response_body_mode"] not in ("NONE",):
            add(
                Finding(
                    WARNING,
                    mode_where,
                    f"response_body_mode is {mode['response_body_mode']}: every answer's body goes through "
                    "the service, converted or not",
                    "response_body_mode: NONE (the service turns it on per request)",
                )
            )
        _check_overrides(entry, filter_where, config, mode, settings)

    # The upstream stream must arrive readable.
    removed = {
        h.lower() for holder in (route, vhost, route_config) for h in holder.get("request_headers_to_remove") or ()
    }
    if "accept-encoding" not in removed:
        add(
            Finding(
                ERROR,
                where,
                "accept-encoding reaches the upstream: an upstream that compresses its stream cannot be "
                "converted (502 malformed)",
                "request_headers_to_remove: [accept-encoding] on the route "
                "(Envoy Gateway: a RequestHeaderModifier filter that removes it)",
            )
        )

    # Timeouts.
    timeout = _seconds(action.get("timeout"))
    if "timeout" not in action:
        add(
            Finding(
                ERROR,
                where,
                f"no route timeout: Envoy's default {DEFAULT_ROUTE_TIMEOUT_S:g} s runs until the upstream "
                "response ends and cuts every longer generation",
                "timeout: 0s (no deadline) or longer than any generation",
            )
        )
    elif timeout is not None and timeout > 0:
        if keepalive:
            add(
                Finding(
                    INFO,
                    where,
                    f"timeout {timeout:g} s is the hard deadline: a generation still running then is reset "
                    "after its 200 (the client sees a cut-off body; the service counts aborted_after_commit)",
                )
            )
        else:
            add(
                Finding(
                    WARNING,
                    where,
                    f"timeout {timeout:g} s runs until the upstream response ends: it cuts every "
                    "generation longer than that",
                    "timeout: 0s, or longer than any generation",
                )
            )
    elif keepalive:
        add(
            Finding(
                INFO,
                where,
                "no total deadline: keep-alive bytes reset every idle timer on the way, so only the "
                "client's own deadline ends a stuck generation",
                "timeout: <the longest generation you accept> (after it the client sees a reset)",
            )
        )
    idle = _seconds(action.get("idle_timeout"))
    idle_source = "idle_timeout" if idle is not None else "stream_idle_timeout (HTTP connection manager)"
    idle = idle_default if idle is None else idle
    if 0 < idle < SHORT_IDLE_S:
        add(
            Finding(
                WARNING,
                where,
                f"{idle_source} {idle:g} s: an upstream silent that long (queueing and prefill before the "
                "first token included) is cut with a 504, unless it pings (README: What keeps the wait for the "
                "first token busy)",
                "idle_timeout: 600s, at least the worst time to first token",
            )
        )


def _check_overrides(
    entry: RouteReport, where: str, config: Mapping[str, Any], mode: Mapping[str, str], settings: RouteSettings
) -> None:
    add = entry.findings.append
    if config.get("allow_mode_override") is not True:
        add(
            Finding(
                ERROR,
                where,
                "allow_mode_override is not true: Envoy ignores the response body mode the service asks "
                "for, so a converted request's raw SSE reaches the client",
                "allow_mode_override: true",
            )
        )
        return
    allowed = [_normalised(m) for m in config.get("allowed_override_modes") or ()]
    if not allowed:
        return  # any override is accepted
    needed = [("converting", CONVERTING_OVERRIDE[settings.mode])]
    if mode["request_header_mode"] == "SEND":
        needed.append(("skipping a request that is not ours", SKIP_REST_OVERRIDE))
    compared = MODE_FIELDS[1:]  # Envoy ignores request_header_mode here
    for purpose, override in needed:
        effective = {**mode, **override}
        if not any(all(m[f] == effective[f] for f in compared) for m in allowed):
            add(
                Finding(
                    ERROR,
                    where,
                    f"allowed_override_modes lacks the mode the service switches to when {purpose} "
                    f"({settings.mode} mode): Envoy refuses it",
                    f"add {_mode_text(effective)} to allowed_override_modes",
                )
            )
