"""The ext_proc adapter: the only module that speaks Envoy's protocol and builds protobuf.

Envoy opens one gRPC stream per HTTP request and sends, in order, the phases its processing mode
asks for. ``Exchange`` holds one request's ``State``, checked on each move; it decides, per message,
the cheapest reply: skip everything after the request headers (one round trip) when the request
cannot be ours, pass the response through when the upstream did not stream, and otherwise feed the
SSE to the core's ``StreamConverter`` and answer with one JSON body. All assembly logic lives in
the core, and everything that differs per API (paths, request plan, assembler, error bodies, usage
names) comes from the request path's ``Api``; nothing here looks inside a completion.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import Any, AsyncIterator, Union

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import json_format, struct_pb2, text_format

from ..apis import api_for_path
from ..core.api import Api
from ..core.convert import StreamConverter
from ..core.errors import ConversionError, limit, malformed, truncated
from ..core.request import Rewrite
from ..settings import (
    NAMESPACE,
    RouteSettings,
    ServiceSettings,
    SettingsError,
    route_settings_from_dynamic,
    route_settings_from_metadata,
)
from . import metrics
from .keepalive import Keepalive

log = logging.getLogger(__name__)

ATTRIBUTES_KEY = "envoy.filters.http.ext_proc"
ROUTE_METADATA_ATTRIBUTE = "xds.route_metadata"
ROUTE_NAME_ATTRIBUTE = "xds.route_name"
# Asked for when the filter skips the request headers: the body message then says where it goes.
PATH_ATTRIBUTE = "request.path"
METHOD_ATTRIBUTE = "request.method"


class State(enum.Enum):
    """Where one HTTP request is in its life, as seen by the processor. A converting state names
    the body mode the answer goes out in: what an upstream chunk gets, and whether the 200 left."""

    REQUEST_HEADERS = "request_headers"  # waiting for the first message (headers, or the body when skipped)
    REQUEST_BODY = "request_body"  # an LLM request on an enabled route: waiting for (the rest of) its body
    RESPONSE_HEADERS = "response_headers"  # request forwarded (rewritten or not): the upstream's headers decide
    PASSING_THROUGH = "passing_through"  # not ours: every later message is answered "unchanged"
    CONVERTING_BUFFERED = "converting_buffered"  # the whole upstream body comes in one message, headers held
    CONVERTING_STREAMED = "converting_streamed"  # upstream chunks dropped one by one; the 200 may have left
    CONVERTING_FULL_DUPLEX = "converting_full_duplex"  # the 200 left; keep-alive bytes until the answer
    DONE = "done"  # final reply sent (the answer or an error): later upstream bytes go nowhere

    # Members are singletons: hash by identity, in C (Enum's own hash runs Python code, and
    # ``Exchange._to`` looks states up in ``TRANSITIONS`` on every change).
    __hash__ = object.__hash__


# The states by bare name, as the code tests them (h11's style): a module global is several times
# cheaper to read than an attribute of the enum class, and the chunk path reads one per message.
REQUEST_HEADERS = State.REQUEST_HEADERS
REQUEST_BODY = State.REQUEST_BODY
RESPONSE_HEADERS = State.RESPONSE_HEADERS
PASSING_THROUGH = State.PASSING_THROUGH
CONVERTING_BUFFERED = State.CONVERTING_BUFFERED
CONVERTING_STREAMED = State.CONVERTING_STREAMED
CONVERTING_FULL_DUPLEX = State.CONVERTING_FULL_DUPLEX
DONE = State.DONE
# A tuple, not a set: ``in`` tests identity first, where a set would hash (in Python, for an enum).
CONVERTING = (CONVERTING_STREAMED, CONVERTING_FULL_DUPLEX, CONVERTING_BUFFERED)

# Every state change an exchange may make; ``Exchange._to`` refuses any other.
TRANSITIONS: dict[State, frozenset[State]] = {
    # The first message settles the route: a settings error is answered at once.
    REQUEST_HEADERS: frozenset((REQUEST_BODY, PASSING_THROUGH, DONE)),
    # Not an LLM request, a request body over the limit, or no body at all (the response headers come next).
    REQUEST_BODY: frozenset((RESPONSE_HEADERS, PASSING_THROUGH)),
    # Not rewritten, not a 200 SSE answer, an answer we cannot convert, or one we convert in Envoy's body mode.
    RESPONSE_HEADERS: frozenset(
        (PASSING_THROUGH, DONE, CONVERTING_BUFFERED, CONVERTING_STREAMED, CONVERTING_FULL_DUPLEX)
    ),
    CONVERTING_BUFFERED: frozenset((DONE,)),
    CONVERTING_STREAMED: frozenset((DONE,)),
    CONVERTING_FULL_DUPLEX: frozenset((DONE,)),
    PASSING_THROUGH: frozenset(),
    DONE: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A state change not in ``TRANSITIONS``: a bug, or messages out of the order Envoy keeps."""

    def __init__(self, source: State, target: State) -> None:
        super().__init__(f"an exchange cannot go from {source.name} to {target.name}")
        self.source, self.target = source, target


