"""The ext_proc adapter without Envoy: one ``Exchange`` driven with real protobuf messages.

Table-driven: requests in → the replies Envoy would get, the state and the outcome out. The
end-to-end tests prove the same replies work with the real binary.
"""

from __future__ import annotations

import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from buffered_stream.adapter.service import Exchange, RouteSettingsCache, State
from buffered_stream.settings import RouteSettings

ENABLED = 'filter_metadata { key: "buffered_stream" value { fields { key: "enabled" value { bool_value: true } } } }'
STREAMED = ENABLED.replace("} } } }", '} } fields { key: "mode" value { string_value: "streamed" } } } }')
CHAT_BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
SSE = (
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}]}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
    b"data: [DONE]\n\n"
)


def headers(*pairs: tuple[str, str], end_of_stream: bool = False) -> pb.HttpHeaders:
    return pb.HttpHeaders(
        headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]),
        end_of_stream=end_of_stream,
    )


def request_headers(
    metadata: str = ENABLED, method: str = "POST", path: str = "/v1/chat/completions"
) -> pb.ProcessingRequest:
    attributes = struct_pb2.Struct()
    attributes.update({"xds.route_metadata": metadata, "xds.route_name": "chat"})
    return pb.ProcessingRequest(
        request_headers=headers((":method", method), (":path", path), ("content-type", "application/json")),
        attributes={"envoy.filters.http.ext_proc": attributes},
    )


def first_body(
    data: bytes, metadata: str = ENABLED, method: str = "POST", path: str = "/v1/chat/completions"
) -> pb.ProcessingRequest:
    """The first message when the filter skips request headers (the shipped config)."""
    attributes = struct_pb2.Struct()
    attributes.update(
        {"xds.route_metadata": metadata, "xds.route_name": "chat", "request.path": path, "request.method": method}
    )
    return pb.ProcessingRequest(
        request_body=pb.HttpBody(body=data, end_of_stream=True), attributes={"envoy.filters.http.ext_proc": attributes}
    )


def body(data: bytes, end_of_stream: bool = True, response: bool = False) -> pb.ProcessingRequest:
    message = pb.HttpBody(body=data, end_of_stream=end_of_stream)
    return pb.ProcessingRequest(response_body=message) if response else pb.ProcessingRequest(request_body=message)


def response_headers(status: str = "200", content_type: str = "text/event-stream") -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_headers=headers((":status", status), ("content-type", content_type)))


def set_headers(mutation: pb.HeaderMutation) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


@pytest.fixture
def exchange() -> Exchange:
    return Exchange(RouteSettingsCache(RouteSettings()))


def test_converted_buffered_request(exchange: Exchange) -> None:
    assert exchange.handle(request_headers()) == pb.ProcessingResponse(request_headers=pb.HeadersResponse())
    reply = exchange.handle(body(CHAT_BODY)).request_body.response
    sent = orjson.loads(reply.body_mutation.body)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert set_headers(reply.header_mutation) == {"content-length": str(len(reply.body_mutation.body))}
    assert list(reply.header_mutation.remove_headers) == ["accept-encoding"]

    reply = exchange.handle(response_headers())
    assert reply.mode_override.response_body_mode == ProcessingMode.BUFFERED
    assert set_headers(reply.response_headers.response.header_mutation) == {"content-type": "application/json"}
    assert list(reply.response_headers.response.header_mutation.remove_headers) == ["content-length"]
    assert exchange.state is State.CONVERTING_BUFFERED

    reply = exchange.handle(body(SSE, response=True))
    answer = reply.response_body.response.body_mutation.body
    assert orjson.loads(answer)["choices"][0]["message"]["content"] == "Hello"
    assert set_headers(reply.response_body.response.header_mutation) == {"content-length": str(len(answer))}
    usage = reply.dynamic_metadata.fields["buffered_stream"].struct_value.fields
    assert usage["total_tokens"].number_value == 5 and usage["outcome"].string_value == "converted"
    assert (exchange.state, exchange.outcome) == (State.DONE, "converted")


