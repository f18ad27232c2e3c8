"""The processes a benchmark measures: the pre-rendered backend, the service(s) and one Envoy.

One Envoy serves every compared path, so "Envoy alone" and "Envoy + buffered-stream" share the
same process, listener, settings and backend connections:

- ``/direct/v1/chat/completions``: the shipped route with ext_proc disabled (Envoy alone);
- ``/v1/chat/completions``: the shipped converting route, buffered mode;
- ``/streamed/v1/chat/completions``: the same route in streamed mode (added here);
- ``/keepalive/v1/chat/completions``: the same route with keep-alive (full-duplex body; added here).

Changes to the shipped ``envoy.yaml``, all applied to both sides: no access log (disk writes
would be measured too) and circuit breakers raised on both clusters (the defaults allow 1,024
requests at once per cluster, which caps the in-flight test).
"""

from __future__ import annotations

import copy
import os
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "filter"), str(REPO_ROOT / "tests")]

from buffered_stream.envoy_config import (  # noqa: E402
    BACKEND_CLUSTER,
    SERVICE_CLUSTER,
    build_envoy_config,
    cluster,
    enable_keepalive,
    routes,
    write_envoy_config,
)
from procstat import ProcStat  # noqa: E402
from support.net import free_port, port_open, wait_until  # noqa: E402
from support.processes import ManagedProcess  # noqa: E402
from support.stack import find_envoy_binary  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
START_TIMEOUT = 30.0
UNLIMITED = 1_000_000_000
# Run the service with the plain asyncio loop (the CLI installs uvloop whenever it can).
_PLAIN_ASYNCIO_SERVE = "import sys, buffered_stream.cli as c; c.install_fast_loop = lambda: None; sys.argv[0] = 'buffered-stream'; c.main()"


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def pinned(args: list[str], cpus: str | None) -> list[str]:
    """``args`` run on the CPUs listed in ``cpus`` ("0", "1", "0,1"), or anywhere when None."""
    return ["taskset", "-c", cpus, *args] if cpus else args


@dataclass
class Placement:
    """Which CPUs each process may use (None: the scheduler decides) and Envoy's worker count."""

    envoy: str | None = None
    service: str | None = None
    backend: str | None = None
    loader: str | None = None
    envoy_workers: int = 2

    def describe(self) -> str:
        where = ", ".join(
            f"{role} on {getattr(self, role) or 'any CPU'}" for role in ("envoy", "service", "backend", "loader")
        )
        return f"Envoy --concurrency {self.envoy_workers}; {where}"