# Replies that never change, built once.
_Mode = ProcessingMode
SKIP_REST = pb.ProcessingResponse(
    request_headers=pb.HeadersResponse(),
    mode_override=_Mode(request_body_mode=_Mode.NONE, response_header_mode=_Mode.SKIP, response_body_mode=_Mode.NONE),
)
CONTINUE_REQUEST_HEADERS = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
CONTINUE_REQUEST_BODY = pb.ProcessingResponse(request_body=pb.BodyResponse())
CONTINUE_RESPONSE_HEADERS = pb.ProcessingResponse(response_headers=pb.HeadersResponse())
CONTINUE_RESPONSE_BODY = pb.ProcessingResponse(response_body=pb.BodyResponse())
# The request body arrives in chunks (a host that fixes its modes: STREAMED or FULL_DUPLEX_STREAMED):
# the headers go upstream before the body is known, so they lose what a rewrite would falsify.
_CHUNKED_REQUEST_HEADERS = pb.ProcessingResponse(
    request_headers=pb.HeadersResponse(
        response=pb.CommonResponse(
            header_mutation=pb.HeaderMutation(remove_headers=("content-length", "accept-encoding"))
        )
    )
)
DROP_REQUEST_CHUNK = pb.ProcessingResponse(
    request_body=pb.BodyResponse(response=pb.CommonResponse(body_mutation=pb.BodyMutation(clear_body=True)))
)
_CHUNKED_MODES = (_Mode.STREAMED, _Mode.FULL_DUPLEX_STREAMED)
DROP_RESPONSE_CHUNK = pb.ProcessingResponse(
    response_body=pb.BodyResponse(response=pb.CommonResponse(body_mutation=pb.BodyMutation(clear_body=True)))
)
_BODY_MODES = {"buffered": _Mode.BUFFERED, "streamed": _Mode.STREAMED}
_JSON_HEADERS = [
    base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="content-type", raw_value=b"application/json"))
]
# Full-duplex (keep-alive) routes: the 200 goes downstream at once as JSON; the body follows later.
JSON_RESPONSE_HEADERS = pb.ProcessingResponse(
    response_headers=pb.HeadersResponse(
        response=pb.CommonResponse(
            header_mutation=pb.HeaderMutation(set_headers=_JSON_HEADERS, remove_headers=("content-length",))
        )
    )
)
# A converted answer's headers: JSON, and the route's body mode.
CONVERTING_RESPONSE_HEADERS = {
    mode: pb.ProcessingResponse(
        response_headers=pb.HeadersResponse(
            response=pb.CommonResponse(
                header_mutation=pb.HeaderMutation(set_headers=_JSON_HEADERS, remove_headers=("content-length",))
            )
        ),
        mode_override=_Mode(
            request_body_mode=_Mode.BUFFERED, response_header_mode=_Mode.SEND, response_body_mode=body_mode
        ),
    )
    for mode, body_mode in _BODY_MODES.items()
}
CONTINUE_RESPONSE_TRAILERS = pb.ProcessingResponse(response_trailers=pb.TrailersResponse())

# Upstream chunks from this size on (whole buffered bodies, mostly) are converted a slice at a
# time on one lane per process (``Exchange.feed_bulk``): one slice delays the others' messages.
BULK_MIN_BYTES = 128 << 10
BULK_SLICE_SECONDS = 0.002
BULK_FIRST_SLICE_BYTES = 64 << 10
BULK_MIN_SLICE_BYTES = 4 << 10
BULK_MAX_SLICE_BYTES = 4 << 20
BULK_YIELDS = 16

# What one message gets back: one reply, several in order (rare), or none (full-duplex chunks).
Replies = Union[pb.ProcessingResponse, tuple[pb.ProcessingResponse, ...], None]
_NO_ENCODING = ("accept-encoding",)


LOG_VALUE_CHARS = 128


def loggable(value: str | None) -> str:
    """A client-controlled value as it may appear in a log line: escaped (no newline or control
    character reaches the log) and cut to ``LOG_VALUE_CHARS``, so a client cannot forge or flood it."""
    if value is None:
        return "-"
    if len(value) <= LOG_VALUE_CHARS:
        return ascii(value)
    return f"{ascii(value[:LOG_VALUE_CHARS])}...(+{len(value) - LOG_VALUE_CHARS} chars)"


def _media_type(content_type: str) -> str:
    """The media type of a ``content-type`` value: case-insensitive, parameters dropped (RFC 9110)."""
    return content_type.partition(";")[0].strip().lower()


def _headers(message: pb.HttpHeaders, *wanted: str) -> dict[str, str]:
    """The wanted headers of a message (Envoy sends values in ``raw_value``; older ones in ``value``)."""
    found: dict[str, str] = {}
    for h in message.headers.headers:
        if h.key in wanted:
            found[h.key] = h.raw_value.decode("latin-1") if h.raw_value else h.value
    return found


