"""``upstream_stream_interval``: the route setting, the rewrite that sends it (only where configured,
only to servers whose profile proves they honour it), and the first-token mark the adapter times.

Which servers honour a per-request ``stream_interval`` was read from their sources (see
``schemas.openai_conventions.STREAM_INTERVAL``): vLLM's chat and legacy completions from 0.27.0 on.
"""

from __future__ import annotations

import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from buffered_stream.adapter.service import Exchange, RouteSettingsCache
from buffered_stream.apis import APIS, PROFILE_NAMES, STREAM_INTERVAL_PROFILES, api_named, plan_request
from buffered_stream.core.convert import StreamConverter
from buffered_stream.core.json_edit import scan_object
from buffered_stream.core.request import Rewrite
from buffered_stream.settings import (
    MAX_UPSTREAM_STREAM_INTERVAL,
    RouteSettings,
    SettingsError,
    route_settings_from_metadata,
)
from support.apis import api_of
from support.vllm_stream import batches, vllm_chat

BODIES = {
    "chat": b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 123456789012345678901234567890}',
    "completions": b'{"model":"m","prompt":"Say","max_tokens":5,"stream":false}',
    "responses": b'{"model": "m", "input": "hi"}',
    "messages": b'{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}',
}


# -- the setting ---------------------------------------------------------------------------------


def test_off_by_default() -> None:
    assert RouteSettings().upstream_stream_interval == 0


@pytest.mark.parametrize("profile", STREAM_INTERVAL_PROFILES)
@pytest.mark.parametrize("interval", [1, 8, 32, MAX_UPSTREAM_STREAM_INTERVAL])
def test_accepted_with_a_profile_that_honours_it(profile: str, interval: int) -> None:
    metadata = {"buffered_stream": {"enabled": True, "profile": profile, "upstream_stream_interval": interval}}
    assert route_settings_from_metadata(metadata).upstream_stream_interval == interval


def test_struct_numbers_and_annotation_strings() -> None:
    """Route metadata numbers arrive as floats; Envoy Gateway annotations as strings."""
    assert (
        route_settings_from_metadata(
            {"buffered_stream": {"profile": "vllm", "upstream_stream_interval": 8.0}}
        ).upstream_stream_interval
        == 8
    )
    annotations = {
        "gateway.envoyproxy.io/buffered-stream.profile": "vllm",
        "gateway.envoyproxy.io/buffered-stream.upstream_stream_interval": "16",
    }
    gateway = {"envoy-gateway": {"resources": [{"annotations": annotations}]}}
    assert route_settings_from_metadata(gateway).upstream_stream_interval == 16


@pytest.mark.parametrize(
    "value, message",
    [
        (-1, "must be 0 (off) or a number of tokens from 1 to 65536"),
        (MAX_UPSTREAM_STREAM_INTERVAL + 1, "must be 0 (off) or a number of tokens from 1 to 65536"),
        (8.5, "must be a whole number"),
        (True, "must be a whole number"),
        ("8", "must be a whole number"),
    ],
)
def test_bad_values_are_errors_naming_the_key(value: object, message: str) -> None:
    with pytest.raises(SettingsError, match="upstream_stream_interval") as caught:
        route_settings_from_metadata({"buffered_stream": {"profile": "vllm", "upstream_stream_interval": value}})
    assert message in str(caught.value)


@pytest.mark.parametrize("profile", [p for p in PROFILE_NAMES if p not in STREAM_INTERVAL_PROFILES])
def test_a_profile_that_does_not_prove_the_server_is_an_error(profile: str) -> None:
    """``auto`` cannot know the server before its stream; a named server that ignores or rejects
    the field would make the setting a silent no-op (or a 400): both are refused up front."""
    with pytest.raises(SettingsError, match="sent only to servers known to honour it"):
        route_settings_from_metadata({"buffered_stream": {"profile": profile, "upstream_stream_interval": 8}})
    assert route_settings_from_metadata({"buffered_stream": {"profile": profile, "upstream_stream_interval": 0}})


