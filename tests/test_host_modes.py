"""The adapter where a host, not our config, decides: settings from ``metadata_context``, body
modes fixed by the host, mode overrides ignored. ``Exchange`` driven with real protobuf messages;
``tests/test_e2e_hosts.py`` runs the same through real Envoy.
"""

from __future__ import annotations

import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from buffered_stream.adapter.service import Exchange, RouteSettingsCache
from buffered_stream.settings import RouteSettings, ServiceSettings, SettingsError, load_service_settings
from test_service import CHAT_BODY, ENABLED, SSE, body, headers, response_headers

Mode = ProcessingMode
HOST_NS = "com.example.extension"


def dynamic(**namespaces: dict) -> base_pb2.Metadata:
    metadata = base_pb2.Metadata()
    for namespace, values in namespaces.items():
        struct = struct_pb2.Struct()
        struct.update(values)
        metadata.filter_metadata[namespace.replace("_DOT_", ".")].CopyFrom(struct)
    return metadata


def first_headers(
    *,
    route_metadata: str = "",
    metadata: base_pb2.Metadata | None = None,
    request_body: int = Mode.BUFFERED,
    response_body: int = Mode.NONE,
) -> pb.ProcessingRequest:
    attributes = struct_pb2.Struct()
    attributes.update({"xds.route_metadata": route_metadata, "xds.route_name": "chat"})
    message = pb.ProcessingRequest(
        request_headers=headers(
            (":method", "POST"), (":path", "/v1/chat/completions"), ("content-type", "application/json")
        ),
        attributes={"envoy.filters.http.ext_proc": attributes},
        protocol_config=pb.ProtocolConfiguration(request_body_mode=request_body, response_body_mode=response_body),
    )
    if metadata is not None:
        message.metadata_context.CopyFrom(metadata)
    return message


def exchange(namespaces: tuple[str, ...] = ("buffered_stream", HOST_NS)) -> Exchange:
    return Exchange(RouteSettingsCache(RouteSettings(), namespaces=namespaces))


# --- settings from metadata_context -------------------------------------------------------------


def test_dynamic_metadata_enables_a_route_without_route_metadata() -> None:
    ex = exchange()
    ex.handle(first_headers(metadata=dynamic(com_DOT_example_DOT_extension={"enabled": True, "mode": "streamed"})))
    assert ex.route == RouteSettings(enabled=True, mode="streamed")


def test_precedence_defaults_then_route_metadata_then_namespaces_in_order() -> None:
    cache = RouteSettingsCache(RouteSettings(max_event_bytes=1000), namespaces=("buffered_stream", HOST_NS))
    ex = Exchange(cache)
    ex.handle(
        first_headers(
            route_metadata=ENABLED,  # enabled: true
            metadata=dynamic(
                buffered_stream={"mode": "streamed", "keepalive_seconds": 5},
                com_DOT_example_DOT_extension={"keepalive_seconds": 2},
            ),
        )
    )
    assert ex.route == RouteSettings(enabled=True, mode="streamed", keepalive_seconds=2.0, max_event_bytes=1000)


def test_namespaces_not_listed_are_ignored() -> None:
    ex = exchange(namespaces=("buffered_stream",))
    ex.handle(first_headers(metadata=dynamic(com_DOT_example_DOT_extension={"enabled": True})))
    assert ex.route == RouteSettings() and ex.outcome == "passthrough_disabled"


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"enabled": "yes"}, "enabled must be true or false"),
        ({"mdoe": "streamed"}, "unknown key 'mdoe'"),
        ({"keepalive_seconds": -1}, "keepalive_seconds"),
    ],
)
def test_a_bad_dynamic_value_is_a_500_naming_the_key_and_the_namespace(values: dict, named: str) -> None:
    ex = exchange()
    reply = ex.handle(first_headers(metadata=dynamic(com_DOT_example_DOT_extension=values)))
    assert reply.immediate_response.status.code == 500
    message = orjson.loads(reply.immediate_response.body)["error"]["message"]
    assert named in message and HOST_NS in message
    assert ex.outcome == "settings_error"


