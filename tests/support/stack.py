"""Real Envoy and service processes, and the whole backend → service → Envoy stack.

``Harness`` owns everything it starts and stops it all in ``close()``, in reverse order; the
conftest fixtures wrap one per test (``harness``) or per module (``module_harness``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from buffered_stream.adapter.workers import worker_targets
from buffered_stream.cli import find_envoy
from buffered_stream.envoy_config import build_envoy_config, write_envoy_config

from .backend import ScriptedBackend
from .net import free_port, wait_until
from .processes import ManagedProcess, unique_path

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_ROOT = REPO_ROOT / "filter"
START_TIMEOUT = 30.0


def find_envoy_binary() -> Path:
    """The Envoy binary the product itself would run (``FileNotFoundError`` when there is none)."""
    return Path(find_envoy())


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


class Envoy:
    """An Envoy process on a config dict; listeners and admin may use port 0 (read back once ready)."""

    def __init__(self, binary: Path, config: dict[str, Any], work_dir: Path, name: str = "envoy") -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.config = config
        self.config_path = write_envoy_config(config, unique_path(work_dir / f"{name}.json"))
        self._admin_address_path = self.config_path.with_suffix(".admin")
        self.process = ManagedProcess(
            name,
            [
                str(binary),
                "-c",
                str(self.config_path),
                "--use-dynamic-base-id",
                "--admin-address-path",
                str(self._admin_address_path),
                "--concurrency",
                "2",
                "--log-level",
                "warning",
                "--file-flush-interval-msec",
                "50",  # access log lines appear at once
            ],
            work_dir,
        )
        self.admin_url = ""
        self.ports: dict[str, int] = {}

    def wait_ready(self, timeout: float = START_TIMEOUT) -> Envoy:
        """Wait for admin ``/ready`` == LIVE, then learn the listeners' bound ports."""

        def live() -> bool:
            self.process.assert_running()
            address = self._admin_address_path.read_text().strip()
            if not address:
                return False
            self.admin_url = f"http://{address}"
            return _get(f"{self.admin_url}/ready") == (200, b"LIVE\n")

        wait_until(live, timeout, message=lambda: f"{self.name} ready\n{self.process.logs()}")
        _, body = _get(f"{self.admin_url}/listeners?format=json")
        for status in orjson.loads(body)["listener_statuses"]:
            self.ports[status["name"]] = status["local_address"]["socket_address"]["port_value"]
        return self

    def url(self, listener: str = "ingress") -> str:
        return f"http://127.0.0.1:{self.ports[listener]}"

    def stats(self) -> dict[str, int]:
        """Admin counters and gauges, by name."""
        _, body = _get(f"{self.admin_url}/stats?format=json")
        return {s["name"]: s["value"] for s in orjson.loads(body)["stats"] if "value" in s}

    def access_log(self) -> list[str]:
        """Access log lines written so far (the packaged config logs to stdout)."""
        return self.process.stdout().splitlines()

    def stop(self) -> None:
        self.process.stop()


class Service:
    """``python -m buffered_stream serve`` on free loopback ports (or a unix socket)."""

    def __init__(
        self,
        work_dir: Path,
        *,
        settings: Path | None = None,
        unix_socket: bool = False,
        extra_args: tuple[str, ...] = (),
        name: str = "service",
        workers: int = 1,
    ) -> None:
        if unix_socket:
            # sun_path is ~100 bytes: a short private directory, not the (long) pytest tmp dir.
            self._socket_dir: str | None = tempfile.mkdtemp(prefix="bs-")
            self.target = f"unix:{self._socket_dir}/ext_proc.sock"
        # ``targets``: what Envoy lists; a pool on a Unix socket has one path per worker.
        else:
            self._socket_dir = None
            self.target = f"127.0.0.1:{free_port()}"
        self.targets = worker_targets(self.target, workers)
        self.metrics_url = f"http://127.0.0.1:{free_port()}"
        args = [
            sys.executable,
            "-m",
            "buffered_stream",
            "serve",
            "--workers",
            str(workers),
            "--listen",
            self.target,
            "--metrics-listen",
            self.metrics_url.removeprefix("http://"),
            "--log-level",
            "info",
            *(["--settings", str(settings)] if settings else []),
            *extra_args,
        ]
        pythonpath = os.pathsep.join(filter(None, [str(SOURCE_ROOT), os.environ.get("PYTHONPATH")]))
        self.process = ManagedProcess(name, args, work_dir, env={"PYTHONPATH": pythonpath})

    def wait_ready(self, timeout: float = START_TIMEOUT) -> Service:
        def healthy() -> bool:
            self.process.assert_running()
            return _get(f"{self.metrics_url}/healthz")[0] == 200

        wait_until(healthy, timeout, message=lambda: f"service healthy\n{self.process.logs()}")
        return self

    def metrics(self) -> str:
        """The Prometheus text exposition."""
        return _get(f"{self.metrics_url}/metrics")[1].decode()

    def stop(self) -> None:
        self.process.stop()
        if self._socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)


