"""The shipped envoy.yaml and the configs built from it are valid for the real Envoy and keep the
settings the product depends on (timeouts, processing modes, overrides, buffer limits)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from google.protobuf import json_format

from buffered_stream.envoy_config import (
    BACKEND_CLUSTER,
    SERVICE_CLUSTER,
    build_envoy_config,
    cluster,
    converting_routes,
    load_packaged_config,
    routes,
    write_envoy_config,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SIXTEEN_MIB = 16 * 1024 * 1024


def validate(envoy_binary: Path, path: Path) -> None:
    result = subprocess.run(
        [str(envoy_binary), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"envoy rejected {path}:\n{result.stdout}\n{result.stderr}"


def hcm(cfg: dict[str, Any]) -> dict[str, Any]:
    return cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def ext_proc(cfg: dict[str, Any]) -> ext_proc_pb2.ExternalProcessor:
    """The ext_proc filter config, parsed by the real proto (unknown field names fail here)."""
    (entry,) = [f for f in hcm(cfg)["http_filters"] if f["name"] == "envoy.filters.http.ext_proc"]
    typed = {k: v for k, v in entry["typed_config"].items() if k != "@type"}
    return json_format.ParseDict(typed, ext_proc_pb2.ExternalProcessor())


def mode_tuple(mode: Any) -> tuple[str, ...]:
    names = (
        "request_header_mode",
        "request_body_mode",
        "response_header_mode",
        "response_body_mode",
        "request_trailer_mode",
        "response_trailer_mode",
    )
    return tuple(mode.DESCRIPTOR.fields_by_name[n].enum_type.values_by_number[getattr(mode, n)].name for n in names)


def test_root_envoy_yaml_is_the_packaged_config(envoy_binary: Path) -> None:
    root = REPO_ROOT / "envoy.yaml"
    assert root.is_symlink()
    assert yaml.safe_load(root.read_text()) == load_packaged_config()
    validate(envoy_binary, root)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"backend_url": "http://127.0.0.1:8001"},
        {"backend_url": "http://127.0.0.1:8001", "mode": "streamed"},
        {"backend_url": "http://localhost:8001/", "ext_proc_target": "unix:/run/bs/ext_proc.sock"},
        {"backend_url": "https://api.example.com", "admin_port": None},
        {"backend_url": "http://127.0.0.1:8001", "listen": ("127.0.0.1", 0), "admin_port": 0},
        {"backend_url": "http://127.0.0.1:8001", "keepalive_seconds": 2.5},
    ],
    ids=["buffered", "streamed", "unix-socket", "https-backend", "port-zero", "keepalive"],
)
def test_built_configs_pass_envoy_validation(envoy_binary: Path, tmp_path: Path, kwargs: dict) -> None:
    validate(envoy_binary, write_envoy_config(build_envoy_config(**kwargs), tmp_path / "envoy.json"))


def test_ext_proc_filter_settings() -> None:
    cfg = ext_proc(load_packaged_config())
    assert cfg.grpc_service.envoy_grpc.cluster_name == SERVICE_CLUSTER
    assert cfg.failure_mode_allow is False
    assert cfg.status_on_error.code == 502
    assert cfg.message_timeout.seconds == 5
    assert cfg.max_message_timeout.seconds >= cfg.message_timeout.seconds
    assert mode_tuple(cfg.processing_mode) == ("SKIP", "BUFFERED", "SEND", "NONE", "SKIP", "SKIP")
    assert cfg.allow_mode_override is True
    assert [mode_tuple(m) for m in cfg.allowed_override_modes] == [
        ("SKIP", "BUFFERED", "SEND", "BUFFERED", "SKIP", "SKIP"),  # convert, buffered
        ("SKIP", "BUFFERED", "SEND", "STREAMED", "SKIP", "SKIP"),  # convert, streamed
    ]
    # With the request headers skipped, the first message must say where the request goes, and the
    # service cannot remove accept-encoding itself: the converting routes do.
    assert all(r["request_headers_to_remove"] == ["accept-encoding"] for r in converting_routes(load_packaged_config()))
    assert list(cfg.request_attributes) == ["xds.route_metadata", "xds.route_name", "request.path", "request.method"]
    assert list(cfg.metadata_options.receiving_namespaces.untyped) == ["buffered_stream"]


def test_timeouts_and_buffer_limits() -> None:
    cfg = load_packaged_config()
    manager = hcm(cfg)
    assert manager["stream_idle_timeout"] == "600s"
    assert manager["request_timeout"] == "0s"
    assert cfg["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] == SIXTEEN_MIB
    assert cluster(cfg, BACKEND_CLUSTER)["per_connection_buffer_limit_bytes"] == SIXTEEN_MIB
    service_cluster = cluster(cfg, SERVICE_CLUSTER)
    options = service_cluster["typed_extension_protocol_options"]
    assert (
        "http2_protocol_options"
        in options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
    )
    fmt = manager["access_log"][0]["typed_config"]["log_format"]["text_format_source"]["inline_string"]
    for key in ("prompt_tokens", "completion_tokens", "total_tokens", "outcome"):
        assert f"%DYNAMIC_METADATA(buffered_stream:{key})%" in fmt


def test_envoy_errors_become_json_but_service_replies_stay() -> None:
    service_failed, generic = hcm(load_packaged_config())["local_reply_config"]["mappers"]
    only_without_outcome = generic["filter"]["metadata_filter"]
    assert only_without_outcome["matcher"]["path"] == [{"key": "outcome"}]
    assert only_without_outcome["matcher"]["value"] == {"present_match": False}
    assert only_without_outcome["match_if_key_not_found"] is True
    assert service_failed["filter"]["and_filter"]["filters"][0]["metadata_filter"] == only_without_outcome
    assert (
        "ext_proc_error"
        in service_failed["filter"]["and_filter"]["filters"][1]["extension_filter"]["typed_config"]["expression"]
    )
    assert service_failed["body"]["inline_string"]
    for mapper in (service_failed, generic):
        assert set(mapper["body_format_override"]["json_format"]["error"]) == {"message", "type", "param", "code"}


def test_routes() -> None:
    cfg = load_packaged_config()
    by_name = {r["name"]: r for r in routes(cfg)}
    paths = {
        "chat_completions": "/v1/chat/completions",
        "completions": "/v1/completions",
        "responses": "/v1/responses",
        "messages": "/v1/messages",
    }
    assert [r["name"] for r in converting_routes(cfg)] == list(paths)
    for name, path in paths.items():
        route = by_name[name]
        assert route["match"] == {"path": path}
        assert route["route"]["timeout"] == "0s"
        assert route["route"]["idle_timeout"] == "600s"
        assert route["metadata"]["filter_metadata"]["buffered_stream"] == {"enabled": True, "mode": "buffered"}
        assert "typed_per_filter_config" not in route
    assert by_name["direct"]["route"]["prefix_rewrite"] == "/"
    assert by_name["default"]["route"]["timeout"] == "300s"
    for name in ("direct", "default"):
        per_route = by_name[name]["typed_per_filter_config"]["envoy.filters.http.ext_proc"]
        assert per_route["disabled"] is True
    assert list(by_name)[-1] == "default"  # the catch-all must stay last


def test_build_patches_addresses_and_mode() -> None:
    cfg = build_envoy_config(
        backend_url="http://127.0.0.1:8123",
        listen=("127.0.0.1", 10500),
        admin_port=9500,
        ext_proc_target="127.0.0.1:50500",
        mode="streamed",
    )
    listener = cfg["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 10500}
    assert cfg["admin"]["address"]["socket_address"]["port_value"] == 9500

    def endpoint(name: str) -> dict[str, Any]:
        return cluster(cfg, name)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]

    assert endpoint(BACKEND_CLUSTER) == {"socket_address": {"address": "127.0.0.1", "port_value": 8123}}
    assert endpoint(SERVICE_CLUSTER) == {"socket_address": {"address": "127.0.0.1", "port_value": 50500}}
    assert {r["metadata"]["filter_metadata"]["buffered_stream"]["mode"] for r in converting_routes(cfg)} == {"streamed"}
    assert load_packaged_config()["admin"]["address"]["socket_address"]["port_value"] == 9901  # not mutated


def test_build_unix_socket_and_no_admin() -> None:
    cfg = build_envoy_config(backend_url="http://127.0.0.1:8000", ext_proc_target="unix:/run/bs.sock", admin_port=None)
    assert "admin" not in cfg
    address = cluster(cfg, SERVICE_CLUSTER)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address == {"pipe": {"path": "/run/bs.sock"}}


def test_build_https_backend_uses_tls_with_sni_and_host_rewrite() -> None:
    cfg = build_envoy_config(backend_url="https://llm.example.com")
    backend = cluster(cfg, BACKEND_CLUSTER)
    assert backend["type"] == "LOGICAL_DNS"
    address = backend["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address == {"socket_address": {"address": "llm.example.com", "port_value": 443}}
    tls = backend["transport_socket"]["typed_config"]
    assert tls["sni"] == "llm.example.com"
    validation = tls["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"]["filename"]
    assert validation["match_typed_subject_alt_names"] == [{"san_type": "DNS", "matcher": {"exact": "llm.example.com"}}]
    assert all(r["route"]["auto_host_rewrite"] for r in routes(cfg))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend_url": "ftp://127.0.0.1"}, "http"),
        ({"backend_url": "http://127.0.0.1:8000/v1"}, "path"),
        ({"backend_url": "http://127.0.0.1:8000", "mode": "fast"}, "mode"),
        ({"backend_url": "http://127.0.0.1:8000", "ext_proc_target": "50051"}, "host:port"),
        ({"backend_url": "http://127.0.0.1:8000", "ext_proc_target": "unix:"}, "socket path"),
    ],
)
def test_build_rejects_bad_input(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_envoy_config(**kwargs)


def test_build_with_keepalive_sets_metadata_and_the_full_duplex_override() -> None:
    config = build_envoy_config(backend_url="http://127.0.0.1:8001", keepalive_seconds=2.5)
    for route in converting_routes(config):
        assert route["metadata"]["filter_metadata"]["buffered_stream"]["keepalive_seconds"] == 2.5
        mode = route["typed_per_filter_config"]["envoy.filters.http.ext_proc"]["overrides"]["processing_mode"]
        assert (mode["response_body_mode"], mode["response_trailer_mode"]) == ("FULL_DUPLEX_STREAMED", "SEND")
    plain = build_envoy_config(backend_url="http://127.0.0.1:8001")
    assert all("typed_per_filter_config" not in r for r in converting_routes(plain))
