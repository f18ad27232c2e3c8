"""Anthropic Messages: corpus replay, assembly properties, errors, request plan and usage.

The corpus is ``tests/corpus/messages`` (see ``support.corpus``): each case's meta gives its
profile, what it shows, the server source it follows, the request, and either the expected error
(with its answer's body) or the fields a comparison must skip (random ids and signatures). Every
case is replayed whole, split in two at every byte and fed byte by byte; the answer must equal the
native one key by key, in the same key order.
"""

from __future__ import annotations

import copy
import tracemalloc
from typing import Any

import anthropic.types
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buffered_stream.core.errors import LIMIT, MALFORMED, TRUNCATED, UPSTREAM_ERROR, ConversionError
from buffered_stream.core.request import Rewrite, Skip
from buffered_stream.core.sse import SseDecoder
from buffered_stream.schemas.messages import (
    API,
    AUTO,
    MAX_BLOCKS,
    PROFILES,
    MessagesAssembler,
    detect,
    error_body,
    plan_request,
    upstream_error,
    usage_tokens,
)
from support import corpus
from support.corpus import Case, Chunking, answering, check, convert, cut_at, each_case, each_chunking

CASES = corpus.case_names("messages")


def load(name: str) -> Case:
    return corpus.load("messages", name)


@each_chunking
@each_case("messages")
def test_every_chunking_gives_the_native_answer(case: Case, chunking: Chunking) -> None:
    check(case, chunking)


@each_case("messages", where=answering)
def test_answers_validate_as_anthropic_messages_wherever_the_native_one_does(case: Case) -> None:
    """Ollama's thinking without signature, or its null content, fail the SDK's model as the server's
    own answer does; every other answer is a valid ``anthropic.types.Message``."""
    try:
        anthropic.types.Message.model_validate(case.native)
    except ValueError:
        assert case.meta["source"].startswith("ollama")
        return
    anthropic.types.Message.model_validate(convert(case, [case.body]))


@each_case("messages", where=lambda case: case.profile in ("generic", "anthropic"))
def test_generic_answers_pass_strict_validation(case: Case) -> None:
    if case.error is not None:
        return
    message = anthropic.types.Message.model_validate(convert(case, [case.body]), strict=True)
    assert message.type == "message" and message.role == "assistant"


def test_corpus_covers_every_profile_and_the_listed_cases() -> None:
    metas = {name: load(name).meta for name in CASES}
    assert {"generic", "anthropic", "vllm", "llamacpp", "ollama", "sglang", "auto"} <= {
        meta["profile"] for meta in metas.values()
    }
    for name, meta in metas.items():
        assert meta["about"] and meta["source"], name
    for server in ("anthropic", "vllm", "llamacpp", "ollama", "sglang"):
        assert any(name.startswith(server) for name in CASES), server
    errors = {name: meta["error"]["status"] for name, meta in metas.items() if "error" in meta}
    assert errors == {"anthropic-error-overloaded": 529, "generic-truncated": 502}


@pytest.mark.parametrize(
    ("name", "profile"),
    [
        ("vllm-thinking-text", "vllm"),
        ("llamacpp-thinking-tool-use", "llamacpp"),
        ("ollama-thinking-text", "ollama"),
        ("sglang-text-without-input-tokens", "sglang"),
        ("generic-ping-unknown-events", "generic"),
    ],
)
def test_auto_resolves_each_servers_profile_from_message_start(name: str, profile: str) -> None:
    case = load(name)
    assert case.profile == "auto"
    assembler = MessagesAssembler(AUTO, {})
    start = next(orjson.loads(payload) for _, payload in SseDecoder(1 << 20, 2 << 20).feed(case.body))
    assembler.add(start)
    assert assembler.profile.name == profile


def test_detect_falls_back_to_generic() -> None:
    assert (
        detect(
            {
                "id": "m",
                "type": "message",
                "role": "assistant",
                "model": "x",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {},
            }
        ).name
        == "generic"
    )