def hop_config(backend_url: str, *, idle_timeout: str = "3s", timeout: str = "0s") -> dict[str, Any]:
    """A plain Envoy "load balancer" in front of ``backend_url`` with the given route timeouts.

    It reproduces the problem the product solves: a non-stream request that stays silent for
    longer than ``idle_timeout`` gets a 504 here.
    """
    host, _, port = backend_url.removeprefix("http://").rstrip("/").partition(":")
    address = {"socket_address": {"address": host, "port_value": int(port)}}
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "hop",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": "upstream", "timeout": timeout, "idle_timeout": idle_timeout},
                        }
                    ],
                }
            ]
        },
        "http_filters": [router],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "hop",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "upstream",
                    "type": "STATIC",
                    "connect_timeout": "5s",
                    "load_assignment": {
                        "cluster_name": "upstream",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
                    },
                }
            ],
        },
    }


def run_args(*extra: str) -> tuple[list[str], int]:
    """``buffered-stream run`` with its demo backend (``extra`` flags added) on free loopback ports:
    the command line, and the port its Envoy listens on."""
    port = free_port()
    args = [
        sys.executable, "-m", "buffered_stream", "run", *extra,
        "--listen", f"127.0.0.1:{port}",
        "--admin-port", str(free_port()),
        "--metrics-listen", f"127.0.0.1:{free_port()}",
        "--demo-delay", "0.01",
    ]  # fmt: skip
    return args, port


@dataclass
class Stack:
    """A backend behind Envoy with the service as its ext_proc; send requests to ``url``."""

    backend: ScriptedBackend
    service: Service
    envoy: Envoy

    @property
    def url(self) -> str:
        return self.envoy.url()


class Harness:
    """Starts backends, services, Envoys and whole stacks; ``close()`` stops them all."""

    def __init__(self, work_dir: Path, envoy_binary: Path) -> None:
        self.work_dir = work_dir
        self.envoy_binary = envoy_binary
        self._started: list[Any] = []

    def backend(self) -> ScriptedBackend:
        return self._own(ScriptedBackend().start())

    def service(self, **kwargs: Any) -> Service:
        """A ready service; kwargs go to ``Service`` (settings, unix_socket, extra_args)."""
        service = self._own(Service(self.work_dir, **kwargs))
        return service.wait_ready()

    def envoy(self, config: dict[str, Any], name: str = "envoy") -> Envoy:
        return self._own(Envoy(self.envoy_binary, config, self.work_dir, name)).wait_ready()

    def hop(self, backend_url: str, **timeouts: str) -> Envoy:
        """A plain Envoy proxy in front of ``backend_url``; see ``hop_config``."""
        return self.envoy(hop_config(backend_url, **timeouts), name="hop")

    def stack(
        self,
        *,
        backend: ScriptedBackend | None = None,
        backend_url: str | None = None,
        mode: str = "buffered",
        customize: Callable[[dict[str, Any]], None] | None = None,
        **service_kwargs: Any,
    ) -> Stack:
        """Backend (new unless given) + service + Envoy built by ``build_envoy_config``.

        ``backend_url`` points Envoy elsewhere (e.g. a hop in front of ``backend``);
        ``customize(config)`` edits the Envoy config in place before start (extra routes,
        timeouts, see ``buffered_stream.envoy_config.routes``).
        """
        backend = backend or self.backend()
        service = self.service(**service_kwargs)
        config = build_envoy_config(
            backend_url=backend_url or backend.url,
            listen=("127.0.0.1", 0),
            admin_port=0,
            ext_proc_target=service.targets if len(service.targets) > 1 else service.target,
            mode=mode,
        )
        if customize:
            customize(config)
        return Stack(backend, service, self.envoy(config))

    def stack_per_mode(
        self, backend: ScriptedBackend | None = None, customize: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Stack]:
        """One buffered and one streamed stack in front of the same backend."""
        backend = backend or self.backend()
        return {mode: self.stack(backend=backend, mode=mode, customize=customize) for mode in ("buffered", "streamed")}

    def close(self) -> None:
        while self._started:
            self._started.pop().stop()

    def _own(self, thing: Any) -> Any:
        self._started.append(thing)
        return thing
