"""Settings: per-route (from Envoy route metadata) and per-service, as frozen dataclasses.

A typo in route metadata must never silently turn conversion off or change its mode, so unknown
keys and wrong types are errors with a message that names the key, the value and what is allowed.
Route metadata arrives as a plain dict (the JSON form of Envoy's ``Metadata.filter_metadata``): the
plain-Envoy shape is ``{"buffered_stream": {...}}``; Envoy Gateway surfaces HTTPRoute annotations
``gateway.envoyproxy.io/buffered-stream.<key>: "<value>"`` (strings) under
``{"envoy-gateway": {"resources": [{"annotations": {...}}]}}``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import orjson

from .apis import PROFILE_NAMES, STREAM_INTERVAL_PROFILES

NAMESPACE = "buffered_stream"
GATEWAY_NAMESPACE = "envoy-gateway"
ANNOTATION_PREFIXES = ("buffered-stream.", "gateway.envoyproxy.io/buffered-stream.")
MODES = ("buffered", "streamed")

MiB = 1 << 20
BUFFERED_BODY_LIMIT = 16 * MiB
STREAMED_BODY_LIMIT = 1024 * MiB
MIN_KEEPALIVE_SECONDS = 0.1
MAX_KEEPALIVE_SECONDS = 3600.0
MAX_UPSTREAM_STREAM_INTERVAL = 65536


class SettingsError(ValueError):
    """Settings that cannot be used; the message is meant for the operator."""


@dataclass(frozen=True, slots=True)
class RouteSettings:
    """What buffered-stream does on one route."""

    enabled: bool = False
    mode: str = "buffered"
    profile: str = "auto"
    models: tuple[str, ...] = ()
    max_body_bytes: int | None = None  # None: the mode's default, see body_limit
    max_event_bytes: int = 1 * MiB
    # Seconds of downstream silence after which a converted answer gets one "\n" (leading JSON
    # whitespace) so idle timeouts in front of Envoy do not fire; 0: off. Works where the route's
    # response body mode is FULL_DUPLEX_STREAMED (see envoy_config.enable_keepalive).
    keepalive_seconds: float = 0.0
    # Seconds of converter CPU one answer may take (0: no limit). A legal but pathological body
    # (millions of tiny events) then fails with a clear 502 `limit` instead of holding a core.
    max_conversion_seconds: float = 2.0
    # Largest request body sent upstream rewritten (``stream: true`` added); a rewrite that would be
    # larger goes upstream untouched (passthrough ``request_too_large``) rather than past Envoy's
    # request buffer (a 413). Default: the shipped Envoy's per_connection_buffer_limit_bytes.
    max_request_bytes: int = BUFFERED_BODY_LIMIT
    # Tokens per upstream chunk asked of the server: converted requests get a top-level
    # ``"stream_interval": N`` (0: off). Sent only on the APIs where the route's ``profile`` names a
    # server line that honours it (``apis.STREAM_INTERVAL_PROFILES``: vLLM >= 0.27, chat and
    # legacy completions); any other profile, ``auto`` included, is an error rather than a no-op.
    upstream_stream_interval: int = 0

    @property
    def body_limit(self) -> int:
        """Upstream SSE bytes converted per answer. Buffered mode holds them all in Envoy and in
        one gRPC message, so its default matches the shipped Envoy buffer; streamed mode holds only
        the assembled answer (a few percent of the SSE), so its default only stops a runaway stream."""
        return self.body_limit_in(self.mode)

    def body_limit_in(self, mode: str) -> int:
        """``body_limit`` when the answer is converted in ``mode`` (a keep-alive route converts in
        streamed fashion whatever its ``mode`` says: Envoy does not hold its body)."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return BUFFERED_BODY_LIMIT if mode == "buffered" else STREAMED_BODY_LIMIT

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SettingsError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.profile not in PROFILE_NAMES:
            raise SettingsError(f"profile {self.profile!r} is not one of {', '.join(PROFILE_NAMES)}")
        for name in ("max_body_bytes", "max_event_bytes", "max_request_bytes"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise SettingsError(f"{name} must be a positive number of bytes")
        if self.keepalive_seconds != 0 and not MIN_KEEPALIVE_SECONDS <= self.keepalive_seconds <= MAX_KEEPALIVE_SECONDS:
            raise SettingsError(
                f"keepalive_seconds must be 0 (off) or between {MIN_KEEPALIVE_SECONDS:g} and {MAX_KEEPALIVE_SECONDS:g}"
            )
        if self.max_conversion_seconds < 0:
            raise SettingsError("max_conversion_seconds must be 0 (no limit) or a positive number of seconds")
        if self.max_event_bytes > self.body_limit:
            raise SettingsError("max_event_bytes cannot exceed max_body_bytes")
        if not 0 <= self.upstream_stream_interval <= MAX_UPSTREAM_STREAM_INTERVAL:
            raise SettingsError(
                f"upstream_stream_interval must be 0 (off) or a number of tokens from 1 to {MAX_UPSTREAM_STREAM_INTERVAL}"
            )
        if self.upstream_stream_interval and self.profile not in STREAM_INTERVAL_PROFILES:
            raise SettingsError(
                f"upstream_stream_interval is sent only to servers known to honour it: set profile to one of "
                f"{', '.join(STREAM_INTERVAL_PROFILES)} (profile is {self.profile!r})"
            )

    def merged(self, values: Mapping[str, Any], *, where: str, strings: bool = False) -> RouteSettings:
        """These settings with ``values`` applied; ``strings`` accepts annotation-style text values."""
        changes: dict[str, Any] = {}
        for key, value in values.items():
            if key not in _ROUTE_FIELDS:
                raise SettingsError(f"{where}: unknown key {key!r}; known keys: {', '.join(sorted(_ROUTE_FIELDS))}")
            changes[key] = _coerce(key, value, _ROUTE_FIELDS[key], where=where, strings=strings)
        try:
            return dataclasses.replace(self, **changes)
        except SettingsError as exc:
            raise SettingsError(f"{where}: {exc}") from None


_ROUTE_FIELDS = {f.name: f.type.replace(" | None", "") for f in dataclasses.fields(RouteSettings)}


def _coerce(key: str, value: Any, kind: str, *, where: str, strings: bool) -> Any:
    def bad(expected: str) -> SettingsError:
        return SettingsError(f"{where}: {key} must be {expected}, got {value!r}")

    if kind == "bool":
        if strings and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if kind == "int":
        if strings and isinstance(value, str) and re.fullmatch(r"[0-9]+", value):
            return int(value)
        # Struct numbers arrive as floats: accept whole numbers only.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise bad("a whole number")
        return int(value)
    if kind == "float":
        if strings and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise bad("a number of seconds") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise bad("a number of seconds")
        return float(value)
    if kind == "tuple[str, ...]":
        if strings and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise bad("a list of glob patterns")
        return tuple(value)
    raise AssertionError(f"no coercion for {kind}")  # pragma: no cover - a new field without one


def route_settings_from_metadata(
    metadata: Mapping[str, Any], defaults: RouteSettings = RouteSettings()
) -> RouteSettings:
    """Route settings from Envoy route metadata (plain Envoy or Envoy Gateway shape)."""
    settings = defaults
    plain = metadata.get(NAMESPACE)
    if plain is not None:
        if not isinstance(plain, Mapping):
            raise SettingsError(f"route metadata {NAMESPACE!r} must be a struct")
        settings = settings.merged(plain, where=f"route metadata {NAMESPACE}")
    annotations = _gateway_annotations(metadata.get(GATEWAY_NAMESPACE))
    if annotations:
        settings = settings.merged(annotations, where="HTTPRoute annotations", strings=True)
    return settings


def route_settings_from_dynamic(
    dynamic: Mapping[str, Any], namespaces: tuple[str, ...], settings: RouteSettings
) -> RouteSettings:
    """``settings`` with the route settings found in dynamic metadata (``metadata_context``) applied,
    namespace by namespace in ``namespaces`` order. Precedence, lowest first: the service's
    ``defaults``, the route metadata, then these: a value set for this request (by a
    ``set_metadata`` filter, a gateway policy or a host's extension) is the most specific one."""
    for namespace in namespaces:
        values = dynamic.get(namespace)
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise SettingsError(f"dynamic metadata {namespace!r} must be a struct")
        # Strings too: some hosts write only strings (GCP extension-level metadata, kgateway's
        # transformations), so "true" and "5" read as in HTTPRoute annotations.
        settings = settings.merged(values, where=f"dynamic metadata {namespace}", strings=True)
    return settings


def _gateway_annotations(gateway: Any) -> dict[str, Any]:
    """Our keys from Envoy Gateway's resource annotations, prefix removed."""
    if not isinstance(gateway, Mapping):
        return {}
    found: dict[str, Any] = {}
    for resource in gateway.get("resources") or ():
        annotations = resource.get("annotations") if isinstance(resource, Mapping) else None
        if not isinstance(annotations, Mapping):
            continue
        for key, value in annotations.items():
            for prefix in ANNOTATION_PREFIXES:
                if key.startswith(prefix):
                    found[key[len(prefix) :]] = value
    return found


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """How the service process runs; ``defaults`` apply to every route before its metadata."""

    listen: str = "127.0.0.1:50051"
    metrics_listen: str | None = "127.0.0.1:9464"
    log_level: str = "info"
    drain_seconds: float = 30.0
    defaults: RouteSettings = field(default_factory=RouteSettings)
    # TLS on the gRPC listener (PEM files, reloaded when they change: see ``buffered_stream.tls``); with
    # ``tls_client_ca`` every client must present a certificate signed by it (mutual TLS).
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    # Dynamic metadata namespaces (``ProcessingRequest.metadata_context``, what a ``set_metadata``
    # filter, kgateway's ``metadataOptions`` or a host's extension metadata forwards) whose keys are
    # route settings, applied after the route metadata, in this order (see ``route_settings_from_dynamic``).
    metadata_namespaces: tuple[str, ...] = (NAMESPACE,)
    # Prometheus labels of the per-route timing histograms (``adapter.metrics``): at most
    # ``metrics_max_routes`` distinct route names per process, the rest counted as ``other``; a
    # ``model`` label only when ``metrics_model_label`` is true, capped alike by ``metrics_max_models``.
    metrics_max_routes: int = 64
    metrics_model_label: bool = False
    metrics_max_models: int = 32

    def __post_init__(self) -> None:
        for name in ("metrics_max_routes", "metrics_max_models"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
                raise SettingsError(f"{name} must be a whole number from 1 to 10000, got {value!r}")
        if not isinstance(self.metrics_model_label, bool):
            raise SettingsError(f"metrics_model_label must be true or false, got {self.metrics_model_label!r}")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise SettingsError(f"{name} must be the path of a PEM file, got {value!r}")
        if not isinstance(self.metadata_namespaces, tuple) or not all(
            isinstance(ns, str) and ns for ns in self.metadata_namespaces
        ):
            raise SettingsError(
                f"metadata_namespaces must be a list of namespace names, got {self.metadata_namespaces!r}"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("tls_cert and tls_key (--tls-cert, --tls-key) go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise SettingsError(
                "tls_client_ca (--tls-client-ca) needs tls_cert and tls_key: mutual TLS is TLS with client certificates"
            )
        if self.tls_cert is not None and str(self.listen).startswith("unix:"):
            raise SettingsError(
                f"TLS needs a TCP listen address, not {self.listen}: a Unix socket is reached only through its "
                "directory's permissions, so tls_cert, tls_key and tls_client_ca are refused there "
                "(`buffered-stream run` always uses one)"
            )

    @property
    def tls(self) -> bool:
        """Whether the gRPC listener speaks TLS (see ``buffered_stream.tls``)."""
        return self.tls_cert is not None

    @property
    def max_message_bytes(self) -> int:
        """gRPC message limit: a whole buffered body plus protobuf framing must fit."""
        return max(64 * MiB, (self.defaults.max_body_bytes or 0) + MiB)


_SERVICE_KEYS = {f.name for f in dataclasses.fields(ServiceSettings)}


def load_service_settings(path: str | None, **overrides: Any) -> ServiceSettings:
    """Settings from a YAML/JSON file (optional), then non-None command-line ``overrides``."""
    values: dict[str, Any] = {}
    if path is not None:
        values = _read_settings_file(path)
    unknown = set(values) - _SERVICE_KEYS
    if unknown:
        raise SettingsError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))}; known keys: {', '.join(sorted(_SERVICE_KEYS))}"
        )
    defaults = RouteSettings()
    if "defaults" in values:
        if not isinstance(values["defaults"], Mapping):
            raise SettingsError(f"{path}: defaults must be a mapping of route settings")
        defaults = defaults.merged(values.pop("defaults"), where=f"{path}: defaults")
    if isinstance(values.get("metadata_namespaces"), list):
        values["metadata_namespaces"] = tuple(values["metadata_namespaces"])
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ServiceSettings(defaults=defaults, **values)
    except TypeError as exc:  # pragma: no cover - guarded by _SERVICE_KEYS
        raise SettingsError(str(exc)) from None


def read_settings_file(path: str) -> dict[str, Any]:
    """The raw mapping of a YAML/JSON settings file (what ``load_service_settings`` validates)."""
    return _read_settings_file(path)


def _read_settings_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise SettingsError(f"cannot read settings file {path}: {exc.strerror}") from None
    try:
        if path.endswith(".json"):
            data = orjson.loads(raw)
        else:
            import yaml

            data = yaml.safe_load(raw)
    except Exception as exc:  # the parsers' own errors carry the line/column
        raise SettingsError(f"settings file {path} does not parse: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"settings file {path} must hold a mapping")
    return data