@dataclass
class BenchStack:
    """Everything started for one run; ``close()`` stops it all, last started first."""

    work_dir: Path
    placement: Placement
    service_count: int = 1
    workers: int = 1  # per service process: ``serve --workers``, one shared port (SO_REUSEPORT)
    service_pythonpath: str | None = None
    service_uvloop: bool = True
    keepalive_seconds: float = 5.0
    floor: bool = False  # run bench/floor.py (constant replies) instead of the service
    processes: list[ManagedProcess] = field(default_factory=list)
    backend_url: str = ""
    envoy_url: str = ""
    envoy_admin: str = ""
    metrics_urls: list[str] = field(default_factory=list)
    services: list[ManagedProcess] = field(default_factory=list)
    envoy: ManagedProcess | None = None
    backend: ManagedProcess | None = None

    def start(self) -> BenchStack:
        try:
            self._start_backend()
            self._start_services()
            self._start_envoy()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        while self.processes:
            self.processes.pop().stop()

    def _spawn(self, name: str, args: list[str], cpus: str | None, env: dict[str, str] | None = None) -> ManagedProcess:
        process = ManagedProcess(name, pinned(args, cpus), self.work_dir, env=env)
        self.processes.append(process)
        return process

    def _start_backend(self) -> None:
        port = free_port()
        self.backend = self._spawn(
            "backend", [sys.executable, str(BENCH_DIR / "backend.py"), "--port", str(port)], self.placement.backend
        )
        self.backend_url = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: self._alive(self.backend) and http_get(f"{self.backend_url}/held"),
            START_TIMEOUT,
            message=lambda: f"backend\n{self.backend.logs()}",
        )

    def _start_services(self) -> None:
        pythonpath = os.pathsep.join(
            filter(None, [self.service_pythonpath, str(REPO_ROOT / "filter"), os.environ.get("PYTHONPATH")])
        )
        entry = ["-m", "buffered_stream"] if self.service_uvloop else ["-c", _PLAIN_ASYNCIO_SERVE]
        self.targets = []
        for i in range(self.service_count):
            target, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
            if self.floor:
                args = [
                    sys.executable,
                    str(BENCH_DIR / "floor.py"),
                    "--listen",
                    target,
                    *([] if self.service_uvloop else ["--asyncio"]),
                ]
            else:
                args = [
                    sys.executable,
                    *entry,
                    "serve",
                    "--listen",
                    target,
                    "--metrics-listen",
                    metrics,
                    "--log-level",
                    "warning",
                    "--workers",
                    str(self.workers),
                ]
                self.metrics_urls.append(f"http://{metrics}")
            process = self._spawn(f"service{i}", args, self.placement.service, env={"PYTHONPATH": pythonpath})
            self.services.append(process)
            self.targets.append(target)
        if self.floor:
            for process, target in zip(self.services, self.targets):
                port = int(target.rpartition(":")[2])
                wait_until(
                    lambda: self._alive(process) and port_open(port),
                    START_TIMEOUT,
                    message=lambda: f"floor\n{process.logs()}",
                )
            return
        for process, url in zip(self.services, self.metrics_urls):
            wait_until(
                lambda: self._alive(process) and http_get(f"{url}/healthz"),
                START_TIMEOUT,
                message=lambda: f"service\n{process.logs()}",
            )

    def _start_envoy(self) -> None:
        port, admin = free_port(), free_port()
        config = bench_envoy_config(self.backend_url, port, admin, self.targets, self.keepalive_seconds)
        path = write_envoy_config(config, self.work_dir / "envoy.json")
        args = [
            str(find_envoy_binary()),
            "-c",
            str(path),
            "--concurrency",
            str(self.placement.envoy_workers),
            "--use-dynamic-base-id",
            "--log-level",
            "warning",
        ]
        self.envoy = self._spawn("envoy", args, self.placement.envoy)
        self.envoy_url = f"http://127.0.0.1:{port}"
        self.envoy_admin = f"http://127.0.0.1:{admin}"
        wait_until(
            lambda: self._alive(self.envoy) and http_get(f"{self.envoy_admin}/ready") == b"LIVE\n",
            START_TIMEOUT,
            message=lambda: f"envoy\n{self.envoy.logs()}",
        )

    @staticmethod
    def _alive(process: ManagedProcess) -> bool:
        process.assert_running()
        return True

    def stats(self) -> dict[str, ProcStat]:
        """CPU and memory of each measured process; services (and their workers) are summed under "service"."""
        found = {"envoy": ProcStat.of(self.envoy.pid), "backend": ProcStat.of(self.backend.pid)}
        pids = self.service_pids()
        found["service"] = sum((ProcStat.of(pid) for pid in pids[1:]), ProcStat.of(pids[0]))
        return found

    def service_pids(self) -> list[int]:
        """Every service process, pool workers included."""
        return [pid for p in self.services for pid in (p.pid, *_children(p.pid))]

    def reset_peak_memory(self) -> None:
        for pid in self.service_pids():
            ProcStat.reset_peak(pid)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def bench_envoy_config(
    backend_url: str, port: int, admin_port: int, service_targets: list[str], keepalive_seconds: float = 5.0
) -> dict[str, Any]:
    """The shipped config with streamed-mode and keep-alive routes, no access log, no circuit breaking."""
    config = build_envoy_config(
        backend_url=backend_url, listen=("127.0.0.1", port), admin_port=admin_port, ext_proc_target=service_targets[0]
    )
    listener = config["static_resources"]["listeners"][0]
    listener["filter_chains"][0]["filters"][0]["typed_config"].pop("access_log", None)
    table = routes(config)
    chat = next(r for r in table if r["name"] == "chat_completions")
    streamed = {
        **chat,
        "name": "chat_completions_streamed",
        "match": {"path": "/streamed/v1/chat/completions"},
        "route": {**chat["route"], "prefix_rewrite": "/v1/chat/completions"},
        "metadata": {
            "filter_metadata": {
                "buffered_stream": {**chat["metadata"]["filter_metadata"]["buffered_stream"], "mode": "streamed"}
            }
        },
    }
    keepalive = enable_keepalive(
        {
            **copy.deepcopy(streamed),
            "name": "chat_completions_keepalive",
            "match": {"path": "/keepalive/v1/chat/completions"},
        },
        keepalive_seconds,
    )
    table.insert(0, streamed)
    table.insert(0, keepalive)
    service = cluster(config, SERVICE_CLUSTER)
    service["load_assignment"]["endpoints"] = [
        {"lb_endpoints": [{"endpoint": {"address": _address(t)}} for t in service_targets]}
    ]
    thresholds = {
        "max_connections": UNLIMITED,
        "max_pending_requests": UNLIMITED,
        "max_requests": UNLIMITED,
        "max_retries": UNLIMITED,
    }
    for name in (BACKEND_CLUSTER, SERVICE_CLUSTER):
        cluster(config, name)["circuit_breakers"] = {"thresholds": [thresholds]}
    return config


def _address(target: str) -> dict[str, Any]:
    host, _, port = target.rpartition(":")
    return {"socket_address": {"address": host, "port_value": int(port)}}
