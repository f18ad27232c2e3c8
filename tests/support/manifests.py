"""Reading kustomize directories of plain manifests, and the checks every placement's manifests
share (a pod with Envoy and the service as sidecars, Envoy's static config in a ConfigMap)."""

from __future__ import annotations

import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from buffered_stream.envoy_config import EXT_PROC_FILTER, LISTENER_NAME, load_packaged_config

REPO_ROOT = Path(__file__).resolve().parents[2]
HARDENED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
# (container, probe, path). A draining service answers 503 on /healthz (it leaves the endpoints)
# but must not be restarted for it, so liveness reads /metrics.
SIDECAR_PROBES = [
    ("buffered-stream", "startupProbe", "/healthz"),
    ("buffered-stream", "readinessProbe", "/healthz"),
    ("buffered-stream", "livenessProbe", "/metrics"),
    ("envoy", "startupProbe", "/ready"),
    ("envoy", "readinessProbe", "/ready"),
    ("envoy", "livenessProbe", "/ready"),
]
LITELLM_PROBES = [
    ("litellm", "startupProbe", "/health/liveliness"),
    ("litellm", "readinessProbe", "/health/readiness"),
    ("litellm", "livenessProbe", "/health/liveliness"),
]


class Manifests:
    """Every document of the resources a ``kustomization.yaml`` lists, in order."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        self.resources: list[str] = kustomization["resources"]
        self.docs: list[dict[str, Any]] = []
        for name in self.resources:
            self.docs += [d for d in yaml.safe_load_all((directory / name).read_text()) if d is not None]

    def find(self, kind: str, name: str) -> dict[str, Any]:
        """The one document of ``kind`` named ``name``."""
        (doc,) = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        return doc

    def assert_every_file_is_a_resource(self) -> None:
        """A manifest left out of ``resources`` would silently never be applied."""
        on_disk = {p.name for p in self.directory.glob("*.yaml")} - {"kustomization.yaml"}
        assert set(self.resources) == on_disk
        for doc in self.docs:
            assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]


# --- Envoy static config --------------------------------------------------------------------


def listener(config: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [lis for lis in config["static_resources"]["listeners"] if lis["name"] == name]
    return found


def hcm(config: dict[str, Any], listener_name: str) -> dict[str, Any]:
    return listener(config, listener_name)["filter_chains"][0]["filters"][0]["typed_config"]


def ext_proc_filter(config: dict[str, Any], listener_name: str) -> dict[str, Any]:
    (entry,) = [f for f in hcm(config, listener_name)["http_filters"] if f["name"] == EXT_PROC_FILTER]
    return entry["typed_config"]


def routes(config: dict[str, Any], listener_name: str) -> list[dict[str, Any]]:
    return [r for vh in hcm(config, listener_name)["route_config"]["virtual_hosts"] for r in vh["routes"]]


def route_for(config: dict[str, Any], listener_name: str, path: str) -> dict[str, Any]:
    """The first route of the listener that matches ``path``, as Envoy picks it."""
    for route in routes(config, listener_name):
        match = route["match"]
        if match.get("path") == path or ("prefix" in match and path.startswith(match["prefix"])):
            return route
    raise AssertionError(f"no route for {path}")


def cluster(config: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in config["static_resources"]["clusters"] if c["name"] == name]
    return found


def endpoint_address(cluster_config: dict[str, Any]) -> dict[str, Any]:
    (endpoint,) = [e for group in cluster_config["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]
    return endpoint["endpoint"]["address"]


def converts(route: dict[str, Any]) -> bool:
    return route.get("metadata", {}).get("filter_metadata", {}).get("buffered_stream", {}).get("enabled", False)


def ext_proc_disabled(route: dict[str, Any]) -> bool:
    return route.get("typed_per_filter_config", {}).get(EXT_PROC_FILTER, {}).get("disabled", False)


def seconds(duration: str) -> float:
    value = re.fullmatch(r"([0-9.]+)s", duration)
    assert value, duration
    return float(value.group(1))


def assert_envoy_accepts(envoy_binary: Path, config_text: str, tmp_path: Path) -> None:
    """``envoy --mode validate``: the config loads in the Envoy version the image pins."""
    path = tmp_path / "envoy.yaml"
    path.write_text(config_text)
    result = subprocess.run(
        [str(envoy_binary), "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"envoy rejected the config:\n{result.stdout}\n{result.stderr}"


def assert_ext_proc_is_the_shipped_one(config: dict[str, Any], listener_name: str) -> None:
    """The filter and Envoy's error replies equal the packaged envoy.yaml's, but for the address."""
    shipped = load_packaged_config()
    ours = {k: v for k, v in ext_proc_filter(config, listener_name).items() if k != "grpc_service"}
    expected = {k: v for k, v in ext_proc_filter(shipped, LISTENER_NAME).items() if k != "grpc_service"}
    assert ours == expected
    assert hcm(config, listener_name)["local_reply_config"] == hcm(shipped, LISTENER_NAME)["local_reply_config"]
    assert ours["failure_mode_allow"] is False
    assert "xds.route_metadata" in ours["request_attributes"]


def assert_admin_reachable_only_through_probe_route(config: dict[str, Any], probe_listener: str) -> None:
    """The admin API (which can stop Envoy) stays on loopback; the kubelet gets GET /ready only."""
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    probe_routes = routes(config, probe_listener)
    (ready,) = [r for r in probe_routes if r["match"].get("path") == "/ready"]
    assert ready["match"]["headers"] == [{"name": ":method", "string_match": {"exact": "GET"}}]
    admin = endpoint_address(cluster(config, ready["route"]["cluster"]))["socket_address"]
    assert admin == config["admin"]["address"]["socket_address"]
    assert probe_routes[-1] == {"match": {"prefix": "/"}, "direct_response": {"status": 404}}


# --- the pod --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    """The pod template of a Deployment: native sidecars (init containers) and main containers."""

    spec: dict[str, Any]

    @classmethod
    def of(cls, deployment: dict[str, Any]) -> Pod:
        return cls(deployment["spec"]["template"]["spec"])

    @property
    def sidecars(self) -> dict[str, dict[str, Any]]:
        return {c["name"]: c for c in self.spec["initContainers"]}

    @property
    def main(self) -> dict[str, dict[str, Any]]:
        return {c["name"]: c for c in self.spec["containers"]}

    @property
    def containers(self) -> dict[str, dict[str, Any]]:
        return {**self.sidecars, **self.main}

    def probe(self, container: str, probe: str) -> tuple[str, int]:
        """(path, port number) of an httpGet probe; a named port is the container's own."""
        spec = self.containers[container][probe]["httpGet"]
        port = spec["port"]
        if isinstance(port, str):
            port = container_ports(self.containers[container])[port]
        return spec["path"], port

    def pre_stop_sleep(self, container: str) -> int:
        return self.containers[container].get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)

    def assert_sidecars_wrap(self, order: list[str], main: str) -> None:
        """Native sidecars start in ``order`` before ``main`` (each once its startup probe passes)
        and stop after it, in reverse order."""
        assert list(self.sidecars) == order
        assert all(c["restartPolicy"] == "Always" for c in self.sidecars.values())
        assert list(self.main) == [main]
        for sidecar in self.sidecars.values():
            assert "httpGet" in sidecar["startupProbe"]

    def assert_hardened(self) -> None:
        context = self.spec["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] != 0
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert self.spec["automountServiceAccountToken"] is False
        for container in self.containers.values():
            assert container["securityContext"] == HARDENED, container["name"]
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) == {"cpu", "memory"}, container["name"]

    def assert_images_pinned(self, envoy_binary: Path) -> None:
        """Tags with a version; Envoy's is the one the tests run, the service's the package's."""
        for container in self.containers.values():
            image, _, tag = container["image"].rpartition(":")
            assert image and "/" not in tag and tag not in ("", "latest"), container["image"]
            assert re.search(r"[0-9]", tag), container["image"]
        version = subprocess.run([str(envoy_binary), "--version"], capture_output=True, text=True).stdout
        tested = re.search(r"/([0-9]+\.[0-9]+\.[0-9]+)/", version).group(1)
        assert self.containers["envoy"]["image"] == f"envoyproxy/envoy:v{tested}"
        project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
        assert self.containers["buffered-stream"]["image"].endswith(f":{project['version']}")

    def assert_envoy_reaches_service_over_shared_socket(self, config: dict[str, Any], listener_name: str) -> None:
        service_cluster = ext_proc_filter(config, listener_name)["grpc_service"]["envoy_grpc"]["cluster_name"]
        socket_path = Path(endpoint_address(cluster(config, service_cluster))["pipe"]["path"])
        assert "http2_protocol_options" in str(cluster(config, service_cluster))
        assert arg_after(self.containers["buffered-stream"], "--listen") == f"unix:{socket_path}"
        (volume,) = [v for v in self.spec["volumes"] if "emptyDir" in v and v["name"] == "ext-proc-socket"]
        for name in ("buffered-stream", "envoy"):
            mounts = {m["name"]: m["mountPath"] for m in self.containers[name]["volumeMounts"]}
            assert mounts[volume["name"]] == str(socket_path.parent)


def container_ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", ())}


def arg_after(container: dict[str, Any], flag: str) -> str:
    args = container.get("command", []) + container.get("args", [])
    return args[args.index(flag) + 1]