# --------------------------------------------------------------------------- assembly rules


def start(**message: Any) -> dict[str, Any]:
    base = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    return {"type": "message_start", "message": {**base, **message}}


def block_start(index: int, **block: Any) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def block_delta(index: int, **delta: Any) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}


def finish(stop_reason: str = "end_turn", **usage: Any) -> list[dict[str, Any]]:
    return [
        {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None}, "usage": usage},
        {"type": "message_stop"},
    ]


def assemble(events: list[dict[str, Any]], profile: str = "generic") -> dict[str, Any]:
    assembler = MessagesAssembler(PROFILES[profile], {})
    for event in events:
        assembler.add(event)
    assert assembler.finished
    return assembler.result()


def test_finished_only_at_message_stop_and_later_events_are_ignored() -> None:
    assembler = MessagesAssembler(PROFILES["generic"], {})
    for event in [
        start(),
        block_start(0, type="text", text=""),
        block_delta(0, type="text_delta", text="a"),
        {"type": "content_block_stop", "index": 0},
        finish()[0],
    ]:
        assembler.add(event)
        assert not assembler.finished
    assembler.add({"type": "message_stop"})
    assert assembler.finished
    answer = assembler.result()
    assembler.add(block_delta(0, type="text_delta", text="late"))
    assembler.add({"type": "error", "error": {"type": "api_error", "message": "late"}})
    assert assembler.result() == answer and answer["content"] == [{"type": "text", "text": "a"}]


def test_usage_replaces_never_adds_and_nulls_never_overwrite() -> None:
    events = [start(usage={"input_tokens": 10, "cache_read_input_tokens": 4, "output_tokens": 1})]
    events.append({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 5}})
    events.append({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 9, "input_tokens": None}})
    events += finish(output_tokens=12, cache_read_input_tokens=None)
    answer = assemble(events)
    assert answer["usage"] == {"input_tokens": 10, "cache_read_input_tokens": 4, "output_tokens": 12}


def test_blocks_are_ordered_by_index_and_never_merged() -> None:
    events = [
        start(),
        block_start(1, type="text", text=""),
        block_start(0, type="text", text=""),
        block_delta(1, type="text_delta", text="second"),
        block_delta(0, type="text_delta", text="first"),
        block_start(5, type="tool_use", id="a", name="f", input={}),
        block_start(3, type="tool_use", id="b", name="g", input={}),
        block_delta(5, type="input_json_delta", partial_json='{"x": 1}'),
        block_delta(3, type="input_json_delta", partial_json='{"y": '),
        block_delta(3, type="input_json_delta", partial_json="2}"),
        *finish("tool_use"),
    ]
    assert assemble(events)["content"] == [
        {"type": "text", "text": "first"},
        {"type": "text", "text": "second"},
        {"type": "tool_use", "id": "b", "name": "g", "input": {"y": 2}},
        {"type": "tool_use", "id": "a", "name": "f", "input": {"x": 1}},
    ]


def test_tool_input_without_deltas_is_the_starts_or_empty() -> None:
    events = [
        start(),
        block_start(0, type="tool_use", id="a", name="f", input={"preset": True}),
        block_delta(0, type="input_json_delta", partial_json=""),
        block_start(1, type="tool_use", id="b", name="g"),
        *finish("tool_use"),
    ]
    content = assemble(events)["content"]
    assert [block["input"] for block in content] == [{"preset": True}, {}]


def test_no_empty_text_block_is_invented() -> None:
    events = [
        start(),
        block_start(0, type="thinking", thinking=""),
        block_delta(0, type="thinking_delta", thinking="t"),
        *finish(),
    ]
    assert assemble(events)["content"] == [{"type": "thinking", "thinking": "t"}]