def test_the_profiles_are_the_vllm_lines_with_a_release_that_honours_it() -> None:
    assert STREAM_INTERVAL_PROFILES == ("vllm", "vllm-0.28", "vllm-0.26")
    by_api = {spec.name: spec.stream_interval_profiles for spec in APIS}
    assert by_api["chat"] == by_api["completions"] == frozenset(STREAM_INTERVAL_PROFILES)
    assert not by_api["responses"] and not by_api["messages"]  # vLLM never reads it there


# -- the rewrite ---------------------------------------------------------------------------------


@pytest.mark.parametrize("schema", sorted(BODIES))
@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_added_only_where_configured_and_only_for_profiles_that_honour_it(schema: str, profile: str) -> None:
    body = BODIES[schema]
    plain = plan_request(schema, body, profile=profile)
    assert isinstance(plain, Rewrite) and b"stream_interval" not in plain.body
    assert plan_request(schema, body, profile=profile, stream_interval=0) == plain
    asked = plan_request(schema, body, profile=profile, stream_interval=8)
    assert isinstance(asked, Rewrite)
    if profile in api_named(schema).stream_interval_profiles:
        # The no-interval rewrite, byte for byte, with one member appended.
        assert asked.body == plain.body[:-1] + b',"stream_interval":8}'
        assert orjson.loads(asked.body)["stream_interval"] == 8
        assert (asked.schema, asked.model, asked.hints) == (plain.schema, plain.model, plain.hints)
    else:
        assert asked == plain


def test_the_clients_own_member_is_replaced_in_place_and_its_duplicates_dropped() -> None:
    body = b'{ "stream_interval" : 2,\n "model": "m", "messages": [], "stream_interval": 3 }'
    plan = plan_request("chat", body, profile="vllm", stream_interval=32)
    assert isinstance(plan, Rewrite)
    assert (
        plan.body
        == b'{ "stream_interval" : 32,\n "model": "m", "messages": [],"stream":true,"stream_options":{"include_usage":true} }'
    )
    assert [m.key for m in scan_object(plan.body).members].count("stream_interval") == 1


def test_without_the_setting_a_clients_member_goes_upstream_untouched() -> None:
    body = b'{"model": "m", "messages": [], "stream_interval": 4}'
    plan = plan_request("chat", body, profile="vllm")
    assert isinstance(plan, Rewrite) and b'"stream_interval": 4' in plan.body


def test_the_member_counts_against_max_request_bytes() -> None:
    body = BODIES["chat"]
    asked = plan_request("chat", body, profile="vllm", stream_interval=8)
    assert isinstance(
        plan_request("chat", body, max_request_bytes=len(asked.body), profile="vllm", stream_interval=8), Rewrite
    )
    assert (
        plan_request("chat", body, max_request_bytes=len(asked.body) - 1, profile="vllm", stream_interval=8).reason
        == "request_too_large"
    )


# -- the adapter sends it --------------------------------------------------------------------------


def _metadata(**settings: object) -> str:
    fields = "".join(
        f'fields {{ key: "{key}" value {{ {"bool_value" if isinstance(value, bool) else "number_value" if isinstance(value, (int, float)) else "string_value"}: '
        f"{str(value).lower() if isinstance(value, bool) else orjson.dumps(value).decode()} }} }} "
        for key, value in settings.items()
    )
    return f'filter_metadata {{ key: "buffered_stream" value {{ {fields}}} }}'


def _first_body(data: bytes, metadata: str, body_mode: int = ProcessingMode.NONE) -> pb.ProcessingRequest:
    attributes = struct_pb2.Struct()
    attributes.update(
        {
            "xds.route_metadata": metadata,
            "xds.route_name": "chat",
            "request.path": "/v1/chat/completions",
            "request.method": "POST",
        }
    )
    return pb.ProcessingRequest(
        request_body=pb.HttpBody(body=data, end_of_stream=True),
        attributes={"envoy.filters.http.ext_proc": attributes},
        protocol_config=pb.ProtocolConfiguration(response_body_mode=body_mode),
    )


