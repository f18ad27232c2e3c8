"""OpenAI Responses API: stream -> the backend's own non-stream ``response`` object.

The corpus is ``tests/corpus/responses`` (see ``support.corpus``): each case's meta gives its
profile, the server source it follows, optional request, and either an expected error or the paths
whose values are random or wall-clock (``output.*.id``). Every case is replayed whole, split in two
at every byte and byte by byte through the real pipeline, its request as the plan's hints.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import Response
from pydantic import ValidationError

from buffered_stream.core.errors import LIMIT, MALFORMED, UPSTREAM_ERROR, ConversionError
from buffered_stream.core.request import MODEL_NOT_ENABLED, NOT_JSON, NOT_OBJECT, STREAM_REQUESTED, Rewrite
from buffered_stream.schemas.responses import (
    API,
    AUTO,
    BACKGROUND,
    GENERIC,
    MAX_ITEMS,
    PROFILES,
    ResponsesAssembler,
    ResponsesProfile,
    error_body,
    error_event,
    plan_request,
    upstream_error,
    usage_tokens,
)
from support import corpus
from support.corpus import Case, Chunking, check, comparable, convert, cut_at, each_case, each_chunking
from support.responses_replay import replay

CASES = corpus.case_names("responses")


def load(name: str) -> Case:
    return corpus.load("responses", name)


# --------------------------------------------------------------------------- corpus


@each_chunking
@each_case("responses")
def test_every_chunking_gives_the_native_answer(case: Case, chunking: Chunking) -> None:
    check(case, chunking)


def test_every_profile_has_a_case_and_every_case_cites_its_source() -> None:
    metas = [load(name).meta for name in CASES]
    assert {meta["profile"] for meta in metas} == {AUTO.name, *PROFILES}
    assert all(meta.get("source") and meta.get("about") for meta in metas)
    kinds = {meta["error"]["kind"] for meta in metas if "error" in meta}
    assert kinds == {"upstream_error", "truncated"}


@pytest.mark.parametrize(
    "name",
    [
        "llamacpp-reasoning-text",
        "llamacpp-tool-calls",
        "ollama-text-then-tool-calls",
        "ollama-reasoning-text",
        "sglang-reasoning-text",
    ],
)
def test_the_server_profile_is_what_makes_the_answer_native(name: str) -> None:
    """Without its profile these terminal objects are not the server's non-stream answer: each
    reshaping rule is needed by a real server (a plain Ollama text answer needs none)."""
    case = load(name)
    assert case.native is not None
    generic = convert(case, [case.body], profile="generic")
    assert comparable(case, generic) != comparable(case, case.native)


@pytest.mark.parametrize(
    ("name", "profile"),
    [
        ("auto-openai-text", "generic"),
        ("auto-vllm-reasoning-text", "generic"),
        ("auto-llamacpp-reasoning-text", "llamacpp"),
        ("auto-sglang-reasoning-text", "sglang"),
        ("ollama-reasoning-text", "ollama"),
    ],
)
def test_auto_gives_what_the_detected_profile_gives(name: str, profile: str) -> None:
    case = load(name)
    assert case.profile == "auto"
    assert convert(case, [case.body]) == convert(case, [case.body], profile=profile)


# --------------------------------------------------------------------------- the client's own type

# Answers that follow a server's own schema rather than openai-python's ``Response``.
NOT_OPENAI_SHAPED = {
    "generic-terminal-empty-output": "a minimal server object (no tools, no parallel_tool_calls)",
    "generic-terminal-without-output": "a minimal server object (no tools, no parallel_tool_calls)",
    "llamacpp-reasoning-text": "llama.cpp answers a minimal object",
    "auto-llamacpp-reasoning-text": "llama.cpp answers a minimal object",
    "llamacpp-tool-calls": "llama.cpp answers a minimal object",
    "sglang-reasoning-text": "SGLang's non-stream usage keeps chat-completions key names",
    "auto-sglang-reasoning-text": "SGLang's non-stream usage keeps chat-completions key names",
    "vllm-reasoning-text": "vLLM's usage details lack cache_write_tokens before PR #57222",
    "auto-vllm-reasoning-text": "vLLM's usage details lack cache_write_tokens before PR #57222",
    "vllm-incomplete-completed-type": "vLLM's usage details lack cache_write_tokens before PR #57222",
    "ollama-text": "Ollama's usage details lack cache_write_tokens",
    "ollama-text-then-tool-calls": "Ollama's usage details lack cache_write_tokens",
    "ollama-reasoning-text": "Ollama's usage details lack cache_write_tokens",
    "openai-text": "recorded shape before cache_write_tokens",
}
OPENAI_SHAPED = [name for name in CASES if load(name).error is None and name not in NOT_OPENAI_SHAPED]


def _with_cache_write_tokens(answer: dict[str, Any]) -> dict[str, Any]:
    usage = answer.get("usage")
    if isinstance(usage, dict):
        usage["input_tokens_details"].setdefault("cache_write_tokens", 0)
    return answer


@pytest.mark.parametrize("name", OPENAI_SHAPED)
def test_openai_shaped_answers_are_valid_client_objects(name: str) -> None:
    case = load(name)
    answer = _with_cache_write_tokens(convert(case, [case.body]))
    parsed = Response.model_validate(answer, strict=True)
    assert len(parsed.output) == len(answer["output"])


@pytest.mark.parametrize("name", ["openai-text", "ollama-text", "vllm-reasoning-text", "generic-terminal-empty-output"])
def test_answers_only_lack_what_the_server_itself_leaves_out(name: str) -> None:
    """Answers validate once given what their server never sends (usage cache writes), so the
    assembly adds no wrong type of its own."""
    case = load(name)
    answer = _with_cache_write_tokens(convert(case, [case.body]))
    answer.setdefault("tools", [])
    answer.setdefault("parallel_tool_calls", True)
    answer.setdefault("tool_choice", "auto")
    Response.model_validate(answer, strict=True)


def test_strict_validation_catches_a_wrong_type() -> None:
    case = load("openai-function-calls")
    answer = _with_cache_write_tokens(replay([case.body], case.profile))
    answer["output"][0]["arguments"] = {"city": "Paris"}
    with pytest.raises(ValidationError):
        Response.model_validate(answer, strict=True)


# --------------------------------------------------------------------------- request plan


def test_paths_are_exactly_the_create_endpoint() -> None:
    assert API.paths == ("/v1/responses",)


def test_a_non_stream_request_is_rewritten_to_stream_only() -> None:
    request = {"model": "m", "input": "hi", "store": False, "tools": [{"type": "function", "name": "f"}]}
    plan = plan_request(orjson.dumps(request), ())
    assert isinstance(plan, Rewrite)
    assert orjson.loads(plan.body) == {**request, "stream": True}
    assert (plan.model, plan.hints) == ("m", {})
    explicit = plan_request(orjson.dumps({**request, "stream": False}), ("m",))
    assert isinstance(explicit, Rewrite) and orjson.loads(explicit.body)["stream"] is True


@pytest.mark.parametrize(
    ("body", "skip"),
    [
        (b"{", NOT_JSON),
        (b"[1]", NOT_OBJECT),
        (b'{"model": "m", "stream": true}', STREAM_REQUESTED),
        (b'{"model": "other", "input": "x"}', MODEL_NOT_ENABLED),
        (b'{"model": "m", "input": "x", "background": true}', BACKGROUND),
    ],
)
def test_requests_that_are_not_ours_pass_through(body: bytes, skip: Any) -> None:
    assert plan_request(body, ("m",)) is skip


def test_namespace_tools_travel_as_a_hint_and_shape_ollama_tools() -> None:
    tools = [
        {"type": "namespace", "name": "crm", "tools": [{"type": "function", "name": "lookup", "parameters": {}}]},
        {"type": "function", "name": "f", "description": "d", "strict": True, "parameters": {"type": "object"}},
    ]
    plan = plan_request(orjson.dumps({"model": "m", "input": "x", "tools": tools}), ())
    assert isinstance(plan, Rewrite) and plan.hints == {"tools": tools}
    assembler = ResponsesAssembler(PROFILES["ollama"], plan.hints)
    stream_tools = [
        {key: tool.get(key) for key in ("type", "name", "description", "strict", "parameters")} for tool in tools
    ]
    assembler.add(terminal({"id": "resp_1", "output": [], "tools": stream_tools}))
    assert assembler.result()["tools"] == [
        {
            "type": "namespace",
            "name": "crm",
            "description": None,
            "strict": None,
            "parameters": None,
            "tools": [{"type": "function", "name": "lookup", "description": None, "strict": None, "parameters": {}}],
        },
        tools[1],
    ]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("chunk", "status", "upstream"),
    [
        (
            {"type": "error", "code": "server_error", "message": "boom", "param": None, "sequence_number": 3},
            502,
            {"message": "boom", "type": "upstream_error", "param": None, "code": "server_error"},
        ),
        (
            {"type": "error", "code": "429", "message": "slow down", "param": None, "sequence_number": 1},
            429,
            {"message": "slow down", "type": "upstream_error", "param": None, "code": "429"},
        ),
        (
            {
                "type": "error",
                "error": {"type": "invalid_request_error", "code": "bad", "message": "m", "param": "input"},
            },
            502,
            {"message": "m", "type": "invalid_request_error", "param": "input", "code": "bad"},
        ),
        (
            {
                "type": "response.failed",
                "sequence_number": 9,
                "response": {"id": "r", "status": "failed", "error": {"code": "server_error", "message": "x"}},
            },
            502,
            {"message": "x", "type": "upstream_error", "param": None, "code": "server_error"},
        ),
        (
            {"type": "response.failed", "response": {"id": "r", "status": "failed", "error": None}},
            502,
            {"message": "upstream response failed", "type": "upstream_error", "param": None, "code": None},
        ),
        (
            {"object": "error", "message": "too long", "type": "BadRequestError", "param": None, "code": 400},
            400,
            {"message": "too long", "type": "BadRequestError", "param": None, "code": 400},
        ),
        (
            {"error": {"message": "m", "type": "InternalServerError", "param": None, "http_status_code": 503}},
            503,
            {"message": "m", "type": "InternalServerError", "param": None, "code": None, "http_status_code": 503},
        ),
        (
            {"error": "model not found"},
            502,
            {"message": "model not found", "type": "upstream_error", "param": None, "code": None},
        ),
    ],
)
def test_every_in_stream_error_shape_becomes_one_openai_error(
    chunk: dict[str, Any], status: int, upstream: dict[str, Any]
) -> None:
    error = upstream_error(chunk)
    assert error is not None
    assert (error.kind, error.status, error.upstream_error) == (UPSTREAM_ERROR, status, upstream)
    assert orjson.loads(error_body(error)) == {"error": upstream}
    assert error_body(error) == error.body()


@pytest.mark.parametrize(
    "chunk",
    [
        {"type": "response.output_text.delta", "delta": "x"},
        {"type": "response.completed", "response": {"error": None, "status": "completed"}},
        {"type": "response.created", "response": {"error": None}},
        {"type": ["not", "hashable"]},
        {"error": None, "object": "response"},
    ],
)
def test_data_events_are_not_errors(chunk: dict[str, Any]) -> None:
    assert upstream_error(chunk) is None


def test_an_error_event_is_fatal_whatever_it_holds() -> None:
    assert error_event(b'{"code": 500, "message": "decode failed", "type": "server_error"}').status == 500
    assert error_event(b"not json").kind == UPSTREAM_ERROR
    assert error_event(b'{"type": "error", "code": "x", "message": "y"}').upstream_error == {
        "message": "y",
        "type": "upstream_error",
        "param": None,
        "code": "x",
    }


def test_usage_tokens_reads_both_key_sets() -> None:
    assert usage_tokens({"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}) == {
        "input_tokens": 3,
        "output_tokens": 4,
        "total_tokens": 7,
    }
    assert usage_tokens({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}) == {
        "input_tokens": 3,
        "output_tokens": 4,
        "total_tokens": 7,
    }
    assert usage_tokens({}) == {"input_tokens": None, "output_tokens": None, "total_tokens": None}


# --------------------------------------------------------------------------- assembler rules


def terminal(response: dict[str, Any], kind: str = "response.completed") -> dict[str, Any]:
    return {"type": kind, "sequence_number": 99, "response": {"object": "response", "status": "completed", **response}}


def test_finished_only_after_a_terminal_event_and_later_events_change_nothing() -> None:
    assembler = ResponsesAssembler(GENERIC)
    assembler.add({"type": "response.created", "sequence_number": 0, "response": {"id": "r", "status": "in_progress"}})
    assert not assembler.finished and assembler.usage is None
    usage = {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3}
    assembler.add(terminal({"id": "r", "output": [], "usage": usage}))
    assert assembler.finished and assembler.usage == usage
    assembler.add({"type": "response.output_text.delta", "sequence_number": 100, "output_index": 0, "delta": "late"})
    assert assembler.result() == {"id": "r", "object": "response", "status": "completed", "output": [], "usage": usage}


def test_status_comes_from_the_object_else_from_the_event_type() -> None:
    vllm = ResponsesAssembler(GENERIC)
    vllm.add(
        {
            "type": "response.completed",
            "sequence_number": 1,
            "response": {"id": "r", "status": "incomplete", "output": []},
        }
    )
    assert vllm.result()["status"] == "incomplete"
    bare = ResponsesAssembler(GENERIC)
    bare.add({"type": "response.incomplete", "sequence_number": 1, "response": {"id": "r"}})
    assert bare.result()["status"] == "incomplete"


def test_keys_only_the_created_event_had_are_kept_but_not_its_status() -> None:
    assembler = ResponsesAssembler(GENERIC)
    assembler.add(
        {
            "type": "response.created",
            "sequence_number": 0,
            "response": {"id": "r", "model": "m", "status": "in_progress"},
        }
    )
    assembler.add({"type": "response.incomplete", "sequence_number": 1, "response": {"id": "r", "output": []}})
    assert assembler.result() == {"id": "r", "output": [], "model": "m", "status": "incomplete"}


def test_unknown_event_types_are_tolerated() -> None:
    assembler = ResponsesAssembler(GENERIC)
    assembler.add(
        {"type": "response.web_search_call.searching", "sequence_number": 0, "output_index": 0, "item_id": "x"}
    )
    assembler.add({"type": "keepalive", "sequence_number": 1})
    assembler.add(terminal({"id": "r", "output": []}))
    assert assembler.result()["output"] == []


def test_logprobs_refusal_and_unclosed_items_from_deltas() -> None:
    events = [
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {"id": "m", "type": "message", "role": "assistant", "status": "in_progress", "content": []},
        },
        {
            "type": "response.content_part.added",
            "output_index": 0,
            "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
        },
        {
            "type": "response.output_text.delta",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hi",
            "logprobs": [{"token": "Hi", "logprob": -0.1, "top_logprobs": []}],
        },
        {
            "type": "response.output_text.delta",
            "output_index": 0,
            "content_index": 0,
            "delta": "!",
            "logprobs": [{"token": "!", "logprob": -0.2, "top_logprobs": []}],
        },
        {
            "type": "response.content_part.added",
            "output_index": 0,
            "content_index": 1,
            "part": {"type": "refusal", "refusal": ""},
        },
        {"type": "response.refusal.delta", "output_index": 0, "content_index": 1, "delta": "I can't"},
        {"type": "response.refusal.delta", "output_index": 0, "content_index": 1, "delta": " help."},
    ]
    assembler = ResponsesAssembler(GENERIC)
    for number, event in enumerate(events):
        assembler.add({**event, "sequence_number": number})
    assembler.add(terminal({"id": "r", "status": "incomplete", "output": []}, "response.incomplete"))
    assert assembler.result()["output"] == [
        {
            "id": "m",
            "type": "message",
            "role": "assistant",
            "status": "incomplete",
            "content": [
                {
                    "type": "output_text",
                    "text": "Hi!",
                    "annotations": [],
                    "logprobs": [
                        {"token": "Hi", "logprob": -0.1, "top_logprobs": []},
                        {"token": "!", "logprob": -0.2, "top_logprobs": []},
                    ],
                },
                {"type": "refusal", "refusal": "I can't help."},
            ],
        }
    ]


def test_done_events_win_over_deltas() -> None:
    assembler = ResponsesAssembler(GENERIC)
    for number, event in enumerate(
        [
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {"id": "fc", "type": "function_call", "call_id": "c", "name": "f", "arguments": ""},
            },
            {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": '{"a"'},
            {"type": "response.function_call_arguments.done", "output_index": 0, "arguments": '{"a": 1}'},
            {
                "type": "response.output_item.added",
                "output_index": 1,
                "item": {"id": "m", "type": "message", "content": []},
            },
            {"type": "response.output_text.delta", "output_index": 1, "content_index": 0, "delta": "draft"},
            {"type": "response.output_text.done", "output_index": 1, "content_index": 0, "text": "final"},
        ]
    ):
        assembler.add({**event, "sequence_number": number})
    assembler.add(terminal({"id": "r"}))
    assert assembler.result()["output"] == [
        {
            "id": "fc",
            "type": "function_call",
            "call_id": "c",
            "name": "f",
            "arguments": '{"a": 1}',
            "status": "completed",
        },
        {"id": "m", "type": "message", "content": [{"type": "output_text", "text": "final"}], "status": "completed"},
    ]


@pytest.mark.parametrize(
    "event",
    [
        {"type": "response.output_text.delta", "output_index": 0, "delta": 5},
        {"type": "response.output_text.delta", "output_index": "0", "delta": "x"},
        {"type": "response.output_text.delta", "output_index": 0, "content_index": 1.5, "delta": "x"},
        {"type": "response.output_item.added", "output_index": 0, "item": "x"},
        {"type": "response.completed", "response": []},
        {"type": "response.completed", "response": {"output": {}}},
        {"type": 7},
    ],
)
def test_impossible_shapes_are_malformed(event: dict[str, Any]) -> None:
    with pytest.raises(ConversionError) as caught:
        ResponsesAssembler(GENERIC).add(event)
    assert caught.value.kind == MALFORMED


def test_item_count_is_bounded() -> None:
    assembler = ResponsesAssembler(GENERIC)
    with pytest.raises(ConversionError) as caught:
        for index in range(MAX_ITEMS + 1):
            assembler.add(
                {"type": "response.output_item.added", "sequence_number": index, "output_index": index, "item": {}}
            )
    assert caught.value.kind == LIMIT


def test_profiles_are_frozen_and_named_by_their_key() -> None:
    assert all(isinstance(profile, ResponsesProfile) and profile.name == name for name, profile in PROFILES.items())
    with pytest.raises(AttributeError):
        PROFILES["ollama"].chat_usage_keys = True  # type: ignore[misc]
    assert API.profile("auto") is AUTO and AUTO.detect and not any(p.detect for p in PROFILES.values())
    assert API.profile("tgi") is AUTO  # a backend with no Responses profile: detected at the end


def test_the_terminal_object_is_held_as_its_json_and_deltas_are_dropped() -> None:
    """Memory: once the terminal object holds the answer, the streamed text is not kept twice."""
    body = load("openai-text").body
    assembler = ResponsesAssembler(GENERIC)
    for block in body.split(b"\n\n"):
        if block:
            assembler.add(orjson.loads(block.split(b"data: ", 1)[1]))
    assert assembler.finished
    assert not assembler._items and isinstance(assembler._terminal, bytes)


# --------------------------------------------------------------------------- properties

texts = st.lists(st.text(max_size=6), min_size=1, max_size=5)


@st.composite
def item_streams(draw: st.DrawFn) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Per-item event sequences (text messages and function calls) and each item's expected JSON."""
    count = draw(st.integers(1, 4))
    per_item, expected = [], []
    for index in range(count):
        if draw(st.booleans()):
            pieces = draw(texts)
            events = [
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {"id": f"m{index}", "type": "message", "role": "assistant", "content": []},
                },
                {
                    "type": "response.content_part.added",
                    "output_index": index,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []},
                },
                *(
                    {"type": "response.output_text.delta", "output_index": index, "content_index": 0, "delta": piece}
                    for piece in pieces
                ),
            ]
            item = {
                "id": f"m{index}",
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "".join(pieces), "annotations": []}],
                "status": "completed",
            }
        else:
            pieces = draw(texts)
            events = [
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {
                        "id": f"f{index}",
                        "type": "function_call",
                        "call_id": f"c{index}",
                        "name": "f",
                        "arguments": "",
                    },
                },
                *(
                    {"type": "response.function_call_arguments.delta", "output_index": index, "delta": piece}
                    for piece in pieces
                ),
            ]
            item = {
                "id": f"f{index}",
                "type": "function_call",
                "call_id": f"c{index}",
                "name": "f",
                "arguments": "".join(pieces),
                "status": "completed",
            }
        per_item.append(events)
        expected.append(item)
    return per_item, expected


