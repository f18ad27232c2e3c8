"""The pipeline: [DONE], upstream error shapes, completeness and limits, independent of a schema."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from buffered_stream.core.convert import StreamConverter
from buffered_stream.core.errors import LIMIT, MALFORMED, TRUNCATED, UPSTREAM_ERROR, ConversionError
from support.apis import api_of


class RecordingAssembler:
    """Just enough of an assembler: remembers chunks and each choice's last finish reason."""

    def __init__(self) -> None:
        self.chunks: list[dict[str, Any]] = []
        self.finish_reasons: dict[Any, Any] = {}

    def add(self, chunk: dict[str, Any]) -> None:
        self.chunks.append(chunk)
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict):
                reason = choice.get("finish_reason")
                key = repr(choice.get("index", 0))  # any JSON value, even an unhashable one
                if reason or key not in self.finish_reasons:
                    self.finish_reasons[key] = reason

    def text_target(self, chunk: dict[str, Any]) -> None:
        return None  # every chunk is parsed and recorded

    @property
    def finished(self) -> bool:
        return bool(self.finish_reasons) and all(self.finish_reasons.values())

    @property
    def usage(self) -> dict[str, Any] | None:
        return next((c["usage"] for c in reversed(self.chunks) if c.get("usage")), None)

    def result(self) -> dict[str, Any]:
        return {"choices": [{"index": i, "finish_reason": r} for i, r in self.finish_reasons.items()]}


def converter(**limits: int) -> StreamConverter:
    return StreamConverter(api_of("chat"), assembler=RecordingAssembler(), **limits)


def sse(*payloads: Any) -> bytes:
    return b"".join(b"data: " + (p if isinstance(p, bytes) else orjson.dumps(p)) + b"\n\n" for p in payloads)


def delta(text: str, index: int = 0) -> dict[str, Any]:
    return {"choices": [{"index": index, "delta": {"content": text}, "finish_reason": None}]}


def finish(index: int = 0) -> dict[str, Any]:
    return {"choices": [{"index": index, "delta": {}, "finish_reason": "stop"}]}


USAGE = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
COMPLETE = sse(delta("Hel"), delta("lo"), finish(), USAGE, b"[DONE]")


def convert(body: bytes, **limits: int) -> bytes:
    conv = converter(**limits)
    conv.feed(body)
    return conv.finish()


def conversion_error(body: bytes, **limits: int) -> ConversionError:
    with pytest.raises(ConversionError) as info:
        convert(body, **limits)
    return info.value


def test_complete_stream_gives_the_assembled_answer() -> None:
    conv = converter()
    conv.feed(COMPLETE)
    assert conv.done
    assert conv.events == 5
    assert conv.usage == USAGE["usage"]
    assert orjson.loads(conv.finish()) == {"choices": [{"index": "0", "finish_reason": "stop"}]}


def test_chunking_does_not_matter() -> None:
    expected = convert(COMPLETE)
    for size in (1, 3, 17, 256):
        conv = converter()
        for i in range(0, len(COMPLETE), size):
            conv.feed(COMPLETE[i : i + size])
        assert conv.finish() == expected


def test_large_whole_body_gives_the_same_answer_as_small_pieces() -> None:
    body = sse(*(delta(f"token {i} ") for i in range(3000)), finish(), b"[DONE]")
    assert len(body) > 100_000
    whole = converter()
    whole.feed(body + b"data: {not json\n\n" * 5000)  # ignored: after [DONE]
    pieces = converter()
    for i in range(0, len(body), 1000):
        pieces.feed(body[i : i + 1000])
    assert whole.events == pieces.events == 3002
    assert whole.finish() == pieces.finish()


def test_everything_after_done_is_ignored() -> None:
    conv = converter(max_body_bytes=len(COMPLETE) + 100)
    conv.feed(COMPLETE + b"data: {not json\n\n")
    conv.feed(b"x" * 1000)
    assert conv.events == 5
    assert orjson.loads(conv.finish())["choices"][0]["finish_reason"] == "stop"


def test_done_without_blank_line_is_flushed_at_end_of_body() -> None:
    conv = converter()
    conv.feed(sse(delta("a"), finish()) + b"data: [DONE]")
    assert not conv.done
    conv.finish()
    assert conv.done


def test_end_of_body_without_done_after_every_choice_finished_is_fine() -> None:
    assert orjson.loads(convert(sse(delta("a"), finish(), USAGE)))["choices"]


def test_end_of_body_before_the_finish_is_truncation() -> None:
    error = conversion_error(sse(delta("a"), delta("b")))
    assert (error.kind, error.status) == (TRUNCATED, 502)
    assert error.message == "upstream stream ended before the answer was complete"