@pytest.mark.parametrize("profile", ["vllm", "vllm-0.26"])
def test_the_adapter_writes_the_routes_interval(profile: str) -> None:
    exchange = Exchange(RouteSettingsCache(RouteSettings()))
    reply = exchange.handle(
        _first_body(BODIES["chat"], _metadata(enabled=True, profile=profile, upstream_stream_interval=16))
    )
    upstream = orjson.loads(reply.request_body.response.body_mutation.body)
    assert upstream["stream"] is True and upstream["stream_interval"] == 16


def test_the_adapter_leaves_it_out_when_unset() -> None:
    exchange = Exchange(RouteSettingsCache(RouteSettings()))
    reply = exchange.handle(_first_body(BODIES["chat"], _metadata(enabled=True, profile="vllm")))
    assert "stream_interval" not in orjson.loads(reply.request_body.response.body_mutation.body)


# -- the first-token mark ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schema, preamble, output",
    [
        (
            "chat",
            [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}],
            {"choices": [{"index": 0, "delta": {"content": "Hi"}}]},
        ),
        (
            "chat",
            [{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}],
            {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f"}}]}}]},
        ),
        ("chat", [], {"choices": [{"index": 0, "delta": {"reasoning": "so"}}]}),
        ("completions", [{"choices": [{"index": 0, "text": ""}]}], {"choices": [{"index": 0, "text": "Hi"}]}),
        (
            "messages",
            [
                {
                    "type": "message_start",
                    "message": {
                        "id": "m",
                        "type": "message",
                        "role": "assistant",
                        "content": [],
                        "model": "m",
                        "usage": {"input_tokens": 1, "output_tokens": 0},
                    },
                },
                {"type": "ping"},
            ],
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        (
            "responses",
            [
                {
                    "type": "response.created",
                    "sequence_number": 0,
                    "response": {"id": "r", "object": "response", "status": "in_progress", "output": []},
                }
            ],
            {
                "type": "response.output_item.added",
                "sequence_number": 1,
                "output_index": 0,
                "item": {"id": "i", "type": "message", "role": "assistant", "status": "in_progress", "content": []},
            },
        ),
    ],
)
def test_output_started_is_false_through_the_preamble_and_true_at_the_first_output(
    schema: str, preamble: list[dict], output: dict
) -> None:
    converter = StreamConverter(api_of(schema))
    assert not converter.output_started
    for event in preamble:
        converter.feed(b"data: " + orjson.dumps(event) + b"\n\n")
        assert not converter.output_started
    converter.feed(b"data: " + orjson.dumps(output) + b"\n\n")
    assert converter.output_started


def _response(*chunks: bytes, metadata: str, body_mode: int) -> pb.ProcessingResponse:
    exchange = Exchange(RouteSettingsCache(RouteSettings()))
    exchange.handle(_first_body(BODIES["chat"], metadata, body_mode))
    exchange.handle(
        pb.ProcessingRequest(
            response_headers=pb.HttpHeaders(
                headers=base_pb2.HeaderMap(
                    headers=[
                        base_pb2.HeaderValue(key=":status", raw_value=b"200"),
                        base_pb2.HeaderValue(key="content-type", raw_value=b"text/event-stream"),
                    ]
                )
            )
        )
    )
    replies = [
        exchange.handle(pb.ProcessingRequest(response_body=pb.HttpBody(body=c, end_of_stream=i == len(chunks) - 1)))
        for i, c in enumerate(chunks)
    ]
    assert exchange.outcome == "converted"
    return next(r for r in replies if r is not None and r.HasField("dynamic_metadata"))


SSE_CHUNKS = [b"data: " + orjson.dumps(c) + b"\n\n" for c in vllm_chat([" a"] * 20, 8, model="m")[0]] + [
    b"data: [DONE]\n\n"
]