@given(data=st.data())
@settings(max_examples=200, deadline=None)
def test_any_interleaving_of_items_gives_the_same_output(data: st.DataObject) -> None:
    per_item, expected = data.draw(item_streams())
    queues = [list(events) for events in per_item]
    assembler = ResponsesAssembler(GENERIC)
    number = 0
    while any(queues):
        queue = data.draw(st.sampled_from([queue for queue in queues if queue]))
        assembler.add({**queue.pop(0), "sequence_number": number})
        number += 1
    assembler.add(terminal({"id": "r", "output": []}))
    assert assembler.result()["output"] == expected


@given(data=st.data())
@settings(max_examples=50, deadline=None)
def test_any_chunking_of_a_corpus_body_gives_the_same_answer(data: st.DataObject) -> None:
    case = load(data.draw(st.sampled_from([name for name in CASES if load(name).error is None])))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(case.body)), max_size=12)))
    assert convert(case, cut_at(case.body, cuts)) == convert(case, [case.body])


EVENT_TYPES = [
    "response.created",
    "response.output_item.added",
    "response.output_item.done",
    "response.content_part.added",
    "response.content_part.done",
    "response.output_text.delta",
    "response.output_text.done",
    "response.output_text.annotation.added",
    "response.refusal.delta",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.reasoning_text.delta",
    "response.reasoning_summary_part.added",
    "response.reasoning_summary_text.delta",
    "response.reasoning_summary_text.done",
    "response.completed",
    "response.incomplete",
    "response.failed",
    "error",
    "x",
]
KEYS = [
    "type",
    "output_index",
    "content_index",
    "summary_index",
    "item_id",
    "item",
    "part",
    "delta",
    "text",
    "arguments",
    "response",
    "output",
    "id",
    "call_id",
    "logprobs",
    "annotation",
    "error",
    "status",
    "usage",
]
json_leaves = st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=3)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
    max_leaves=12,
)
events = st.fixed_dictionaries(
    {"type": st.sampled_from(EVENT_TYPES)},
    optional={key: json_values for key in KEYS if key != "type"}
    | {"output_index": st.integers(0, 3), "content_index": st.integers(0, 2)},
)


@given(stream=st.lists(events, max_size=12), profile=st.sampled_from(list(PROFILES)))
@settings(max_examples=200, deadline=None)
def test_arbitrary_events_give_an_answer_or_a_conversion_error(stream: list[dict[str, Any]], profile: str) -> None:
    assembler = ResponsesAssembler(
        PROFILES[profile], {"tools": [{"type": "namespace", "tools": [{"type": "function"}]}]}
    )
    try:
        for event in stream:
            error = upstream_error(event)
            if error is not None:
                raise error
            assembler.add(event)
        answer = assembler.result()
    except ConversionError:
        return
    orjson.dumps(answer)
