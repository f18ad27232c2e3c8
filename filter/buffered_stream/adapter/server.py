"""Running the gRPC service: ext_proc + health + reflection, metrics, and a graceful drain.

Drain order on SIGTERM: health turns NOT_SERVING at once (load balancers and probes stop sending
new requests), requests in flight keep being served until they end or ``drain_seconds`` pass, and
only then does the server close. Requests are never cut because the process was asked to stop.

A pooled worker (``serve --workers N``, see ``workers``) shares its TCP port with the other
workers (SO_REUSEPORT) and reports NOT_SERVING until its supervisor says the whole pool is up
(SIGUSR1), so a probe never sees a half-started pool as ready.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2, external_processor_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from ..core.template import NATIVE_RUNS
from ..settings import ServiceSettings
from ..tls import CertificateReloader, TlsFiles, load_tls_material, server_credentials
from . import metrics
from .service import ExternalProcessor

log = logging.getLogger(__name__)

EXT_PROC_SERVICE = external_processor_pb2.DESCRIPTOR.services_by_name["ExternalProcessor"].full_name


def split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


class Service:
    """The service's lifetime: ``start()``, then ``drain()`` when asked to stop."""

    def __init__(self, settings: ServiceSettings, *, pooled: bool = False) -> None:
        self.settings = settings
        self.pooled = pooled
        self.processor = ExternalProcessor(settings)
        self.health = health_aio.HealthServicer()
        self.serving = False
        self.bound_port = 0
        self._server: grpc.aio.Server | None = None
        self._http: asyncio.AbstractServer | None = None
        self.tls_reloader: CertificateReloader | None = None  # with TLS: swaps in rotated certificates

    async def start(self) -> None:
        size = self.settings.max_message_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", size),
                # Answers are bounded by the routes' max_body_bytes, not by gRPC: a streamed route's
                # answer may pass 64 MiB.
                ("grpc.max_send_message_length", -1),
                # Alone, a second process on the same port is an error; pooled, it is the design.
                ("grpc.so_reuseport", 1 if self.pooled else 0),
            ]
        )
        external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(self.processor, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (EXT_PROC_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        listen = self.settings.listen
        files = TlsFiles.from_settings(self.settings)
        if files is None:
            self.bound_port = server.add_insecure_port(listen)
        else:
            # Checked again here: a pool worker may start long after its supervisor checked them.
            credentials, self.tls_reloader = server_credentials(files, load_tls_material(files))
            self.bound_port = server.add_secure_port(listen, credentials)
        if self.bound_port == 0 and not listen.startswith("unix:"):
            raise OSError(f"cannot listen on {listen}")
        await server.start()
        self._server = server
        if self.settings.metrics_listen:
            host, port = split_host_port(self.settings.metrics_listen)
            self._http = await metrics.serve_http(host, port, lambda: self.serving)
        await self._set_serving(not self.pooled)
        log.info("ext_proc service listening on %s%s", listen, _tls_note(files))
        if not NATIVE_RUNS:
            log.warning(
                "the native run matcher was not built (no C compiler at install): buffered answers "
                "are matched in pure Python, at 2-5x the CPU per conversion"
            )

    async def pool_ready(self) -> None:
        """The supervisor saw every worker start: serve health as SERVING."""
        await self._set_serving(True)

    async def _set_serving(self, serving: bool) -> None:
        self.serving = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", EXT_PROC_SERVICE):
            await self.health.set(name, status)

    async def drain(self) -> None:
        """Stop taking new work, let requests in flight end, then close."""
        await self._set_serving(False)
        deadline = time.monotonic() + self.settings.drain_seconds
        log.info("draining: %d request(s) in flight", self.processor.in_flight)
        while self.processor.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._server is not None:
            await self._server.stop(grace=max(0.0, deadline - time.monotonic()))
        if self._http is not None:
            self._http.close()
        log.info("stopped")


def _tls_note(files: TlsFiles | None) -> str:
    if files is None:
        return " (plaintext)"
    if files.client_ca is None:
        return f" (TLS, certificate {files.cert})"
    return f" (mutual TLS, certificate {files.cert}, client CA {files.client_ca})"


async def serve_until_signalled(
    settings: ServiceSettings, started: asyncio.Event | None = None, *, pooled: bool = False
) -> None:
    """Run the service until SIGTERM or SIGINT, then drain; ``pooled``: a supervised worker."""
    service = Service(settings, pooled=pooled)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if pooled:
        # Installed before the port opens: the supervisor signals only once it can connect.
        ready = asyncio.Event()
        loop.add_signal_handler(signal.SIGUSR1, ready.set)
    await service.start()
    if pooled:
        waiter = asyncio.create_task(_serve_when(ready, stop, service))
    if started is not None:
        started.set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if pooled:
        waiter.cancel()
    await service.drain()


async def _serve_when(ready: asyncio.Event, stop: asyncio.Event, service: Service) -> None:
    await ready.wait()
    if not stop.is_set():
        await service.pool_ready()
