"""``serve --workers N``: a supervisor keeps N service processes on one address.

One Python process converts on one core; the pool uses N. Each worker is the ordinary service
(``serve`` with one worker) started as a fresh interpreter, never forked from this one; the
supervisor itself never imports grpc (it stays small, and has no gRPC threads to fork).

- TCP: every worker binds the same port with SO_REUSEPORT and the kernel spreads Envoy's
  connections across them. A dead worker's listening socket closes with it, so new connections
  only reach live workers; Envoy's connections to the dead one drop and are reopened to the others.
- Unix socket ``unix:PATH``: worker ``i`` listens on ``unix:PATH.i`` (a Unix socket cannot be
  shared), and Envoy lists every path as an endpoint (``worker_targets``).

The supervisor serves ``/metrics`` (the workers' samples added up, plus its own pool gauges; the
counters of a worker that exited stay in the sums as last scraped, so totals never go down) and
``/healthz`` on the metrics address. Health: 503 until every worker has started once (workers
report gRPC NOT_SERVING until then, see ``server``), 200 while any worker serves, 503 once
draining. SIGTERM: every worker gets SIGTERM and drains its own requests; the supervisor exits
0 when all have. A worker that dies otherwise is restarted after a backoff.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import math
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from ..settings import ServiceSettings
from . import metrics
from .metrics_sum import cumulative_samples, sum_expositions

log = logging.getLogger(__name__)

POOL_WORKER_ENV = "BUFFERED_STREAM_POOL_WORKER"  # set in a worker's environment: its index
FIRST_BACKOFF = 0.25
MAX_BACKOFF = 10.0
STABLE_SECONDS = 30.0  # a worker up this long has its backoff reset
SCRAPE_TIMEOUT = 2.0
START_TIMEOUT = 60.0
_PR_SET_PDEATHSIG = 1


def available_cpus(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """CPUs this process may run on: its affinity, bounded by a cgroup v2 CPU quota when set."""
    cpus = len(os.sched_getaffinity(0))
    try:
        with open(cpu_max) as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, math.ceil(int(quota) / int(period))))


def worker_listen(listen: str, index: int) -> str:
    """Where worker ``index`` listens: the shared TCP address, or its own Unix socket path."""
    return f"{listen}.{index}" if listen.startswith("unix:") else listen


def worker_targets(listen: str, count: int) -> list[str]:
    """The distinct addresses a proxy must list to reach every worker of a pool on ``listen``."""
    if count > 1 and listen.startswith("unix:"):
        return [worker_listen(listen, i) for i in range(count)]
    return [listen]


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: a SIGKILLed supervisor must not leave workers holding the port."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: workers then outlive a killed supervisor
        pass


async def _http_get(host: str, port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), SCRAPE_TIMEOUT)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), SCRAPE_TIMEOUT)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(None, 2)[1]), body


@dataclass
class Worker:
    """One slot of the pool; its process is replaced when it dies."""

    index: int
    listen: str
    process: asyncio.subprocess.Process | None = None
    metrics_port: int = 0
    ready: bool = False
    restarts: int = 0
    last_scrape: str = ""
    started_at: float = field(default=0.0)


class Supervisor:
    """Starts, watches, restarts and drains the workers; serves the pool's metrics and health."""

    def __init__(self, settings: ServiceSettings, count: int, worker_args: list[str]) -> None:
        self.settings = settings
        self.workers = [Worker(i, worker_listen(settings.listen, i)) for i in range(count)]
        self.worker_args = worker_args  # command-line flags every worker gets (settings, log level...)
        self.started_once = False
        self.retired = ""  # the counters of workers that exited, as last scraped
        self.draining = False
        self._stop = asyncio.Event()  # set when draining starts: cuts a restart backoff short
        self._http: asyncio.AbstractServer | None = None
        self._keepers: list[asyncio.Task] = []

    @property
    def serving(self) -> bool:
        return self.started_once and not self.draining and any(w.ready for w in self.workers)

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT, then drain every worker; the exit status."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        await self.drain()
        return 0

    async def start(self) -> None:
        if self.settings.metrics_listen:
            host, _, port = self.settings.metrics_listen.rpartition(":")
            host, port = host.strip("[]"), int(port)
            self._http = await metrics.serve_http(host, port, lambda: self.serving, self.exposition)
        self._keepers = [asyncio.create_task(self._keep(w)) for w in self.workers]
        log.info("supervising %d workers on %s", len(self.workers), self.settings.listen)

    async def drain(self) -> None:
        """SIGTERM to every worker, wait for each to finish its requests, then stop serving health."""
        self.draining = True
        self._stop.set()
        live = [w.process for w in self.workers if w.process is not None and w.process.returncode is None]
        log.info("draining %d workers", len(live))
        for process in live:
            process.send_signal(signal.SIGTERM)
        _, pending = await asyncio.wait(self._keepers, timeout=self.settings.drain_seconds + 15)
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                log.error("worker %d did not stop in time: killed", worker.index)
                worker.process.kill()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._http is not None:
            self._http.close()
        log.info("all workers stopped")

    async def _keep(self, worker: Worker) -> None:
        """Run ``worker``; when it dies outside a drain, start it again after a backoff."""
        failures = 0
        while not self.draining:
            await self._spawn(worker)
            if self.draining:  # the drain began while it was being started: it stops too
                worker.process.send_signal(signal.SIGTERM)
            elif await self._wait_started(worker):
                worker.ready = True
                self._announce(worker)
            elif worker.process.returncode is None and not self.draining:
                log.error("worker %d did not start within %.0f s: killed", worker.index, START_TIMEOUT)
                worker.process.kill()
            code = await worker.process.wait()
            worker.ready = False
            self.retired = sum_expositions([self.retired, cumulative_samples(worker.last_scrape)])
            worker.last_scrape = ""
            if self.draining:
                return
            lived = time.monotonic() - worker.started_at
            failures = 0 if lived >= STABLE_SECONDS else failures + 1
            delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** max(0, failures - 1))
            worker.restarts += 1
            log.error(
                "worker %d exited with status %s after %.1f s: restarting in %.2f s", worker.index, code, lived, delay
            )
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def _spawn(self, worker: Worker) -> None:
        worker.metrics_port = _free_loopback_port()
        args = [
            sys.executable,
            "-m",
            "buffered_stream",
            "serve",
            "--workers",
            "1",
            "--listen",
            worker.listen,
            "--metrics-listen",
            f"127.0.0.1:{worker.metrics_port}",
            *self.worker_args,
        ]
        env = {**os.environ, POOL_WORKER_ENV: str(worker.index)}
        worker.process = await asyncio.create_subprocess_exec(*args, env=env, preexec_fn=_die_with_parent)
        worker.started_at = time.monotonic()

    async def _wait_started(self, worker: Worker) -> bool:
        """True once the worker answers on its metrics port (its gRPC port is bound by then)."""
        deadline = time.monotonic() + START_TIMEOUT
        while worker.process.returncode is None and time.monotonic() < deadline and not self.draining:
            try:
                if (await _http_get("127.0.0.1", worker.metrics_port, "/metrics"))[0] == 200:
                    return True
            except (OSError, asyncio.TimeoutError, ValueError, IndexError):
                pass
            await asyncio.sleep(0.05)
        return False

    def _announce(self, worker: Worker) -> None:
        """Tell workers to report SERVING: all of them once the whole pool has started, then each newcomer."""
        if self.started_once:
            worker.process.send_signal(signal.SIGUSR1)
        elif all(w.ready for w in self.workers):
            self.started_once = True
            for w in self.workers:
                w.process.send_signal(signal.SIGUSR1)
            log.info("all %d workers started", len(self.workers))

    async def exposition(self) -> bytes:
        """The workers' metrics added up, then the pool's own."""
        scrapes = await asyncio.gather(*(self._scrape(w) for w in self.workers))
        per_worker = [
            f'buffered_stream_worker_requests_total{{worker="{w.index}"}} {_requests(text)!r}'
            for w, text in zip(self.workers, scrapes)
        ]
        pool = [
            "# HELP buffered_stream_workers Worker processes configured",
            "# TYPE buffered_stream_workers gauge",
            f"buffered_stream_workers {float(len(self.workers))!r}",
            "# HELP buffered_stream_workers_ready Worker processes started and not exited",
            "# TYPE buffered_stream_workers_ready gauge",
            f"buffered_stream_workers_ready {float(sum(w.ready for w in self.workers))!r}",
            "# HELP buffered_stream_worker_restarts_total Workers restarted after exiting on their own",
            "# TYPE buffered_stream_worker_restarts_total counter",
            f"buffered_stream_worker_restarts_total {float(sum(w.restarts for w in self.workers))!r}",
            "# HELP buffered_stream_worker_requests_total HTTP requests seen by each worker since it started",
            "# TYPE buffered_stream_worker_requests_total counter",
            *per_worker,
        ]
        return (sum_expositions([self.retired, *(s for s in scrapes if s)]) + "\n".join(pool) + "\n").encode()

    async def _scrape(self, worker: Worker) -> str:
        if not worker.ready:
            return ""
        try:
            status, body = await _http_get("127.0.0.1", worker.metrics_port, "/metrics")
        except (OSError, asyncio.TimeoutError, ValueError, IndexError):
            return ""
        if status != 200:
            return ""
        worker.last_scrape = body.decode()
        return worker.last_scrape


def _requests(text: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("buffered_stream_requests_total{"):
            total += float(line.rpartition(" ")[2])
    return total