def test_streamed_mode_drops_chunks_then_answers_once(exchange: Exchange) -> None:
    exchange.handle(request_headers(STREAMED))
    exchange.handle(body(CHAT_BODY))
    assert exchange.handle(response_headers()).mode_override.response_body_mode == ProcessingMode.STREAMED
    first, rest = SSE[:100], SSE[100:]
    assert exchange.handle(
        body(first, end_of_stream=False, response=True)
    ).response_body.response.body_mutation.clear_body
    reply = exchange.handle(body(rest, end_of_stream=False, response=True))  # [DONE] before end_of_stream
    assert orjson.loads(reply.response_body.response.body_mutation.body)["object"] == "chat.completion"
    assert not reply.response_body.response.header_mutation.set_headers  # headers already sent
    after = exchange.handle(body(b"", end_of_stream=True, response=True))
    assert after.response_body.response.body_mutation.clear_body
    assert exchange.outcome == "converted"


def test_streamed_failure_is_an_error_answer_that_envoy_turns_into_a_reset_after_commit(exchange: Exchange) -> None:
    """Before the 200 left Envoy the error is the client's answer; after, Envoy resets the response."""
    exchange.handle(request_headers(STREAMED))
    exchange.handle(body(CHAT_BODY))
    exchange.handle(response_headers())
    reply = exchange.handle(body(SSE[:100], end_of_stream=True, response=True))
    assert reply.immediate_response.status.code == 502
    assert orjson.loads(reply.immediate_response.body)["error"]["type"] == "truncated"
    assert exchange.outcome == "truncated"


@pytest.mark.parametrize(
    ("sse", "status", "kind"),
    [
        (SSE[:150], 502, "truncated"),
        (b'data: {"error": {"message": "bad", "code": 400}}\n\n', 400, "upstream_error"),
        (b"data: {not json\n\n", 502, "malformed"),
    ],
)
def test_buffered_failures_become_error_answers(exchange: Exchange, sse: bytes, status: int, kind: str) -> None:
    exchange.handle(request_headers())
    exchange.handle(body(CHAT_BODY))
    exchange.handle(response_headers())
    reply = exchange.handle(body(sse, response=True)).immediate_response
    assert reply.status.code == status
    assert "error" in orjson.loads(reply.body)
    assert exchange.outcome == kind


@pytest.mark.parametrize(
    ("first", "outcome"),
    [
        (request_headers(metadata=""), "passthrough_disabled"),
        (request_headers(method="GET"), "passthrough_path"),
        (request_headers(path="/v1/embeddings"), "passthrough_path"),
    ],
)
def test_requests_skipped_after_headers(exchange: Exchange, first: pb.ProcessingRequest, outcome: str) -> None:
    reply = exchange.handle(first)
    assert reply.mode_override.request_body_mode == ProcessingMode.NONE
    assert reply.mode_override.response_header_mode == ProcessingMode.SKIP
    assert (exchange.state, exchange.outcome) == (State.PASSING_THROUGH, outcome)


@pytest.mark.parametrize(
    ("request_body", "status", "content_type", "outcome"),
    [
        (orjson.dumps({"model": "m", "stream": True}), "200", "text/event-stream", "passthrough_stream_requested"),
        (CHAT_BODY, "429", "application/json", "passthrough_status"),
        (CHAT_BODY, "200", "application/json", "passthrough_content_type"),
    ],
)
def test_responses_passed_through(
    exchange: Exchange, request_body: bytes, status: str, content_type: str, outcome: str
) -> None:
    exchange.handle(request_headers())
    exchange.handle(body(request_body))
    reply = exchange.handle(response_headers(status, content_type))
    assert reply == pb.ProcessingResponse(response_headers=pb.HeadersResponse())
    assert exchange.outcome == outcome


def test_invalid_route_settings_answer_500_naming_the_key(exchange: Exchange) -> None:
    bad = ENABLED.replace('"enabled"', '"enable"')
    reply = exchange.handle(request_headers(bad)).immediate_response
    assert reply.status.code == 500
    assert "unknown key 'enable'" in orjson.loads(reply.body)["error"]["message"]
    assert exchange.outcome == "settings_error"


def test_finish_counts_once(exchange: Exchange) -> None:
    exchange.finish("aborted")
    exchange.finish("converted")
    assert exchange.outcome == "aborted"


# -- the shipped config: request headers skipped, the route's attributes come with the body ----


def test_converted_without_request_headers(exchange: Exchange) -> None:
    reply = exchange.handle(first_body(CHAT_BODY)).request_body.response
    assert orjson.loads(reply.body_mutation.body)["stream"] is True
    assert set_headers(reply.header_mutation) == {"content-length": str(len(reply.body_mutation.body))}
    assert exchange.handle(response_headers()).mode_override.response_body_mode == ProcessingMode.BUFFERED
    answer = exchange.handle(body(SSE, response=True)).response_body.response.body_mutation.body
    assert orjson.loads(answer)["choices"][0]["message"]["content"] == "Hello"
    assert exchange.outcome == "converted"


