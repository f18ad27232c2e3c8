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
import math
import resource
import socket
from bisect import bisect_left
from http import HTTPStatus
from typing import Awaitable, Callable, Iterator

import h11
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)

# Outcomes of one HTTP request seen by the service.
CONVERTED = "converted"
CONVERTED_KEEPALIVE = "converted_keepalive"  # converted, answer delivered after keep-alive bytes
ABORTED = "aborted"  # the client or Envoy went away before the end
# The ext_proc stream ended after the 200 went downstream (keep-alive routes, streamed mode) and
# before the answer: the route `timeout` (the hard deadline) fired or the client went away; the
# client saw a reset, never a clean end.
ABORTED_AFTER_COMMIT = "aborted_after_commit"
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

    def buckets(self) -> list[tuple[str, float]]:
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            cumulative += count
            buckets.append((floatToGoString(bound), float(cumulative)))
        return buckets

    def metric(self) -> Metric:
        return HistogramMetricFamily(self.name, self.documentation, buckets=self.buckets(), sum_value=self.sum)


class LabelledHistogram:
    """``TallyHistogram`` children per label values (one per route, say), created on first use;
    the caller bounds the values (``CappedLabel``)."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> None:
        self.name, self.documentation, self.labels, self.bucket_bounds = name, documentation, labels, buckets
        self.children: dict[tuple[str, ...], TallyHistogram] = {}

    def labelled(self, *values: str) -> TallyHistogram:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = TallyHistogram(self.name, self.documentation, self.bucket_bounds)
        return child

    def metric(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=list(self.labels))
        for values, child in self.children.items():
            family.add_metric(list(values), child.buckets(), child.sum)
        return family


OTHER = "other"
MAX_LABEL_CHARS = 128


class CappedLabel:
    """Label values with bounded cardinality: the first ``cap`` distinct values are their own
    (cut to ``MAX_LABEL_CHARS``), every later one is ``other``. One dict lookup per use."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._known: dict[str, str] = {}

    def __call__(self, value: str) -> str:
        label = self._known.get(value)
        if label is None:
            if len(self._known) >= self.cap:
                return OTHER
            label = self._known[value] = value[:MAX_LABEL_CHARS]
        return label


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
RESPONSE_CHUNKS = TallyFamily(
    "buffered_stream_response_chunks_total", "Upstream response body messages converted", "counter"
)
RESPONSE_BYTES = TallyFamily("buffered_stream_response_bytes_total", "Upstream SSE bytes converted", "counter")
KEEPALIVE_BYTES = TallyFamily(
    "buffered_stream_keepalive_bytes_total",
    "Whitespace bytes sent to clients while their answer was assembled",
    "counter",
)
SSE_EVENTS = TallyFamily("buffered_stream_sse_events_total", "SSE events decoded", "counter")
IN_FLIGHT = TallyFamily("buffered_stream_in_flight_requests", "ext_proc streams (HTTP requests) open now", "gauge")
CONVERTING = TallyFamily(
    "buffered_stream_converting_requests", "Requests whose upstream stream is being converted now", "gauge"
)
ASSEMBLY_SECONDS = TallyHistogram(
    "buffered_stream_assembly_seconds",
    "Time spent decoding and assembling one answer (service CPU, not waiting)",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
# What the upstream stream tells about the server, per converted answer (streamed and keep-alive
# modes: buffered mode sees the body only at its end), labelled by route (and model, see ``configure``).
FIRST_TOKEN_SECONDS = LabelledHistogram(
    "buffered_stream_first_token_seconds",
    "Upstream time from its response headers to the first chunk carrying output (queueing and prefill)",
    ("route",),
    (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
GENERATION_SECONDS = LabelledHistogram(
    "buffered_stream_generation_seconds",
    "Upstream time from the first chunk carrying output to the end of the stream",
    ("route",),
    (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0),
)
TOKENS_PER_SECOND = LabelledHistogram(
    "buffered_stream_tokens_per_second",
    "Completion tokens (from the upstream's usage) per second of generation time",
    ("route",),
    (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0, 1000.0, 2500.0),
)
TIMING = (FIRST_TOKEN_SECONDS, GENERATION_SECONDS, TOKENS_PER_SECOND)
REGISTRY.register(
    _TallyCollector(
        (
            REQUESTS,
            GRPC_MESSAGES,
            RESPONSE_CHUNKS,
            RESPONSE_BYTES,
            KEEPALIVE_BYTES,
            SSE_EVENTS,
            IN_FLIGHT,
            CONVERTING,
            ASSEMBLY_SECONDS,
            *TIMING,
        )
    )
)
_route_label = CappedLabel(64)
_model_label: CappedLabel | None = None


def configure(max_routes: int = 64, model_label: bool = False, max_models: int = 32) -> None:
    """Label the timing histograms by at most ``max_routes`` route names (later ones: ``other``),
    and, when ``model_label``, by at most ``max_models`` models too. Call before any observation."""
    global _route_label, _model_label
    _route_label = CappedLabel(max_routes)
    _model_label = CappedLabel(max_models) if model_label else None
    for family in TIMING:
        family.labels = ("route", "model") if model_label else ("route",)
        family.children.clear()


def observe_generation(
    route: str, model: str | None, first_token: float, generation: float | None, tokens_per_second: float | None
) -> None:
    """One converted answer's upstream timing (seconds; None: not measured)."""
    labels = (_route_label(route or "unnamed"),)
    if _model_label is not None:
        labels += (_model_label(model or "unknown"),)
    FIRST_TOKEN_SECONDS.labelled(*labels).observe(first_token)
    if generation is not None:
        GENERATION_SECONDS.labelled(*labels).observe(generation)
    if tokens_per_second is not None:
        TOKENS_PER_SECOND.labelled(*labels).observe(tokens_per_second)


PHASES = (
    "request_headers",
    "request_body",
    "response_headers",
    "response_body",
    "request_trailers",
    "response_trailers",
)
MESSAGES_BY_PHASE = {phase: GRPC_MESSAGES.labels(phase) for phase in PHASES}
# Unlabelled tallies, bound for the hot path.
CHUNKS, BYTES, KEEPALIVES, EVENTS = (
    f.children[""] for f in (RESPONSE_CHUNKS, RESPONSE_BYTES, KEEPALIVE_BYTES, SSE_EVENTS)
)
OPEN, CONVERTING_NOW = IN_FLIGHT.children[""], CONVERTING.children[""]


def count_outcome(outcome: str) -> None:
    REQUESTS.labels(outcome).value += 1


# The metrics and health listener. It is bound to 0.0.0.0 in Kubernetes (probes and Prometheus come
# from outside the pod), so whoever reaches the port must not be able to starve it, nor take the
# process's file descriptors from gRPC: h11 parses (request line + headers bounded, strict HTTP/1.1),
# each connection carries one request within fixed deadlines and is closed after its answer, and the
# connections held at once are capped far below RLIMIT_NOFILE.
HEAD_TIMEOUT = 5.0  # s from accept to the end of the request head: silent and slowloris clients are closed
RESPONSE_TIMEOUT = 10.0  # s to build and send one answer (a pool supervisor scrapes its workers meanwhile)
LINGER_TIMEOUT = 1.0  # s reading what a refused client still sends, so that a reset does not eat the refusal
MAX_HEAD_BYTES = 8192  # request line + headers; more is answered 431
MAX_CONNECTIONS = 64  # held at once (fewer with a low RLIMIT_NOFILE, see connection_cap)
BACKLOG = 64
_RECV_BYTES = 4096
_PATHS = (b"/metrics", b"/healthz")
_TEXT = b"text/plain"


def connection_cap(nofile: int | None = None) -> int:
    """How many connections the listener holds at once: ``MAX_CONNECTIONS``, at most 1/16 of RLIMIT_NOFILE."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(4, min(MAX_CONNECTIONS, nofile // 16))


class _Connection:
    __slots__ = ("sock", "reading")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reading = True  # still waiting for the request head: the first to go when the listener is full


class HttpListener(asyncio.AbstractServer):
    """``serve_http``'s server: accepts on its own sockets, so it never holds more than
    ``max_connections`` (+1 for the instant it takes to close a new one).

    At the cap a new connection closes the oldest one still waiting for its request head (a probe
    sends its request at once: an idle flood cannot keep it out); when every connection held is
    being answered, the new one is closed instead. ``close()`` stops accepting; connections being
    answered end on their own deadlines.
    """

    def __init__(
        self,
        sockets: list[socket.socket],
        answer: Callable[[h11.Request], Awaitable[tuple[int, bytes, bytes, tuple[tuple[bytes, bytes], ...]]]],
        max_connections: int,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sockets = sockets
        self._answer = answer
        self.max_connections = max_connections
        self._connections: dict[asyncio.Task, _Connection] = {}  # oldest first
        self._full_logged = -math.inf
        self._acceptors = [asyncio.create_task(self._accept(s)) for s in sockets]

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return any(not task.done() for task in self._acceptors)

    def close(self) -> None:
        for task in self._acceptors:
            task.cancel()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._acceptors, return_exceptions=True)

    async def _accept(self, listening: socket.socket) -> None:
        try:
            while True:
                try:
                    sock, _ = await self._loop.sock_accept(listening)
                except ConnectionAbortedError:
                    continue
                except OSError as e:  # EMFILE and the like: the process is short of something, wait
                    log.error("metrics listener: accept failed: %s", e)
                    await asyncio.sleep(1.0)
                    continue
                if len(self._connections) >= self.max_connections and not await self._make_room():
                    sock.close()
                    continue
                sock.setblocking(False)
                task = asyncio.create_task(self._serve(sock))
                self._connections[task] = _Connection(sock)
                task.add_done_callback(self._forget)  # also runs for a task cancelled before it started
        finally:
            listening.close()

    def _forget(self, task: asyncio.Task) -> None:
        self._connections.pop(task).sock.close()

    async def _make_room(self) -> bool:
        """At the cap: close the oldest connection still waiting for its request; False if none is."""
        now = self._loop.time()
        if now - self._full_logged >= 60.0:
            self._full_logged = now
            log.warning(
                "metrics listener: %d connections held, its cap: a new one replaces the oldest idle one "
                "(or is closed if none is idle)",
                self.max_connections,
            )
        oldest = next((task for task, conn in self._connections.items() if conn.reading), None)
        if oldest is None:
            return False
        oldest.cancel()
        await asyncio.wait([oldest])  # its socket is closed once this returns (``_forget`` ran)
        return True

    async def _serve(self, sock: socket.socket) -> None:
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                request = await self._read_head(sock, http)
        except h11.RemoteProtocolError as e:  # malformed, or a head over MAX_HEAD_BYTES
            await self._refuse(sock, http, e.error_status_hint)
            return
        except (OSError, TimeoutError):
            return
        if request is None:  # closed without a request
            return
        self._connections[asyncio.current_task()].reading = False
        if any(name in (b"content-length", b"transfer-encoding") and value != b"0" for name, value in request.headers):
            await self._refuse(sock, http, 413)  # no body is ever read
            return
        try:
            async with asyncio.timeout(RESPONSE_TIMEOUT):
                status, content_type, body, extra = await self._answer(request)
                await self._send(sock, http, status, content_type, body, extra, head_only=request.method == b"HEAD")
        except (OSError, TimeoutError, h11.LocalProtocolError):
            pass

    async def _read_head(self, sock: socket.socket, http: h11.Connection) -> h11.Request | None:
        budget = MAX_HEAD_BYTES  # never read more than that before the head is whole
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                if budget <= 0:
                    raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
                data = await self._loop.sock_recv(sock, min(_RECV_BYTES, budget))
                budget -= len(data)
                http.receive_data(data)
            elif isinstance(event, h11.Request):
                return event
            else:  # ConnectionClosed
                return None

    async def _send(
        self,
        sock: socket.socket,
        http: h11.Connection,
        status: int,
        content_type: bytes,
        body: bytes,
        extra: tuple[tuple[bytes, bytes], ...] = (),
        head_only: bool = False,
    ) -> None:
        headers = [
            (b"Content-Type", content_type),
            (b"Content-Length", b"%d" % len(body)),
            (b"Connection", b"close"),
            *extra,
        ]
        data = http.send(h11.Response(status_code=status, reason=HTTPStatus(status).phrase.encode(), headers=headers))
        if body and not head_only:
            data += http.send(h11.Data(data=body))
        data += http.send(h11.EndOfMessage())
        await self._loop.sock_sendall(sock, data)

    async def _refuse(self, sock: socket.socket, http: h11.Connection, status: int) -> None:
        """Answer ``status``, then read and drop what the client still sends, for a moment."""
        try:
            async with asyncio.timeout(LINGER_TIMEOUT):
                await self._send(sock, http, status, _TEXT, HTTPStatus(status).phrase.lower().encode() + b"\n")
                sock.shutdown(socket.SHUT_WR)
                while await self._loop.sock_recv(sock, _RECV_BYTES):
                    pass
        except (OSError, TimeoutError, h11.LocalProtocolError):
            pass


async def _listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound and listening, one per address ``host`` resolves to, as ``asyncio.start_server`` binds."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def serve_http(
    host: str,
    port: int,
    is_serving: Callable[[], bool],
    exposition: Callable[[], Awaitable[bytes]] | None = None,
    *,
    max_connections: int | None = None,
) -> HttpListener:
    """``GET /metrics`` (Prometheus text) and ``GET /healthz`` (200 serving / 503 draining); HEAD too.

    ``exposition`` replaces this process's own metrics (a worker pool's supervisor sums its workers').
    Limits: see ``HttpListener`` and the constants above.
    """

    async def answer(request: h11.Request) -> tuple[int, bytes, bytes, tuple[tuple[bytes, bytes], ...]]:
        path = request.target.split(b"?")[0]
        if path not in _PATHS:
            return 404, _TEXT, b"not found\n", ()
        if request.method not in (b"GET", b"HEAD"):
            return 405, _TEXT, b"method not allowed\n", ((b"Allow", b"GET, HEAD"),)
        if path == b"/metrics":
            try:
                body = await exposition() if exposition else generate_latest(REGISTRY)
            except Exception:
                log.exception("metrics exposition failed")
                return 500, _TEXT, b"internal error\n", ()
            return 200, CONTENT_TYPE_LATEST.encode(), body, ()
        if is_serving():
            return 200, _TEXT, b"SERVING\n", ()
        return 503, _TEXT, b"NOT_SERVING\n", ()

    listener = HttpListener(await _listening_sockets(host, port), answer, max_connections or connection_cap())
    log.info("metrics and health on http://%s:%d/metrics", host, port)
    return listener