def test_end_of_body_with_one_of_two_choices_unfinished_is_truncation() -> None:
    assert conversion_error(sse(delta("a", 0), delta("b", 1), finish(1))).kind == TRUNCATED


def test_done_without_any_choice_is_truncation() -> None:
    assert conversion_error(sse(USAGE, b"[DONE]")).kind == TRUNCATED
    assert conversion_error(b"data: [DONE]\n\n").kind == TRUNCATED
    assert conversion_error(b"").kind == TRUNCATED


def test_done_after_an_unfinished_choice_keeps_what_the_server_sent() -> None:
    assert orjson.loads(convert(sse(delta("a"), b"[DONE]"))) == {"choices": [{"index": "0", "finish_reason": None}]}


def test_empty_data_is_a_keep_alive() -> None:
    conv = converter()
    conv.feed(b"data:\n\ndata:  \n\n" + COMPLETE)
    assert conv.events == 7
    conv.finish()


# Upstream errors: every shape is fatal, keeps the upstream object and maps the status.


def test_error_object_mid_stream_maps_its_code() -> None:
    upstream = {"message": "bad request", "type": "BadRequestError", "param": None, "code": 400}
    error = conversion_error(sse(delta("a"), {"error": upstream}, finish()))
    assert (error.kind, error.status, error.upstream_error) == (UPSTREAM_ERROR, 400, upstream)
    assert orjson.loads(error.body()) == {"error": upstream}
    assert "bad request" in error.message


def test_http_status_code_field_maps_the_status() -> None:
    upstream = {"message": "Input validation error", "http_status_code": 422}
    assert conversion_error(sse({"error": upstream})).status == 422


@pytest.mark.parametrize(
    "code,status",
    [("429", 429), (503, 503), ("invalid_api_key", 502), (200, 502), (700, 502), (None, 502), (True, 502)],
)
def test_only_http_error_codes_become_the_status(code: Any, status: int) -> None:
    assert conversion_error(sse({"error": {"message": "x", "code": code}})).status == status


def test_top_level_code_is_used_when_the_error_object_has_none() -> None:
    assert conversion_error(sse({"error": "overloaded", "code": 503})).status == 503


def test_vllm_flat_error() -> None:
    flat = {"object": "error", "message": "too long", "type": "BadRequestError", "param": None, "code": 400}
    error = conversion_error(sse(delta("a"), flat))
    assert error.status == 400
    assert error.upstream_error == {"message": "too long", "type": "BadRequestError", "param": None, "code": 400}


def test_tgi_string_error_keeps_its_error_type() -> None:
    error = conversion_error(sse({"error": "Input validation error", "error_type": "validation"}))
    assert (error.kind, error.status) == (UPSTREAM_ERROR, 502)
    assert error.upstream_error == {
        "message": "Input validation error",
        "type": "validation",
        "param": None,
        "code": None,
    }


def test_llama_cpp_error_field_line() -> None:
    body = sse(delta("a")) + b'error: {"code":500,"message":"slot unavailable","type":"server_error"}\n\n'
    error = conversion_error(body)
    assert (error.kind, error.status) == (UPSTREAM_ERROR, 500)
    assert error.upstream_error == {"code": 500, "message": "slot unavailable", "type": "server_error"}


def test_event_error_with_anthropic_shape() -> None:
    body = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    error = conversion_error(body)
    assert error.kind == UPSTREAM_ERROR
    assert error.upstream_error == {"type": "overloaded_error", "message": "Overloaded"}


def test_event_error_with_text_data() -> None:
    error = conversion_error(b"event: error\ndata: worker died\n\n")
    assert error.upstream_error == {"message": "worker died", "type": "upstream_error", "param": None, "code": None}


@pytest.mark.parametrize(
    "line,upstream",
    [
        (
            b'{"error":"model runner crashed"}',
            {"message": "model runner crashed", "type": "upstream_error", "param": None, "code": None},
        ),
        (
            b'{"error":{"message":"boom","type":"api_error","param":null,"code":null}}',
            {"message": "boom", "type": "api_error", "param": None, "code": None},
        ),
    ],
)
def test_ollama_plain_json_error_line(line: bytes, upstream: dict[str, Any]) -> None:
    error = conversion_error(sse(delta("a")) + line + b"\n")
    assert (error.kind, error.status, error.upstream_error) == (UPSTREAM_ERROR, 502, upstream)


def test_plain_json_line_that_is_no_error_is_malformed() -> None:
    assert conversion_error(sse(delta("a")) + b'{"choices":[]}\n').kind == MALFORMED


def test_error_message_is_capped() -> None:
    error = conversion_error(sse({"error": {"message": "m" * 10_000}}))
    assert len(error.message) < 200
    assert len(error.upstream_error["message"]) == 10_000


# Malformed input and limits.