@pytest.mark.parametrize(
    ("first", "outcome"),
    [
        (first_body(CHAT_BODY, path="/v1/embeddings"), "passthrough_path"),
        (first_body(CHAT_BODY, metadata=""), "passthrough_disabled"),
        (first_body(orjson.dumps({"model": "m", "stream": True})), "passthrough_stream_requested"),
    ],
)
def test_body_first_requests_left_alone(exchange: Exchange, first: pb.ProcessingRequest, outcome: str) -> None:
    assert exchange.handle(first) == pb.ProcessingResponse(request_body=pb.BodyResponse())
    assert exchange.handle(response_headers()) == pb.ProcessingResponse(response_headers=pb.HeadersResponse())
    assert exchange.outcome == outcome


def test_request_without_body_reaches_the_service_at_response_headers(exchange: Exchange) -> None:
    first = response_headers("200", "application/json")
    attributes = struct_pb2.Struct()
    attributes.update({"xds.route_metadata": ENABLED, "request.path": "/v1/chat/completions", "request.method": "GET"})
    first.attributes["envoy.filters.http.ext_proc"].CopyFrom(attributes)
    assert exchange.handle(first) == pb.ProcessingResponse(response_headers=pb.HeadersResponse())
    assert (exchange.state, exchange.outcome) == (State.PASSING_THROUGH, "passthrough_path")


# --- full-duplex (keep-alive) routes ----------------------------------------------------------

KEEPALIVE = ENABLED.replace("} } } }", '} } fields { key: "keepalive_seconds" value { number_value: 0.5 } } } }')


def full_duplex_request(metadata: str = KEEPALIVE) -> pb.ProcessingRequest:
    first = request_headers(metadata)
    first.protocol_config.response_body_mode = ProcessingMode.FULL_DUPLEX_STREAMED
    return first


def full_duplex_exchange() -> Exchange:
    exchange = Exchange(RouteSettingsCache(RouteSettings()))
    exchange.handle(full_duplex_request())
    exchange.handle(body(CHAT_BODY))
    return exchange


def test_full_duplex_commits_json_headers_and_answers_once_at_the_end() -> None:
    exchange = full_duplex_exchange()
    reply = exchange.handle(response_headers())
    assert reply.response_headers.response.header_mutation.set_headers[0].header.raw_value == b"application/json"
    assert not reply.HasField("mode_override"), "Envoy cannot leave full-duplex mode: no override"
    assert exchange.keepalive is not None
    assert exchange.keepalive.due is None, "no keep-alive before the upstream body started"

    half = len(SSE) // 2
    assert exchange.handle(body(SSE[:half], end_of_stream=False, response=True)) is None
    assert exchange.keepalive.due is not None
    exchange.keepalive.chunk()
    final = exchange.handle(body(SSE[half:], response=True))
    streamed = final.response_body.response.body_mutation.streamed_response
    assert streamed.end_of_stream
    assert orjson.loads(streamed.body)["choices"][0]["message"]["content"] == "Hello"
    assert exchange.outcome == "converted_keepalive"
    assert exchange.keepalive.due is None


def test_full_duplex_failure_is_an_error_answer_that_envoy_turns_into_a_reset_after_commit() -> None:
    exchange = full_duplex_exchange()
    exchange.handle(response_headers())
    reply = exchange.handle(body(b"data: {not json\n\n", response=True))
    assert reply.immediate_response.status.code == 502
    assert exchange.outcome == "malformed"


def test_full_duplex_pass_through_echoes_every_chunk() -> None:
    exchange = full_duplex_exchange()
    exchange.handle(response_headers(status="429", content_type="application/json"))
    reply = exchange.handle(body(b'{"error": {}}', response=True))
    echoed = reply.response_body.response.body_mutation.streamed_response
    assert (echoed.body, echoed.end_of_stream) == (b'{"error": {}}', True)
    assert exchange.keepalive is None, "no keep-alive for an answer passed through"


def test_keepalive_without_full_duplex_converts_as_usual() -> None:
    exchange = Exchange(RouteSettingsCache(RouteSettings()))
    exchange.handle(request_headers(KEEPALIVE))
    exchange.handle(body(CHAT_BODY))
    reply = exchange.handle(response_headers())
    assert reply.mode_override.response_body_mode == ProcessingMode.BUFFERED
    assert exchange.keepalive is None