# Dynamic metadata names of the normalised token counts (``Api.usage_tokens``), the same
# for every API so that access logs and rate limits read one set of keys.
_USAGE_METADATA_KEYS = (
    ("input_tokens", "prompt_tokens"),
    ("output_tokens", "completion_tokens"),
    ("total_tokens", "total_tokens"),
)


def _usage_metadata(outcome: str, spec: Api[Any] | None, usage: dict[str, Any] | None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    _set_usage_metadata(struct, outcome, spec, usage)
    return struct


def _set_usage_metadata(
    struct: struct_pb2.Struct, outcome: str, spec: Api[Any] | None, usage: dict[str, Any] | None
) -> None:
    # Fields are set one by one: ``Struct.update`` walks the values in Python, twice as slow.
    fields = struct.fields[NAMESPACE].struct_value.fields
    fields["outcome"].string_value = outcome
    if usage and spec is not None:
        tokens = spec.usage_tokens(usage)
        for name, key in _USAGE_METADATA_KEYS:
            count = tokens.get(name)
            if type(count) is bool:
                fields[key].bool_value = count
            elif isinstance(count, int):
                fields[key].number_value = count


# The replies built per request are filled in place: nested constructor keywords copy every
# sub-message once more (~3x the cost of the few assignments).


def _rewritten_request(body: bytes) -> pb.ProcessingResponse:
    reply = pb.ProcessingResponse()
    common = reply.request_body.response
    mutation = common.header_mutation
    header = mutation.set_headers.add().header
    header.key = "content-length"
    header.raw_value = str(len(body)).encode()
    mutation.remove_headers.extend(_NO_ENCODING)
    common.body_mutation.body = body
    return reply


def _answer_body(answer: bytes, *, content_length: bool) -> pb.ProcessingResponse:
    """The converted answer in place of the upstream body (buffered or streamed mode)."""
    reply = pb.ProcessingResponse()
    common = reply.response_body.response
    mutation = common.header_mutation
    if content_length:
        header = mutation.set_headers.add().header
        header.key = "content-length"
        header.raw_value = str(len(answer)).encode()
    else:
        mutation.SetInParent()
    common.body_mutation.body = answer
    return reply


def _answer_streamed(answer: bytes, end_of_stream: bool) -> pb.ProcessingResponse:
    """The converted answer as the one streamed body of a full-duplex response."""
    reply = pb.ProcessingResponse()
    streamed = reply.response_body.response.body_mutation.streamed_response
    streamed.body = answer
    streamed.end_of_stream = end_of_stream
    return reply


class RouteSettingsCache:
    """Route metadata text → RouteSettings (or the SettingsError), parsed once per distinct route."""

    def __init__(
        self, defaults: RouteSettings, max_entries: int = 1024, namespaces: tuple[str, ...] = (NAMESPACE,)
    ) -> None:
        self._defaults = defaults
        self._max_entries = max_entries
        self.namespaces = namespaces  # dynamic metadata namespaces that carry route settings
        self._cache: dict[Any, RouteSettings | SettingsError] = {}

    def get(self, metadata_text: str, dynamic: base_pb2.Metadata | None = None) -> RouteSettings:
        """The settings of a route (its metadata text) and, where the request's ``metadata_context``
        carries any of ``namespaces``, those values on top."""
        wanted: tuple[tuple[str, struct_pb2.Struct], ...] = ()
        if dynamic is not None:
            found = dynamic.filter_metadata
            wanted = tuple((ns, found[ns]) for ns in self.namespaces if ns in found)
        key: Any = metadata_text
        if wanted:
            key = (metadata_text, tuple((ns, struct.SerializeToString(deterministic=True)) for ns, struct in wanted))
        hit = self._cache.get(key)
        if hit is None:
            hit = self._parse(metadata_text)
            if wanted and not isinstance(hit, SettingsError):
                try:
                    plain = {ns: json_format.MessageToDict(struct) for ns, struct in wanted}
                    hit = route_settings_from_dynamic(plain, self.namespaces, hit)
                except SettingsError as exc:
                    hit = exc
            if len(self._cache) >= self._max_entries:
                self._cache.clear()
            self._cache[key] = hit
            if isinstance(hit, SettingsError):
                log.error("invalid buffered-stream route settings: %s", hit)
        if isinstance(hit, SettingsError):
            raise hit
        return hit

    def _parse(self, metadata_text: str) -> RouteSettings | SettingsError:
        if not metadata_text:
            return self._defaults
        try:
            metadata = text_format.Parse(metadata_text, base_pb2.Metadata())
        except text_format.ParseError as exc:
            return SettingsError(f"route metadata does not parse: {exc}")
        plain = {ns: json_format.MessageToDict(s) for ns, s in metadata.filter_metadata.items()}
        try:
            return route_settings_from_metadata(plain, self._defaults)
        except SettingsError as exc:
            return exc


class Exchange:
    """One HTTP request's ext_proc conversation: an explicit state, exactly-once finish."""

    __slots__ = (
        "_routes",
        "state",
        "route",
        "route_name",
        "method",
        "path",
        "spec",
        "model",
        "hints",
        "skip_reason",
        "converter",
        "outcome",
        "_assembly_seconds",
        "full_duplex",
        "keepalive",
        "pending_error",
        "request_body_mode",
        "response_body_mode",
        "_request_chunks",
        "_request_bytes",
        "response_at",
        "first_token_at",
    )

    def __init__(self, routes: RouteSettingsCache) -> None:
        self._routes = routes
        self.state = REQUEST_HEADERS
        self.route: RouteSettings | None = None
        self.route_name = ""
        self.method = ""
        self.path = ""
        self.spec: Api[Any] | None = None  # the API of the request path
        # Of a rewritten request (hints None: not rewritten); its body is not kept: a held request
        # would hold the whole prompt for the length of the generation.
        self.model: str | None = None
        self.hints: dict[str, Any] | None = None
        self.skip_reason = ""
        self.converter: StreamConverter | None = None
        self.outcome: str | None = None
        self._assembly_seconds = 0.0
        # The route's response body mode is FULL_DUPLEX_STREAMED (keep-alive routes): a converted
        # answer's 200 is sent at once, the answer at the end, whitespace in between.
        self.full_duplex = False
        self.keepalive: Keepalive | None = None  # that whitespace, while converting in full duplex
        self.pending_error: ConversionError | None = None  # found while a large chunk was fed in slices
        # Envoy's body modes for this request (``protocol_config``): a host may fix them.
        self.request_body_mode = _Mode.BUFFERED
        self.response_body_mode = _Mode.NONE
        self._request_chunks: list[bytes] = []  # a request body that arrives in chunks, until its end
        self._request_bytes = 0
        # perf_counter times of the upstream's response headers and of the first chunk that carried
        # output (streamed and keep-alive modes): the time to first token and the generation time.
        self.response_at = 0.0
        self.first_token_at: float | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def _to(self, state: State) -> None:
        """Every state change goes through here, so a change outside ``TRANSITIONS`` fails loudly
        instead of leaving the exchange in a mix of two states."""
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(self.state, state)
        self.state = state

    def finish(self, outcome: str) -> None:
        """Record how the request ended; only the first call counts."""
        if self.outcome is not None:
            return
        self.outcome = outcome
        metrics.count_outcome(outcome)
        if self.converter is not None:
            metrics.CONVERTING_NOW.value -= 1
            metrics.ASSEMBLY_SECONDS.observe(self._assembly_seconds)
            metrics.EVENTS.value += self.converter.events
        if outcome not in _QUIET_OUTCOMES and not outcome.startswith(metrics.PASSTHROUGH_PREFIX):
            log.info("request finished: outcome=%s route=%s model=%s", outcome, self.route_name, loggable(self.model))

    @property
    def committed(self) -> bool:
        """The 200 went downstream and the answer has not: a keep-alive route (full duplex) or
        streamed mode, between the upstream's response headers and the final reply."""
        state = self.state
        return state is CONVERTING_STREAMED or state is CONVERTING_FULL_DUPLEX

    def _pass(self, reason: str) -> None:
        """Not ours: every later message goes on unchanged (a host may ignore the mode override
        that would have spared it the messages)."""
        self._to(PASSING_THROUGH)
        self.finish(metrics.PASSTHROUGH_PREFIX + reason)

    def _done(self, outcome: str) -> None:
        """The final reply (the answer or an error) is going out."""
        self._to(DONE)
        if self.keepalive is not None:
            self.keepalive.stop()
        self.finish(outcome)

    def _unchanged(self, request: pb.ProcessingRequest, kind: str) -> Replies:
        """The reply that leaves a message of a passed-through request as it is."""
        if kind == "request_body":
            body = request.request_body
            if self.request_body_mode == _Mode.FULL_DUPLEX_STREAMED:
                return _echo(body, "request_body")
            return CONTINUE_REQUEST_BODY
        if kind == "response_body":
            return _echo(request.response_body) if self.full_duplex else CONTINUE_RESPONSE_BODY
        if kind == "request_headers":
            return CONTINUE_REQUEST_HEADERS
        if kind == "response_headers":
            return CONTINUE_RESPONSE_HEADERS
        field = "request_trailers" if kind == "request_trailers" else "response_trailers"
        return pb.ProcessingResponse(**{field: pb.TrailersResponse()})

    # -- messages --------------------------------------------------------------------------------

    def handle(self, request: pb.ProcessingRequest) -> Replies:
        kind = request.WhichOneof("request")
        metrics.MESSAGES_BY_PHASE[kind].value += 1
        if kind == "response_body" and self.state is not REQUEST_HEADERS:
            return self._on_response_body(request.response_body)  # the common one: one per upstream chunk
        if self.state is REQUEST_HEADERS:
            early = self._start(request, kind)
            if early is not None:
                return early
        if self.state is PASSING_THROUGH:
            return self._unchanged(request, kind)
        if kind == "request_headers":
            return self._on_request_headers(request.request_headers)
        if kind == "request_body":
            return self._on_request_body(request.request_body)
        if kind == "response_headers":
            return self._on_response_headers(request.response_headers)
        if kind == "response_body":
            return self._on_response_body(request.response_body)
        if kind == "response_trailers" and self.state is CONVERTING_FULL_DUPLEX:
            return self._on_full_duplex_trailers()
        # Trailers are never asked for elsewhere; answer them so Envoy is not left waiting.
        field = "request_trailers" if kind == "request_trailers" else "response_trailers"
        return pb.ProcessingResponse(**{field: pb.TrailersResponse()})

    def _start(self, request: pb.ProcessingRequest, kind: str) -> pb.ProcessingResponse | None:
        """The first message carries the route's attributes and Envoy's body modes: settle the
        route, or answer at once."""
        modes = request.protocol_config
        self.request_body_mode = modes.request_body_mode
        self.response_body_mode = modes.response_body_mode
        self.full_duplex = modes.response_body_mode == _Mode.FULL_DUPLEX_STREAMED
        attributes = request.attributes.get(ATTRIBUTES_KEY)
        metadata_text = ""
        if attributes is not None:
            fields = attributes.fields
            metadata_text = fields[ROUTE_METADATA_ATTRIBUTE].string_value if ROUTE_METADATA_ATTRIBUTE in fields else ""
            self.route_name = fields[ROUTE_NAME_ATTRIBUTE].string_value if ROUTE_NAME_ATTRIBUTE in fields else ""
            self.path = fields[PATH_ATTRIBUTE].string_value if PATH_ATTRIBUTE in fields else ""
            self.method = fields[METHOD_ATTRIBUTE].string_value if METHOD_ATTRIBUTE in fields else ""
        try:
            self.route = self._routes.get(
                metadata_text, request.metadata_context if request.HasField("metadata_context") else None
            )
        except SettingsError as exc:
            self._done(metrics.SETTINGS_ERROR)
            return _immediate(
                ConversionError(metrics.SETTINGS_ERROR, 500, f"buffered-stream route settings: {exc}"), None
            )
        if not self.route.enabled:
            self._pass("disabled")
            return SKIP_REST if kind == "request_headers" else self._unchanged(request, kind)
        self._to(REQUEST_BODY)
        if kind != "request_headers":  # the filter skips request headers: judge the path by attributes
            self.spec = api_for_path(self.path) if self.method == "POST" else None
        return None

    def _on_request_headers(self, headers: pb.HttpHeaders) -> pb.ProcessingResponse:
        found = _headers(headers, ":method", ":path", "content-type")
        spec = api_for_path(found.get(":path", ""))
        content_type = _media_type(found.get("content-type", "application/json"))
        if found.get(":method") != "POST" or spec is None or "json" not in content_type or headers.end_of_stream:
            self._pass("path")
            return SKIP_REST
        self.spec = spec
        return _CHUNKED_REQUEST_HEADERS if self.request_body_mode in _CHUNKED_MODES else CONTINUE_REQUEST_HEADERS

    def _on_request_body(self, body: pb.HttpBody) -> Replies:
        assert self.route is not None
        chunked = self.request_body_mode in _CHUNKED_MODES
        data = body.body
        if chunked:
            if not body.end_of_stream:
                return self._hold_request_chunk(data)
            if self._request_chunks:
                self._request_chunks.append(data)
                data = b"".join(self._request_chunks)
                self._request_chunks = []
        self._to(RESPONSE_HEADERS)
        if self.spec is None:
            self.skip_reason = "path"
            return self._request_as_it_came(data, chunked)
        route = self.route
        plan = self.spec.plan(
            data,
            route.models,
            route.max_request_bytes,
            profile=route.profile,
            stream_interval=route.upstream_stream_interval,
        )
        if not isinstance(plan, Rewrite):
            self.skip_reason = plan.reason
            return self._request_as_it_came(data, chunked)
        self.model, self.hints = plan.model, plan.hints
        if not chunked:
            return _rewritten_request(plan.body)
        return self._request_body_reply(plan.body)

    # -- a request body in chunks (host-imposed STREAMED or FULL_DUPLEX_STREAMED) ------------------

    def _hold_request_chunk(self, data: bytes) -> Replies:
        """Keep a chunk until the body is whole (the rewrite needs all of it); a body larger than
        the route's ``max_request_bytes`` goes on as it came, the chunks held so far included."""
        assert self.route is not None
        self._request_bytes += len(data)
        if self._request_bytes <= self.route.max_request_bytes:
            self._request_chunks.append(data)
            return DROP_REQUEST_CHUNK if self.request_body_mode == _Mode.STREAMED else None
        held = b"".join(self._request_chunks) + data
        self._request_chunks = []
        self._pass("request_too_large")
        return self._request_body_reply(held, end_of_stream=False)

    def _request_as_it_came(self, data: bytes, chunked: bool) -> Replies:
        if not chunked or (self.request_body_mode == _Mode.STREAMED and self._request_bytes == 0):
            return CONTINUE_REQUEST_BODY  # nothing was held back: the chunk goes on unchanged
        return self._request_body_reply(data)

    def _request_body_reply(self, data: bytes, *, end_of_stream: bool = True) -> pb.ProcessingResponse:
        """``data`` in place of the request body chunk Envoy sent (STREAMED: this chunk's bytes;
        FULL_DUPLEX_STREAMED: the next streamed piece of the body)."""
        reply = pb.ProcessingResponse()
        mutation = reply.request_body.response.body_mutation
        if self.request_body_mode == _Mode.FULL_DUPLEX_STREAMED:
            mutation.streamed_response.body = data
            mutation.streamed_response.end_of_stream = end_of_stream
        else:
            mutation.body = data
        return reply

    def _on_response_headers(self, headers: pb.HttpHeaders) -> pb.ProcessingResponse:
        assert self.route is not None
        if self.hints is None:
            self._pass(self.skip_reason or "path")
            return CONTINUE_RESPONSE_HEADERS
        found = _headers(headers, ":status", "content-type", "content-encoding")
        if found.get(":status") != "200" or _media_type(found.get("content-type", "")) != "text/event-stream":
            self._pass("status" if found.get(":status") != "200" else "content_type")
            return CONTINUE_RESPONSE_HEADERS
        assert self.spec is not None
        self.converter = StreamConverter(
            self.spec,
            self.route.profile,
            max_event_bytes=self.route.max_event_bytes,
            max_body_bytes=self.route.body_limit_in("streamed" if self.full_duplex else self.route.mode),
            hints=self.hints,
        )
        metrics.CONVERTING_NOW.value += 1
        self.response_at = time.perf_counter()
        if found.get("content-encoding", "identity").strip().lower() not in ("identity", ""):
            return self._fail(malformed("upstream stream is content-encoded; cannot convert it"))
        if headers.end_of_stream:
            return self._fail(truncated("upstream answered 200 text/event-stream with no body"))
        if self.full_duplex:
            # Envoy cannot take this body mode back once the body may have started: convert in it.
            # The 200 leaves with the first body byte of ours (a keep-alive byte or the answer):
            # after that a failure can only reset the response.
            self._to(CONVERTING_FULL_DUPLEX)
            if self.route.keepalive_seconds:
                self.keepalive = Keepalive(self.route.keepalive_seconds)
            return JSON_RESPONSE_HEADERS
        if self.route.keepalive_seconds:
            _warn_not_full_duplex(self.route_name)
        if self.response_body_mode == _Mode.NONE:
            # Our own filter config: turn the body on, in the route's mode.
            self._to(CONVERTING_BUFFERED if self.route.mode == "buffered" else CONVERTING_STREAMED)
            return CONVERTING_RESPONSE_HEADERS[self.route.mode]
        # A host fixed the body mode (and may ignore overrides): convert in the mode Envoy said.
        self._to(CONVERTING_BUFFERED if self.response_body_mode == _Mode.BUFFERED else CONVERTING_STREAMED)
        return JSON_RESPONSE_HEADERS

    def _on_response_body(self, body: pb.HttpBody) -> Replies:
        """One upstream chunk, in any body mode. While converting: feed it within the route's
        budget, and answer once the stream is whole (the buffered body; in streamed and full-duplex
        modes end of stream or [DONE], whichever comes first: a body followed by trailers never
        carries end_of_stream)."""
        state = self.state
        if state not in CONVERTING:
            return self._on_body_not_converted(body)
        converter = self.converter
        assert converter is not None
        full_duplex = state is CONVERTING_FULL_DUPLEX
        if full_duplex and self.keepalive is not None:
            self.keepalive.body_started = True
        buffered = state is CONVERTING_BUFFERED
        data = body.body
        metrics.CHUNKS.value += 1
        metrics.BYTES.value += len(data)
        started = time.perf_counter()
        answer: bytes | None = None
        try:
            self._feed(converter, data, started)
            if self.first_token_at is None and not buffered and converter.output_started:
                self.first_token_at = started  # asked until true; then one attribute test per chunk
            if buffered or body.end_of_stream or converter.done:
                answer = converter.finish()
        except ConversionError as exc:
            self._assembly_seconds += time.perf_counter() - started
            # Every mode answers with the error itself: while the upstream's 200 has not left Envoy
            # it becomes the client's answer (the upstream's status and error shape); once it has,
            # Envoy resets the response, the only honest signal left.
            return self._fail(exc)
        self._assembly_seconds += time.perf_counter() - started
        if answer is None:
            return None if full_duplex else DROP_RESPONSE_CHUNK  # full duplex: Envoy waits for no reply
        return self._answer(answer, state, arrived=started)

    def _on_body_not_converted(self, body: pb.HttpBody) -> Replies:
        """An upstream chunk after the final reply, or of an answer that is not ours."""
        if self.converter is not None:
            # A chunk after the answer was sent (data after [DONE]): it goes nowhere.
            return None if self.full_duplex else DROP_RESPONSE_CHUNK
        # An answer we pass through, whose body comes anyway: a full-duplex body mode cannot be
        # turned off in the headers reply (Envoy may have streamed chunks here already and would
        # drop them), and a host may fix the mode. Every chunk goes on as it came.
        return _echo(body) if self.full_duplex else CONTINUE_RESPONSE_BODY

    def _on_full_duplex_trailers(self) -> Replies:
        """An upstream body that ends with trailers never says end_of_stream: the trailers end it."""
        assert self.converter is not None
        try:
            answer = self.converter.finish()
        except ConversionError as exc:
            return self._fail(exc)
        return self._answer(answer, CONVERTING_FULL_DUPLEX, end_of_stream=False), CONTINUE_RESPONSE_TRAILERS

    def _answer(
        self, answer: bytes, state: State, *, end_of_stream: bool = True, arrived: float | None = None
    ) -> pb.ProcessingResponse:
        """The converted answer, as the body mode of ``state`` carries it, with its usage and timing."""
        converter = self.converter
        assert converter is not None
        if state is CONVERTING_FULL_DUPLEX:
            keepalive = self.keepalive
            outcome = (
                metrics.CONVERTED_KEEPALIVE if keepalive is not None and keepalive.bytes_sent else metrics.CONVERTED
            )
            self._done(outcome)
            reply = _answer_streamed(answer, end_of_stream)
        else:
            outcome = metrics.CONVERTED
            self._done(outcome)
            reply = _answer_body(answer, content_length=state is CONVERTING_BUFFERED)
        _set_usage_metadata(reply.dynamic_metadata, outcome, self.spec, converter.usage)
        self._record_timing(reply.dynamic_metadata, arrived)
        return reply

    def _record_timing(self, struct: struct_pb2.Struct, arrived: float | None) -> None:
        """The upstream's time to first token (response headers to the first chunk carrying output),
        its generation time (that chunk to the arrival of the last, ``arrived``) and completion tokens
        per second of it, as dynamic metadata and per-route histograms. Streamed and keep-alive
        modes only: a buffered body arrives whole, so there is no first chunk to time. The generation
        time needs a later chunk than the first-token one, and tokens per second the usage too."""
        first = self.first_token_at
        if first is None:
            return
        fields = struct.fields[NAMESPACE].struct_value.fields
        first_token = first - self.response_at
        fields["first_token_seconds"].number_value = round(first_token, 6)
        generation = rate = None
        if arrived is not None and arrived > first:
            generation = arrived - first
            fields["generation_seconds"].number_value = round(generation, 6)
            usage = self.converter.usage if self.converter is not None else None
            count = self.spec.usage_tokens(usage).get("output_tokens") if usage and self.spec is not None else None
            if type(count) is int and count >= 0:
                rate = count / generation
                fields["tokens_per_second"].number_value = round(rate, 3)
        metrics.observe_generation(self.route_name, self.model, first_token, generation, rate)

    def _feed(self, converter: StreamConverter, data: bytes, started: float) -> None:
        """Feed one upstream chunk within the route's conversion budget (CPU seconds in the converter)."""
        if self.pending_error is not None:
            raise self.pending_error
        if data:
            converter.feed(data)
        self._check_budget(time.perf_counter() - started)

    def _check_budget(self, seconds_now: float) -> None:
        assert self.route is not None
        budget = self.route.max_conversion_seconds
        if budget and self._assembly_seconds + seconds_now > budget:
            raise limit(f"conversion exceeded max_conversion_seconds={budget:g}", code="conversion_too_slow")

    # -- large chunks: fed a slice at a time -------------------------------------------------------

    def bulk_body(self, request: pb.ProcessingRequest) -> pb.HttpBody | None:
        """The upstream chunk of this message when it is large enough to feed in slices, else None."""
        if self.state not in CONVERTING or self.pending_error is not None:
            return None
        if request.WhichOneof("request") != "response_body":
            return None
        body = request.response_body
        return body if len(body.body) >= BULK_MIN_BYTES else None

    async def feed_bulk(self, body: pb.HttpBody, lane: asyncio.Lock) -> None:
        """Feed a large chunk (a whole buffered body, mostly) a slice at a time, then leave the
        message with an empty body for ``handle``; a ConversionError found here is raised there.

        Between two slices of about ``BULK_SLICE_SECONDS`` the loop turns ``BULK_YIELDS`` times:
        each of another stream's messages takes a few turns through grpc.aio, so a pathological
        body (millions of tiny events) delays the others by a slice, not by its whole conversion.
        ``lane`` (one per process) lets one large chunk convert at a time, first come first
        served: under a burst of them the first ones finish within Envoy's message timeout
        instead of all of them sharing the CPU and all missing it.
        """
        converter = self.converter
        assert converter is not None
        data = body.body
        body.body = b""
        metrics.BYTES.value += len(data)
        pos, total, size = 0, len(data), BULK_FIRST_SLICE_BYTES
        try:
            async with lane:
                while pos < total:
                    started = time.perf_counter()
                    while pos < total:
                        piece_started = time.perf_counter()
                        converter.feed(data[pos : pos + size])
                        pos += size
                        now = time.perf_counter()
                        # Size the next piece to the rate just seen: a slice stays near its time
                        # whether the body is cheap (native runs) or pathological.
                        size = min(
                            max(int(size * BULK_SLICE_SECONDS / max(now - piece_started, 1e-6)), BULK_MIN_SLICE_BYTES),
                            BULK_MAX_SLICE_BYTES,
                        )
                        if now - started >= BULK_SLICE_SECONDS:
                            break
                    self._assembly_seconds += time.perf_counter() - started
                    self._check_budget(0.0)
                    if pos < total:
                        for _ in range(BULK_YIELDS):
                            await asyncio.sleep(0)
        except ConversionError as exc:
            self.pending_error = exc

    def _fail(self, error: ConversionError) -> pb.ProcessingResponse:
        """The answer for a stream that cannot become a correct completion: the error, in the API's
        shape. In every body mode Envoy sends it as the response while it still holds the upstream's
        headers (full-duplex and streamed modes hold them until the first body reply), and resets
        the response once a 200 has left: the honest signals in both cases, and neither blames
        the service for an upstream's fault."""
        self._done(error.kind)
        return _immediate(error, self.spec)


_QUIET_OUTCOMES = frozenset((metrics.CONVERTED, metrics.CONVERTED_KEEPALIVE))


_warned_routes: set[str] = set()


def _warn_not_full_duplex(route_name: str) -> None:
    """Once per route: keep-alive asked for where Envoy's body mode cannot carry it."""
    if route_name in _warned_routes or len(_warned_routes) >= 1024:
        return
    _warned_routes.add(route_name)
    log.error(
        "route %r sets keepalive_seconds, but its ext_proc response body mode is not FULL_DUPLEX_STREAMED; "
        "converting without keep-alive",
        route_name,
    )


def _echo(body: pb.HttpBody, field: str = "response_body") -> pb.ProcessingResponse:
    """A full-duplex chunk sent on as it came."""
    reply = pb.ProcessingResponse()
    streamed = getattr(reply, field).response.body_mutation.streamed_response
    streamed.body = body.body
    streamed.end_of_stream = body.end_of_stream
    return reply


def _immediate(error: ConversionError, spec: Api[Any] | None) -> pb.ProcessingResponse:
    """The error answer in place of the upstream's, in the API's own error shape (the default one
    before the API is known); its ``outcome`` metadata tells Envoy's local reply rewriting that this
    body is already the final JSON."""
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=error.status),
            headers=pb.HeaderMutation(set_headers=_JSON_HEADERS),
            body=error.body() if spec is None else spec.error_body(error),
            details=f"buffered_stream_{error.kind}",
        ),
        dynamic_metadata=_usage_metadata(error.kind, spec, None),
    )