@pytest.mark.parametrize(
    "settings, body_mode",
    [({"mode": "streamed"}, ProcessingMode.NONE), ({"keepalive_seconds": 5}, ProcessingMode.FULL_DUPLEX_STREAMED)],
)
def test_streamed_and_keepalive_answers_carry_the_timing(settings: dict, body_mode: int) -> None:
    reply = _response(*SSE_CHUNKS, metadata=_metadata(enabled=True, **settings), body_mode=body_mode)
    fields = reply.dynamic_metadata.fields["buffered_stream"].struct_value.fields
    assert fields["first_token_seconds"].number_value >= 0
    generation = fields["generation_seconds"].number_value
    assert generation > 0
    assert fields["tokens_per_second"].number_value == pytest.approx(20 / generation, rel=0.05)  # both rounded to 1 us


def test_a_buffered_body_has_no_first_chunk_to_time() -> None:
    reply = _response(b"".join(SSE_CHUNKS), metadata=_metadata(enabled=True), body_mode=ProcessingMode.NONE)
    fields = reply.dynamic_metadata.fields["buffered_stream"].struct_value.fields
    assert fields["outcome"].string_value == "converted" and fields["total_tokens"].number_value == 29
    assert not {"first_token_seconds", "generation_seconds", "tokens_per_second"} & set(fields)


def test_batches_follow_vllm() -> None:
    """``output_processor.py``: the first token alone, then every ``stream_interval`` unsent tokens,
    the rest with the finish."""
    assert batches(10, 4) == [1, 4, 4, 1]
    assert batches(9, 4) == [1, 4, 4]
    assert batches(5, 1) == [1, 1, 1, 1, 1]
    assert batches(1, 8) == [1]
    chunks, native = vllm_chat(["a", "b", "c"], 2, model="m")
    assert [c["choices"][0]["delta"] for c in chunks[1:-1]] == [{"content": "a"}, {"content": "bc"}]
    assert native["choices"][0]["message"]["content"] == "abc"


# -- the per-route histograms ----------------------------------------------------------------------


@pytest.fixture
def timing_metrics():
    from buffered_stream.adapter import metrics

    yield metrics
    metrics.configure()  # back to the defaults: 64 routes, no model label


def _timing_samples(metrics) -> dict[tuple[str, tuple], float]:
    """What the timing families expose: (sample name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in metrics.TIMING
        for sample in family.metric().samples
    }


def test_route_labels_are_capped_and_the_rest_is_other(timing_metrics) -> None:
    timing_metrics.configure(max_routes=2)
    for route in ("a", "b", "c", "d", "a"):
        timing_metrics.observe_generation(route, "some-model", 0.5, 1.0, 40.0)
    counts = {
        dict(k[1])["route"]: v
        for k, v in _timing_samples(timing_metrics).items()
        if k[0] == "buffered_stream_first_token_seconds_count"
    }
    assert counts == {"a": 2, "b": 1, "other": 2}
    assert all("model" not in dict(labels) for _, labels in _timing_samples(timing_metrics))


def test_a_model_label_only_when_asked_for_and_capped(timing_metrics) -> None:
    timing_metrics.configure(max_routes=8, model_label=True, max_models=1)
    timing_metrics.observe_generation("chat", "llama", 0.5, None, None)
    timing_metrics.observe_generation("chat", "qwen", 0.25, 2.0, 10.0)
    samples = _timing_samples(timing_metrics)
    first = {
        tuple(sorted(dict(k[1]).items())): v
        for k, v in samples.items()
        if k[0] == "buffered_stream_first_token_seconds_count"
    }
    assert first == {(("model", "llama"), ("route", "chat")): 1, (("model", "other"), ("route", "chat")): 1}
    generation = [k for k in samples if k[0] == "buffered_stream_generation_seconds_count"]
    assert generation == [("buffered_stream_generation_seconds_count", (("model", "other"), ("route", "chat")))]


def test_the_service_settings_that_shape_the_labels_are_validated() -> None:
    from buffered_stream.settings import ServiceSettings

    assert ServiceSettings().metrics_max_routes == 64 and ServiceSettings().metrics_model_label is False
    for bad in ({"metrics_max_routes": 0}, {"metrics_max_models": True}, {"metrics_model_label": "yes"}):
        with pytest.raises(SettingsError, match=next(iter(bad))):
            ServiceSettings(**bad)