@pytest.mark.parametrize(
    "payload",
    [b'{"choices": [{"delta": {"content": "secret answer', b"\xff\xfe", b'{"c": "\xed\xa0\x80"}', b"[DONE"],
    ids=["truncated json", "not utf-8", "surrogate", "almost done"],
)
def test_invalid_json_is_malformed_without_quoting_it(payload: bytes) -> None:
    error = conversion_error(sse(delta("a")) + b"data: " + payload + b"\n\n")
    assert (error.kind, error.status) == (MALFORMED, 502)
    assert "#2" in error.message
    assert f"of {len(payload)})" in error.message
    assert "secret" not in error.message


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"text"', b"3", b"null"])
def test_json_that_is_not_an_object_is_malformed(payload: bytes) -> None:
    error = conversion_error(b"data: " + payload + b"\n\n")
    assert error.kind == MALFORMED
    assert "not an object" in error.message


def test_body_larger_than_the_limit() -> None:
    conv = converter(max_body_bytes=len(COMPLETE) - 1)
    conv.feed(COMPLETE[:10])
    with pytest.raises(ConversionError) as info:
        conv.feed(COMPLETE[10:])
    error = info.value
    assert (error.kind, error.status, error.code) == (LIMIT, 502, "response_too_large")
    assert orjson.loads(error.body())["error"]["code"] == "response_too_large"
    assert f"max_body_bytes={len(COMPLETE) - 1}" in error.message


def test_event_larger_than_the_limit() -> None:
    error = conversion_error(sse(delta("x" * 200)), max_event_bytes=100)
    assert error.kind == LIMIT
    assert "max_event_bytes=100" in error.message


# Whatever the bytes, the outcome is an answer or a ConversionError.

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2) | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=2)
        | st.dictionaries(st.sampled_from(["index", "text", "content", "id"]), inner, max_size=2)
    ),
    max_leaves=4,
)
_choice = st.fixed_dictionaries(
    {"index": st.integers(0, 2), "finish_reason": st.sampled_from([None, "stop", ""])},
    optional={
        "delta": st.fixed_dictionaries({}, optional={"content": _json, "role": _json, "tool_calls": _json}),
        "text": _json,
        "logprobs": _json,
    },
)
_chunk = st.fixed_dictionaries(
    {"choices": st.lists(_choice, max_size=2)}, optional={"usage": _json, "id": _json, "model": _json}
)
_odd_payloads = st.one_of(
    st.sampled_from([b"[DONE]", b'{"error":"x"}', b'{"object":"error","code":"418"}', b"{", b"[]", b""]),
    st.binary(max_size=30),
)
_odd_event = st.one_of(
    _odd_payloads.map(lambda p: b"data: " + p + b"\n\n"),
    _odd_payloads.map(lambda p: b"event: error\ndata: " + p + b"\n\n"),
    _odd_payloads.map(lambda p: b"error: " + p + b"\n\n"),
    _odd_payloads.map(lambda p: p + b"\n"),
    st.binary(max_size=40),
)


@st.composite
def upstream_body(draw: st.DrawFn) -> bytes:
    """Mostly well-formed chunks, sometimes one odd event somewhere, maybe a [DONE]."""
    events = draw(st.lists(_chunk.map(lambda c: b"data: " + orjson.dumps(c) + b"\n\n"), max_size=6))
    if draw(st.booleans()):
        events.insert(draw(st.integers(0, len(events))), draw(_odd_event))
    if draw(st.booleans()):
        events.append(b"data: [DONE]" + draw(st.sampled_from([b"", b"\n", b"\n\n"])))
    return b"".join(events)


@pytest.mark.parametrize("schema", [None, "chat", "completions"], ids=["recording", "chat", "completions"])
@settings(max_examples=300, deadline=None)
@given(body=upstream_body(), piece=st.integers(1, 64))
def test_any_bytes_give_an_answer_or_a_conversion_error(schema: str | None, body: bytes, piece: int) -> None:
    limits = {"max_event_bytes": 256, "max_body_bytes": 1500}
    conv = StreamConverter(api_of(schema), **limits) if schema else converter(**limits)
    try:
        for i in range(0, len(body), piece):
            conv.feed(body[i : i + piece])
        answer = orjson.loads(conv.finish())
    except ConversionError as error:
        assert error.kind in (UPSTREAM_ERROR, TRUNCATED, MALFORMED, LIMIT)
        assert 400 <= error.status <= 599
        assert isinstance(orjson.loads(error.body())["error"], dict)
        event(error.kind)
    else:
        assert isinstance(answer, dict)
        event("answer")


def test_body_cut_inside_the_last_event_is_truncated_not_malformed() -> None:
    body = sse(delta("a"))
    assert conversion_error(body + b'data: {"id":"x","choi').kind == TRUNCATED
