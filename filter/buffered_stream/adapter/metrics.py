"""Prometheus metrics and the small HTTP endpoint that serves them with a health check.

The counters, gauges and the histogram bumped per message, chunk or answer are plain numbers
(``Tally``, ``TallyHistogram``), read when ``/metrics`` is scraped: ext_proc work and the scrape
both run on the one event-loop thread, so no lock is needed, and an increment costs an attribute
add instead of prometheus_client's locked ``inc()`` (measured ~1.5 us each, several per upstream
chunk). Names, labels, types and buckets are those prometheus_client's ``Counter``, ``Gauge`` and
``Histogram`` would expose (without their ``_created`` series). Label children are bound once at
import.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from typing import Awaitable, Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)

# Outcomes of one HTTP request seen by the service.
CONVERTED = "converted"
CONVERTED_KEEPALIVE = "converted_keepalive"  # converted, answer delivered after keep-alive bytes
ABORTED = "aborted"  # the client or Envoy went away before the end
SETTINGS_ERROR = "settings_error"
INTERNAL_ERROR = "internal_error"  # a bug in the service; the request fails, the service goes on
PASSTHROUGH_PREFIX = "passthrough_"  # + why: path, disabled, stream_requested, not_json, status, ...


class Tally:
    """One counter or gauge value; the hot path does ``tally.value += n``."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class TallyFamily:
    """A metric made of ``Tally`` children, one per label value (or one, unlabelled)."""

    def __init__(self, name: str, documentation: str, kind: str, label: str | None = None) -> None:
        self.name, self.documentation, self.kind, self.label = name, documentation, kind, label
        self.children: dict[str, Tally] = {}
        if label is None:
            self.children[""] = Tally()

    def labels(self, value: str) -> Tally:
        child = self.children.get(value)
        if child is None:
            child = self.children[value] = Tally()
        return child

    def metric(self) -> Metric:
        labels = [self.label] if self.label else None
        family_type = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        family = family_type(self.name, self.documentation, labels=labels)
        for label_value, child in self.children.items():
            family.add_metric([label_value] if self.label else [], float(child.value))
        return family


class TallyHistogram:
    """A histogram of plain ints, like ``Tally``: ``observe`` is one bisect and two adds (a
    prometheus_client ``Histogram`` takes a lock and walks its buckets per observation)."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bound >= value: Prometheus' le
        self.sum += value

    def metric(self) -> Metric:
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            cumulative += count
            buckets.append((floatToGoString(bound), float(cumulative)))
        return HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=self.sum)


class _TallyCollector:
    def __init__(self, families: tuple[TallyFamily | TallyHistogram, ...]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.metric()


REQUESTS = TallyFamily("buffered_stream_requests_total", "HTTP requests seen, by outcome", "counter", "outcome")
GRPC_MESSAGES = TallyFamily(
    "buffered_stream_grpc_messages_total", "ext_proc messages received from Envoy, by phase", "counter", "phase"
)
RESPONSE_CHUNKS = TallyFamily("buffered_stream_response_chunks_total", "Upstream response body messages converted", "counter")
RESPONSE_BYTES = TallyFamily("buffered_stream_response_bytes_total", "Upstream SSE bytes converted", "counter")
KEEPALIVE_BYTES = TallyFamily(
    "buffered_stream_keepalive_bytes_total", "Whitespace bytes sent to clients while their answer was assembled", "counter"
)
SSE_EVENTS = TallyFamily("buffered_stream_sse_events_total", "SSE events decoded", "counter")
IN_FLIGHT = TallyFamily("buffered_stream_in_flight_requests", "ext_proc streams (HTTP requests) open now", "gauge")
CONVERTING = TallyFamily("buffered_stream_converting_requests", "Requests whose upstream stream is being converted now", "gauge")
ASSEMBLY_SECONDS = TallyHistogram(
    "buffered_stream_assembly_seconds",
    "Time spent decoding and assembling one answer (service CPU, not waiting)",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
REGISTRY.register(_TallyCollector((REQUESTS, GRPC_MESSAGES, RESPONSE_CHUNKS, RESPONSE_BYTES, KEEPALIVE_BYTES, SSE_EVENTS,
                                   IN_FLIGHT, CONVERTING, ASSEMBLY_SECONDS)))

PHASES = ("request_headers", "request_body", "response_headers", "response_body", "request_trailers", "response_trailers")
MESSAGES_BY_PHASE = {phase: GRPC_MESSAGES.labels(phase) for phase in PHASES}
# Unlabelled tallies, bound for the hot path.
CHUNKS, BYTES, KEEPALIVES, EVENTS = (f.children[""] for f in (RESPONSE_CHUNKS, RESPONSE_BYTES, KEEPALIVE_BYTES, SSE_EVENTS))
OPEN, CONVERTING_NOW = IN_FLIGHT.children[""], CONVERTING.children[""]


def count_outcome(outcome: str) -> None:
    REQUESTS.labels(outcome).value += 1


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