def test_invalid_tool_json_is_malformed() -> None:
    assembler = MessagesAssembler(PROFILES["generic"], {})
    for event in [
        start(),
        block_start(0, type="tool_use", id="a", name="f", input={}),
        block_delta(0, type="input_json_delta", partial_json='{"x": '),
    ]:
        assembler.add(event)
    with pytest.raises(ConversionError) as caught:
        assembler.add({"type": "content_block_stop", "index": 0})
    assert caught.value.kind == MALFORMED and "tool input is not valid JSON" in caught.value.message


@pytest.mark.parametrize(
    "bad",
    [
        [block_start(0, type="text", text="")],  # before message_start
        [start(), start()],
        [start(), block_start(0, type="text", text=""), block_start(0, type="text", text="")],
        [start(), block_start(-1, type="text")],
        [start(), block_start(True, type="text")],
        [start(), {"type": "content_block_start", "index": 0, "content_block": "text"}],
        [start(), block_delta(0, type="text_delta", text="x")],  # unstarted block
        [start(), block_start(1, type="text", text=""), block_delta(True, type="text_delta", text="x")],
        [start(), block_start(0, type="text", text=""), block_delta(0, type="text_delta", text=5)],
        [start(), block_start(0, type="text", text=""), {"type": "content_block_delta", "index": 0, "delta": []}],
        [start(), block_start(0, type="tool_use"), block_delta(0, type="input_json_delta", partial_json=None)],
        [start(), {"type": "message_delta", "delta": "end_turn"}],
        [start(), {"type": "message_delta", "usage": [1]}],
        [{"type": "message_start", "message": []}],
        [{"type": "message_start", "message": {"usage": 3}}],
        [{"type": "message_stop"}],
    ],
)
def test_impossible_shapes_are_malformed(bad: list[dict[str, Any]]) -> None:
    assembler = MessagesAssembler(PROFILES["generic"], {})
    with pytest.raises(ConversionError) as caught:
        for event in bad:
            assembler.add(event)
    assert caught.value.kind == MALFORMED and caught.value.status == 502


def test_too_many_blocks_is_a_limit_and_a_huge_index_allocates_nothing() -> None:
    tracemalloc.start()
    answer = assemble([start(), block_start(10**12, type="text", text="far"), *finish()])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20 and answer["content"] == [{"type": "text", "text": "far"}]
    assembler = MessagesAssembler(PROFILES["generic"], {})
    assembler.add(start())
    with pytest.raises(ConversionError) as caught:
        for index in range(MAX_BLOCKS + 1):
            assembler.add(block_start(index, type="text", text=""))
    assert caught.value.kind == LIMIT and str(MAX_BLOCKS) in caught.value.message


