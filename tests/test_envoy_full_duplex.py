"""What Envoy 1.40's full-duplex response body mode lets a processor send, proven with real Envoy.

Keep-alive depends on two facts about FULL_DUPLEX_STREAMED, checked here with a minimal processor
of this test's own (not the service), so that the service's design rests on observed behaviour:

1. Before the upstream's first body chunk reached Envoy, a body chunk from the processor is a
   "spurious message": Envoy drops the processor and the client never sees that byte. So the
   silence before an upstream's first body byte (queueing, prefill) cannot be bridged.
2. Once the first upstream chunk was handed to the processor, the processor may send body chunks
   at its own pace, and they reach the client at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from buffered_stream.envoy_config import build_envoy_config, converting_routes, enable_keepalive
from support.backend import ScriptedBackend, Sse
from support.net import free_port
from support.probes import open_post, read_response
from support.stack import Harness

pytestmark = pytest.mark.e2e

PROCESSOR_BYTE = b"\n"
UPSTREAM_DELAY_S = 1.5


def own_chunk(body: bytes, end: bool = False) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(
        response_body=pb.BodyResponse(
            response=pb.CommonResponse(
                body_mutation=pb.BodyMutation(streamed_response=pb.StreamedBodyResponse(body=body, end_of_stream=end))
            )
        )
    )


class EagerProcessor(pb_grpc.ExternalProcessorServicer):
    """Sends one body chunk of its own, either right after the response headers or after the
    first upstream chunk; echoes the upstream body otherwise."""

    def __init__(self, send_after_first_chunk: bool) -> None:
        self.send_after_first_chunk = send_after_first_chunk
        self.sent_at: float | None = None

    async def Process(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        own_sent = False
        async for request in request_iterator:
            kind = request.WhichOneof("request")
            if kind == "request_body":
                await context.write(pb.ProcessingResponse(request_body=pb.BodyResponse()))
            elif kind == "response_headers":
                await context.write(pb.ProcessingResponse(response_headers=pb.HeadersResponse()))
                if not self.send_after_first_chunk:
                    self.sent_at = time.monotonic()
                    await context.write(own_chunk(PROCESSOR_BYTE))
                    own_sent = True
            elif kind == "response_body":
                if not own_sent:
                    self.sent_at = time.monotonic()
                    await context.write(own_chunk(PROCESSOR_BYTE))
                    own_sent = True
                await context.write(own_chunk(request.response_body.body, request.response_body.end_of_stream))
            elif kind == "response_trailers":
                await context.write(pb.ProcessingResponse(response_trailers=pb.TrailersResponse()))


class ProcessorThread:
    """A grpc.aio server with ``servicer`` on its own loop in a thread."""

    def __init__(self, servicer: pb_grpc.ExternalProcessorServicer) -> None:
        self.port = free_port()
        self._servicer = servicer
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            server = grpc.aio.server()
            pb_grpc.add_ExternalProcessorServicer_to_server(self._servicer, server)
            server.add_insecure_port(f"127.0.0.1:{self.port}")
            await server.start()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
            await server.stop(0)

        self._loop.run_until_complete(main())

    def __enter__(self) -> ProcessorThread:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def backend() -> Iterator[ScriptedBackend]:
    with ScriptedBackend() as b:
        b.on(Sse([b"data: one\n\n", b"data: two\n\n"], delay=[UPSTREAM_DELAY_S, UPSTREAM_DELAY_S]))
        yield b


def full_duplex_envoy(harness: Harness, backend: ScriptedBackend, processor_port: int) -> Any:
    config = build_envoy_config(
        backend_url=backend.url, listen=("127.0.0.1", 0), admin_port=0, ext_proc_target=f"127.0.0.1:{processor_port}"
    )
    for route in converting_routes(config):
        enable_keepalive(route, 1.0)
    return harness.envoy(config)


def test_a_processor_chunk_before_the_first_upstream_chunk_is_rejected(
    harness: Harness, backend: ScriptedBackend
) -> None:
    with ProcessorThread(EagerProcessor(send_after_first_chunk=False)) as processor:
        envoy = full_duplex_envoy(harness, backend, processor.port)
        result = read_response(open_post(f"{envoy.url()}/v1/chat/completions", {"model": "m"}), timeout=20)

    assert result.status == 200
    assert not result.body.startswith(PROCESSOR_BYTE), "Envoy passed a processor byte sent before the upstream body"
    assert envoy.stats()["http.ingress.ext_proc.spurious_msgs_received"] >= 1


def test_after_the_first_upstream_chunk_processor_chunks_reach_the_client_at_once(
    harness: Harness, backend: ScriptedBackend
) -> None:
    processor_servicer = EagerProcessor(send_after_first_chunk=True)
    with ProcessorThread(processor_servicer) as processor:
        envoy = full_duplex_envoy(harness, backend, processor.port)
        sock = open_post(f"{envoy.url()}/v1/chat/completions", {"model": "m"})
        sock.settimeout(20)
        received = b""
        while b"\r\n\r\n" not in received or not received.partition(b"\r\n\r\n")[2]:
            received += sock.recv(65536)
        first_body_at = time.monotonic()
        while data := sock.recv(65536):
            received += data
        sock.close()

    body = received.partition(b"\r\n\r\n")[2]
    assert body.startswith(b"1\r\n" + PROCESSOR_BYTE), body
    assert body.endswith(b"data: two\n\n\r\n0\r\n\r\n"), body
    assert processor_servicer.sent_at is not None
    assert first_body_at - processor_servicer.sent_at < UPSTREAM_DELAY_S / 2, "the byte waited for upstream data"
    assert envoy.stats()["http.ingress.ext_proc.spurious_msgs_received"] == 0