class ExternalProcessor(pb_grpc.ExternalProcessorServicer):
    """grpc.aio servicer: one ``Exchange`` per stream, replies in the order Envoy requires."""

    def __init__(self, settings: ServiceSettings) -> None:
        self._routes = RouteSettingsCache(settings.defaults, namespaces=settings.metadata_namespaces)
        metrics.configure(settings.metrics_max_routes, settings.metrics_model_label, settings.metrics_max_models)
        self.in_flight = 0
        self._bulk_lane = asyncio.Lock()

    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> None:
        exchange = Exchange(self._routes)
        self.in_flight += 1
        metrics.OPEN.value += 1
        read, write, eof = context.read, context.write, grpc.aio.EOF
        keepalive: Keepalive | None = None  # the exchange's, once its timer runs
        try:
            while (request := await read()) is not eof:
                try:
                    bulk = exchange.bulk_body(request)
                    if bulk is not None:
                        await exchange.feed_bulk(bulk, self._bulk_lane)
                    replies = exchange.handle(request)
                    if replies is None:  # an upstream chunk taken in full-duplex mode: nothing to say yet
                        if keepalive is None and exchange.keepalive is not None and exchange.keepalive.body_started:
                            keepalive = exchange.keepalive
                            keepalive.start(write)
                        continue
                    if keepalive is not None and keepalive.writing is not None:
                        await keepalive.writing  # a keep-alive byte in flight goes out first
                    if type(replies) is tuple:
                        for reply in replies:
                            await write(reply)
                    else:
                        await write(replies)
                except Exception:
                    # A bug, not a property of the stream: fail this request (Envoy answers with its
                    # status_on_error) and keep serving the others.
                    log.exception("internal error while processing %s", request.WhichOneof("request"))
                    exchange.finish(metrics.INTERNAL_ERROR)
                    await context.abort(grpc.StatusCode.INTERNAL, "buffered_stream: internal error")
                finally:
                    # Let go of the message before waiting for the next: in streamed and keep-alive
                    # modes a held request's last message can be a whole upstream body.
                    request = replies = bulk = None
        finally:
            if keepalive is not None:
                keepalive.close()
            self.in_flight -= 1
            metrics.OPEN.value -= 1
            # The stream ended before our final reply: the client went away or Envoy gave up (after
            # the 200 went out, also the route `timeout`, the hard deadline: the client saw a reset).
            exchange.finish(metrics.ABORTED_AFTER_COMMIT if exchange.committed else metrics.ABORTED)