def test_an_error_event_given_to_add_raises_it() -> None:
    assembler = MessagesAssembler(PROFILES["generic"], {})
    assembler.add(start())
    with pytest.raises(ConversionError) as caught:
        assembler.add({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
    assert (caught.value.kind, caught.value.status) == (UPSTREAM_ERROR, 429)


# --------------------------------------------------------------------------- properties

piece_lists = st.lists(st.text(max_size=6), min_size=0, max_size=8)
BLOCK_KINDS = ["text", "thinking", "tool_use"]


@st.composite
def block_streams(draw: st.DrawFn) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Per block: its start, deltas and stop; and the block the answer must show."""
    indexes = sorted(draw(st.lists(st.integers(0, 50), min_size=0, max_size=5, unique=True)))
    per_block, expected = [], []
    for index in indexes:
        kind = draw(st.sampled_from(BLOCK_KINDS))
        if kind == "text":
            pieces = draw(piece_lists)
            events = [block_start(index, type="text", text="")]
            events += [block_delta(index, type="text_delta", text=p) for p in pieces]
            expected.append({"type": "text", "text": "".join(pieces)})
        elif kind == "thinking":
            pieces = draw(piece_lists)
            signature = draw(st.text(max_size=8))
            events = [block_start(index, type="thinking", thinking="", signature="")]
            events += [block_delta(index, type="thinking_delta", thinking=p) for p in pieces]
            events.append(block_delta(index, type="signature_delta", signature=signature))
            expected.append({"type": "thinking", "thinking": "".join(pieces), "signature": signature})
        else:
            value = draw(
                st.dictionaries(st.text(max_size=4), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=4), max_size=3)
            )
            text = orjson.dumps(value).decode()
            parts = cut_at(text, sorted(draw(st.lists(st.integers(0, len(text)), max_size=4))))
            events = [block_start(index, type="tool_use", id=f"t{index}", name="f", input={})]
            events += [block_delta(index, type="input_json_delta", partial_json=p) for p in parts]
            expected.append({"type": "tool_use", "id": f"t{index}", "name": "f", "input": value})
        events.append({"type": "content_block_stop", "index": index})
        per_block.append(events)
    return per_block, expected


@given(data=st.data())
@settings(max_examples=200, deadline=None)
def test_any_interleaving_of_blocks_gives_the_same_answer(data: st.DataObject) -> None:
    per_block, expected = data.draw(block_streams())
    queues = [list(events) for events in per_block]
    events = [start()]
    while any(queues):
        live = [queue for queue in queues if queue]
        events.append(live[data.draw(st.integers(0, len(live) - 1))].pop(0))
        if data.draw(st.booleans()):
            events.append({"type": "ping"})
    events += finish(output_tokens=7)
    answer = assemble(events)
    assert answer["content"] == expected
    assert answer["usage"] == {"input_tokens": 3, "output_tokens": 7}


KEYS = [
    "type",
    "index",
    "delta",
    "content_block",
    "message",
    "usage",
    "text",
    "thinking",
    "signature",
    "partial_json",
    "citation",
    "input",
    "stop_reason",
    "input_tokens",
    "output_tokens",
    "error",
    "x",
]
TYPES = [
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "ping",
    "error",
    "text",
    "thinking",
    "tool_use",
    "text_delta",
    "thinking_delta",
    "signature_delta",
    "input_json_delta",
    "citations_delta",
    "redacted_thinking",
    "unknown",
]
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(TYPES)
    | st.text(max_size=3)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(KEYS), children, max_size=4),
    max_leaves=16,
)
events_strategy = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES)},
    optional={
        "index": st.integers(0, 3) | json_values,
        "delta": st.fixed_dictionaries(
            {"type": st.sampled_from(TYPES)},
            optional={
                "text": json_values,
                "thinking": json_values,
                "signature": json_values,
                "partial_json": json_values,
                "citation": json_values,
                "stop_reason": json_values,
            },
        )
        | json_values,
        "content_block": st.fixed_dictionaries(
            {"type": st.sampled_from(TYPES)}, optional={"text": json_values, "input": json_values}
        )
        | json_values,
        "message": st.fixed_dictionaries({}, optional={"usage": json_values, "content": json_values, "id": json_values})
        | json_values,
        "usage": json_values,
        "error": json_values,
    },
) | st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4)


@given(events=st.lists(events_strategy, max_size=10), profile=st.sampled_from(["auto", *PROFILES]))
@settings(max_examples=500, deadline=None)
def test_arbitrary_events_assemble_or_raise_conversion_error(events: list[dict[str, Any]], profile: str) -> None:
    pristine = copy.deepcopy(events)
    assembler = MessagesAssembler(API.profile(profile), {})
    try:
        for event in events:
            error = upstream_error(event)
            if error is not None:
                assert error.kind == UPSTREAM_ERROR and 400 <= error.status <= 599
                orjson.loads(error_body(error))
                continue
            assembler.add(event)
        answer = assembler.result()
    except ConversionError as error:
        assert error.kind in (MALFORMED, LIMIT, UPSTREAM_ERROR)
        return
    finally:
        assert events == pristine  # the assembler never mutates what it was given
    orjson.dumps(answer)
    assert assembler.result() == answer  # result() is repeatable


# --------------------------------------------------------------------------- errors, usage, request


@pytest.mark.parametrize(
    ("error_type", "status"),
    [
        ("invalid_request_error", 400),
        ("authentication_error", 401),
        ("permission_error", 403),
        ("not_found_error", 404),
        ("request_too_large", 413),
        ("rate_limit_error", 429),
        ("api_error", 500),
        ("timeout_error", 504),
        ("overloaded_error", 529),
        ("internal_error", 502),  # vLLM's own type: not Anthropic's
        (None, 502),
    ],
)
def test_error_event_status_follows_anthropics_types(error_type: str | None, status: int) -> None:
    upstream = {"type": error_type, "message": "m"}
    error = upstream_error({"type": "error", "error": upstream})
    assert error is not None and (error.kind, error.status) == (UPSTREAM_ERROR, status)
    assert error.upstream_error == upstream
    assert orjson.loads(error_body(error)) == {"type": "error", "error": upstream}


def test_error_shapes_without_an_error_object() -> None:
    assert upstream_error({"type": "ping"}) is None
    assert upstream_error({"type": "message_delta", "error": {"type": "x"}}) is None
    assert upstream_error({"type": "content_block_delta"}) is None
    bare = upstream_error({"error": "boom"})
    assert bare is not None and bare.status == 502 and bare.upstream_error == {"type": "api_error", "message": "boom"}
    empty = upstream_error({"type": "error"})
    assert empty is not None and empty.upstream_error["message"] == "upstream sent an error event"


@pytest.mark.parametrize("kind", [TRUNCATED, MALFORMED, LIMIT])
def test_our_own_errors_render_as_api_error(kind: str) -> None:
    body = error_body(ConversionError(kind, 502, "what went wrong"))
    assert orjson.loads(body) == {"type": "error", "error": {"type": "api_error", "message": "what went wrong"}}


def test_usage_tokens_normalises_and_never_invents() -> None:
    assert usage_tokens(
        {"input_tokens": 10, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 2, "output_tokens": 7}
    ) == {"input_tokens": 17, "output_tokens": 7, "total_tokens": 24}
    assert usage_tokens({"output_tokens": 7, "input_tokens": None}) == {"output_tokens": 7}
    assert usage_tokens(None) == {} and usage_tokens({}) == {}


def test_paths_are_exact() -> None:
    assert API.paths == ("/v1/messages",)


def test_plan_request_rewrites_only_stream() -> None:
    body = b'{"model": "claude-x", "stream": false, "max_tokens": 5, "messages": [], "metadata": {"user_id": "u"}}'
    plan = plan_request(body, ("claude-*",))
    assert isinstance(plan, Rewrite)
    assert plan.body == body.replace(b'"stream": false', b'"stream": true')  # the client's bytes, one value edited
    assert (plan.schema, plan.model, plan.hints) == (API.name, "claude-x", {})
    absent = plan_request(b'{"model": "m", "messages": []}')
    assert isinstance(absent, Rewrite) and orjson.loads(absent.body) == {"model": "m", "messages": [], "stream": True}
    assert b"stream_options" not in absent.body


@pytest.mark.parametrize(
    ("body", "models", "reason"),
    [
        (b'{"model": "m", "stream": true}', (), "stream_requested"),
        (b'{"model": "m", "stream": "yes"}', (), "stream_requested"),
        (b"not json", (), "not_json"),
        (b"[1, 2]", (), "not_object"),
        (b'{"model": "gpt-4o"}', ("claude-*",), "model_not_enabled"),
        (b'{"messages": []}', ("claude-*",), "model_not_enabled"),
    ],
)
def test_plan_request_skips(body: bytes, models: tuple[str, ...], reason: str) -> None:
    plan = plan_request(body, models)
    assert isinstance(plan, Skip) and plan.reason == reason
