"""Prometheus metrics and the small HTTP endpoint that serves them with a health check.

Label children are bound once at import: the per-message path then costs one lock-free-ish
increment, not a label lookup.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

# Outcomes of one HTTP request seen by the service.
CONVERTED = "converted"
CONVERTED_KEEPALIVE = "converted_keepalive"  # converted, answer delivered after keep-alive bytes
ABORTED = "aborted"  # the client or Envoy went away before the end
SETTINGS_ERROR = "settings_error"
INTERNAL_ERROR = "internal_error"  # a bug in the service; the request fails, the service goes on
PASSTHROUGH_PREFIX = "passthrough_"  # + why: path, disabled, stream_requested, not_json, status, ...

REQUESTS = Counter("buffered_stream_requests_total", "HTTP requests seen, by outcome", ["outcome"])
GRPC_MESSAGES = Counter(
    "buffered_stream_grpc_messages_total", "ext_proc messages received from Envoy, by phase", ["phase"]
)
RESPONSE_CHUNKS = Counter("buffered_stream_response_chunks_total", "Upstream response body messages converted")
RESPONSE_BYTES = Counter("buffered_stream_response_bytes_total", "Upstream SSE bytes converted")
KEEPALIVE_BYTES = Counter(
    "buffered_stream_keepalive_bytes_total", "Whitespace bytes sent to clients while their answer was assembled"
)
SSE_EVENTS = Counter("buffered_stream_sse_events_total", "SSE events decoded")
ASSEMBLY_SECONDS = Histogram(
    "buffered_stream_assembly_seconds",
    "Time spent decoding and assembling one answer (service CPU, not waiting)",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
IN_FLIGHT = Gauge("buffered_stream_in_flight_requests", "ext_proc streams (HTTP requests) open now")
CONVERTING = Gauge("buffered_stream_converting_requests", "Requests whose upstream stream is being converted now")

PHASES = ("request_headers", "request_body", "response_headers", "response_body", "request_trailers", "response_trailers")
MESSAGES_BY_PHASE = {phase: GRPC_MESSAGES.labels(phase) for phase in PHASES}

_outcome_children: dict[str, Counter] = {}


def count_outcome(outcome: str) -> None:
    child = _outcome_children.get(outcome)
    if child is None:
        child = _outcome_children[outcome] = REQUESTS.labels(outcome)
    child.inc()


async def serve_http(
    host: str,
    port: int,
    is_serving: Callable[[], bool],
    exposition: Callable[[], Awaitable[bytes]] | None = None,
) -> asyncio.AbstractServer:
    """``GET /metrics`` (Prometheus text) and ``GET /healthz`` (200 serving / 503 draining).

    ``exposition`` replaces this process's own metrics (a worker pool's supervisor sums its workers').
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await reader.readline()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.split()
            path = parts[1].split(b"?")[0] if len(parts) >= 2 else b""
            if path == b"/metrics":
                body = await exposition() if exposition else generate_latest(REGISTRY)
                status, ctype = "200 OK", CONTENT_TYPE_LATEST
            elif path == b"/healthz":
                serving = is_serving()
                status = "200 OK" if serving else "503 Service Unavailable"
                ctype, body = "text/plain", b"SERVING\n" if serving else b"NOT_SERVING\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    log.info("metrics and health on http://%s:%d/metrics", host, port)
    return server
