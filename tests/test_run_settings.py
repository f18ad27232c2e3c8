"""``buffered-stream run`` has one configuration surface: the settings file's route ``defaults``,
with ``--mode`` and ``--keepalive-seconds`` over them, decide both what the service does and the
Envoy config ``run`` generates (body modes, the full-duplex override keep-alive needs). Each
default behaves exactly like the equivalent flag and like the same key in the route metadata:
the table compares the effective route settings the service computes for every converting route
of the generated config, and the processing mode Envoy gets there. One real ``run`` process then
shows a keep-alive default at work (newlines to the client while the demo backend waits)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from buffered_stream.check_config import check
from buffered_stream.cli import build_parser, run_envoy_config, run_settings
from buffered_stream.demo_backend import DEMO_TEXT, WAIT_HEADER
from buffered_stream.envoy_config import (
    EXT_PROC_FILTER,
    FULL_DUPLEX_MODE,
    build_envoy_config,
    converting_routes,
    enable_keepalive,
    load_packaged_config,
)
from buffered_stream.settings import RouteSettings, route_settings_from_metadata
from support.net import http_request, wait_until
from support.processes import ManagedProcess
from support.stack import SOURCE_ROOT, run_args

BACKEND = "http://127.0.0.1:8000"
TARGET = "unix:/tmp/bs-test/ext_proc.sock"

# name: (settings file defaults, equivalent run flags or None, the key in route metadata)
ROWS: dict[str, tuple[dict[str, Any], list[str] | None, dict[str, Any]]] = {
    "mode": ({"mode": "streamed"}, ["--mode", "streamed"], {"mode": "streamed"}),
    "keepalive_seconds": ({"keepalive_seconds": 1}, ["--keepalive-seconds", "1"], {"keepalive_seconds": 1.0}),
    "mode-and-keepalive": (
        {"mode": "streamed", "keepalive_seconds": 2.5},
        ["--mode", "streamed", "--keepalive-seconds", "2.5"],
        {"mode": "streamed", "keepalive_seconds": 2.5},
    ),
    "limits": (
        {
            "max_body_bytes": 1 << 20,
            "max_event_bytes": 65536,
            "max_conversion_seconds": 0.5,
            "max_request_bytes": 1 << 19,
        },
        None,
        {
            "max_body_bytes": 1 << 20,
            "max_event_bytes": 65536,
            "max_conversion_seconds": 0.5,
            "max_request_bytes": 1 << 19,
        },
    ),
    "profile": ({"profile": "vllm"}, None, {"profile": "vllm"}),
    "models": ({"models": ["llama-*", "qwen-*"]}, None, {"models": ["llama-*", "qwen-*"]}),
}


def effective(
    config: dict[str, Any], defaults: RouteSettings
) -> list[tuple[str, RouteSettings, dict[str, str] | None]]:
    """Per converting route: the settings the service computes (defaults, then the route's metadata,
    as ``RouteSettingsCache`` does) and the processing-mode override Envoy applies there."""
    found = []
    for route in converting_routes(config):
        settings = route_settings_from_metadata(route["metadata"]["filter_metadata"], defaults)
        override = route.get("typed_per_filter_config", {}).get(EXT_PROC_FILTER, {}).get("overrides", {})
        found.append((route["name"], settings, override.get("processing_mode")))
    return found


def via_run(tmp_path: Path, argv: list[str], defaults: dict[str, Any] | None) -> list[tuple[str, RouteSettings, Any]]:
    if defaults is not None:
        path = tmp_path / "settings.yaml"
        path.write_text(yaml.safe_dump({"defaults": defaults}))
        argv = [*argv, "--settings", str(path)]
    args = build_parser().parse_args(["run", *argv])
    settings = run_settings(args, TARGET)
    config = run_envoy_config(args, settings, BACKEND, TARGET)
    assert not check(config, settings.defaults).errors, check(config, settings.defaults).text()
    return effective(config, settings.defaults)


def via_route_metadata(values: dict[str, Any]) -> list[tuple[str, RouteSettings, Any]]:
    """The same keys written into each converting route by hand, the service on its defaults."""
    config = build_envoy_config(backend_url=BACKEND, ext_proc_target=TARGET)
    for route in converting_routes(config):
        metadata = route["metadata"]["filter_metadata"]["buffered_stream"]
        metadata.update(values)
        if values.get("keepalive_seconds"):
            enable_keepalive(route, values["keepalive_seconds"])
    return effective(config, RouteSettings())


@pytest.mark.parametrize("row", sorted(ROWS))
def test_each_default_behaves_like_its_flag_and_its_route_metadata(tmp_path: Path, row: str) -> None:
    defaults, flags, metadata = ROWS[row]
    from_file = via_run(tmp_path, [], defaults)
    expected = RouteSettings().merged({"enabled": True, **metadata}, where="expected")
    keepalive = expected.keepalive_seconds

    assert from_file == via_route_metadata(metadata)
    assert [settings for _, settings, _ in from_file] == [expected] * len(from_file)
    assert {name for name, _, _ in from_file} == {r["name"] for r in converting_routes(load_packaged_config())}
    assert all((mode == FULL_DUPLEX_MODE) if keepalive else mode is None for _, _, mode in from_file)
    if flags is not None:
        assert via_run(tmp_path, flags, None) == from_file


def test_flags_replace_the_file_defaults_of_their_name_and_keep_the_others(tmp_path: Path) -> None:
    routes = via_run(
        tmp_path,
        ["--mode", "buffered", "--keepalive-seconds", "0"],
        {"mode": "streamed", "keepalive_seconds": 3, "profile": "sglang"},
    )
    assert {settings for _, settings, _ in routes} == {RouteSettings(enabled=True, mode="buffered", profile="sglang")}
    assert all(mode is None for _, _, mode in routes)


def test_no_default_and_no_flag_is_the_shipped_behaviour(tmp_path: Path) -> None:
    routes = via_run(tmp_path, [], None)
    assert {settings for _, settings, _ in routes} == {RouteSettings(enabled=True)}
    assert all(mode is None for _, _, mode in routes)


def test_a_bad_flag_value_is_refused_naming_it(tmp_path: Path) -> None:
    args = build_parser().parse_args(["run", "--keepalive-seconds", "0.01"])
    with pytest.raises(SystemExit) as refused:
        run_settings(args, TARGET)
    assert "keepalive_seconds" in str(refused.value) and "command line" in str(refused.value)


# --- one real process ----------------------------------------------------------------------


@pytest.mark.e2e
def test_run_with_a_keepalive_default_sends_newlines_while_the_backend_waits(tmp_path: Path) -> None:
    """``run --settings`` with ``defaults: {mode: streamed, keepalive_seconds: 1}`` and no backend:
    the demo backend waits 3 s before its first token (filling the wait with ``: keep-alive``
    comments); the client gets newlines, then the answer, and the log has no complaint that the
    route is not full duplex."""
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"defaults": {"mode": "streamed", "keepalive_seconds": 1}}))
    args, port = run_args("--settings", str(settings), "--workers", "1")
    request = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    with ManagedProcess("run", args, tmp_path, env={"PYTHONPATH": str(SOURCE_ROOT)}) as run:

        def up() -> bool:
            run.assert_running()
            return http_request(url, "POST", request, timeout=10).status == 200

        wait_until(up, 30, interval=0.2, message=run.logs)
        result = http_request(url, "POST", request, headers={WAIT_HEADER: "3"}, timeout=30)

        assert result.status == 200 and result.headers["content-type"] == "application/json"
        document = result.body.lstrip(b"\n")
        assert len(result.body) - len(document) >= 2, result.body[:40]
        assert orjson.loads(document)["choices"][0]["message"]["content"] == DEMO_TEXT
        logs = run.stderr()
        assert "not FULL_DUPLEX_STREAMED" not in logs
        assert "with keep-alive" in logs, "run logged check-config's view of its routes"