def test_service_settings_file_lists_the_namespaces(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "s.yaml"
    path.write_text(f"metadata_namespaces: [buffered_stream, {HOST_NS}]\n")
    assert load_service_settings(str(path)).metadata_namespaces == ("buffered_stream", HOST_NS)
    assert ServiceSettings().metadata_namespaces == ("buffered_stream",)
    path.write_text("metadata_namespaces: [1]\n")
    with pytest.raises(SettingsError, match="metadata_namespaces"):
        load_service_settings(str(path))


# --- body modes a host fixes --------------------------------------------------------------------


ENABLED_HERE = {"buffered_stream": {"enabled": True}}


@pytest.mark.parametrize("mode", [Mode.STREAMED, Mode.FULL_DUPLEX_STREAMED])
def test_a_request_body_in_chunks_is_held_then_rewritten(mode: int) -> None:
    ex = exchange()
    reply = ex.handle(first_headers(metadata=dynamic(**ENABLED_HERE), request_body=mode, response_body=mode))
    assert list(reply.request_headers.response.header_mutation.remove_headers) == ["content-length", "accept-encoding"]
    held = [
        ex.handle(body(CHAT_BODY[:10], end_of_stream=False)),
        ex.handle(body(CHAT_BODY[10:20], end_of_stream=False)),
    ]
    if mode == Mode.STREAMED:
        assert all(r.request_body.response.body_mutation.clear_body for r in held)
    else:
        assert held == [None, None]  # full duplex: nothing to say until the body is whole
    last = ex.handle(body(CHAT_BODY[20:], end_of_stream=True)).request_body.response.body_mutation
    sent = last.streamed_response.body if mode == Mode.FULL_DUPLEX_STREAMED else last.body
    assert orjson.loads(sent)["stream"] is True
    assert sent.startswith(CHAT_BODY[:-1]), "the client's bytes, then the added members"
    if mode == Mode.FULL_DUPLEX_STREAMED:
        assert last.streamed_response.end_of_stream


@pytest.mark.parametrize("mode", [Mode.STREAMED, Mode.FULL_DUPLEX_STREAMED])
def test_a_request_body_over_the_limit_goes_on_as_it_came(mode: int) -> None:
    ex = exchange()
    ex.handle(
        first_headers(
            metadata=dynamic(buffered_stream={"enabled": True, "max_request_bytes": 15}),
            request_body=mode,
            response_body=mode,
        )
    )
    ex.handle(body(CHAT_BODY[:10], end_of_stream=False))
    reply = ex.handle(body(CHAT_BODY[10:20], end_of_stream=False))
    mutation = reply.request_body.response.body_mutation
    assert (mutation.streamed_response.body if mode == Mode.FULL_DUPLEX_STREAMED else mutation.body) == CHAT_BODY[:20]
    assert ex.outcome == "passthrough_request_too_large"
    rest = ex.handle(body(CHAT_BODY[20:], end_of_stream=True))
    if mode == Mode.STREAMED:
        assert rest == pb.ProcessingResponse(request_body=pb.BodyResponse())
    else:
        assert rest.request_body.response.body_mutation.streamed_response.body == CHAT_BODY[20:]


def test_host_fixed_streamed_response_converts_without_a_mode_override() -> None:
    ex = exchange()
    ex.handle(first_headers(metadata=dynamic(**ENABLED_HERE), request_body=Mode.STREAMED, response_body=Mode.STREAMED))
    ex.handle(body(CHAT_BODY, end_of_stream=True))
    reply = ex.handle(response_headers())
    assert not reply.HasField("mode_override")
    assert ex.handle(
        body(SSE[:120], end_of_stream=False, response=True)
    ).response_body.response.body_mutation.clear_body
    answer = ex.handle(body(SSE[120:], end_of_stream=True, response=True)).response_body.response
    assert orjson.loads(answer.body_mutation.body)["choices"][0]["message"]["content"] == "Hello"
    assert not answer.header_mutation.set_headers, "the headers already left: no content-length"


def test_host_fixed_buffered_response_sets_the_length_with_the_answer() -> None:
    ex = exchange()
    ex.handle(first_headers(metadata=dynamic(**ENABLED_HERE), response_body=Mode.BUFFERED))
    ex.handle(body(CHAT_BODY, end_of_stream=True))
    assert not ex.handle(response_headers()).HasField("mode_override")
    answer = ex.handle(body(SSE, end_of_stream=True, response=True)).response_body.response
    assert answer.header_mutation.set_headers[0].header.key == "content-length"


@pytest.mark.parametrize("mode", [Mode.STREAMED, Mode.FULL_DUPLEX_STREAMED])
def test_a_passed_through_request_leaves_every_later_message_unchanged(mode: int) -> None:
    """The override that would skip them is ignored where the host fixes its modes."""
    ex = exchange()
    ex.handle(first_headers(metadata=dynamic(**ENABLED_HERE), request_body=mode, response_body=mode))
    stream_true = orjson.dumps({"model": "m", "messages": [], "stream": True})
    ex.handle(body(stream_true, end_of_stream=True))
    assert ex.handle(response_headers()) == pb.ProcessingResponse(response_headers=pb.HeadersResponse())
    chunk = ex.handle(body(b"data: {}\n\n", end_of_stream=False, response=True))
    if mode == Mode.STREAMED:
        assert chunk == pb.ProcessingResponse(response_body=pb.BodyResponse())
    else:
        assert chunk.response_body.response.body_mutation.streamed_response.body == b"data: {}\n\n"
    assert ex.outcome == "passthrough_stream_requested"
