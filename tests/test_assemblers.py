"""Assembler properties: order and chunking never matter, any input assembles or fails cleanly."""

from __future__ import annotations

import copy
import tracemalloc
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buffered_stream.apis import PROFILE_NAMES, SCHEMAS, get_profile, make_assembler
from buffered_stream.core.errors import LIMIT, MALFORMED, ConversionError
from buffered_stream.schemas.chat import ChatAssembler
from buffered_stream.schemas.chat.fold import MAX_TOOL_CALLS, MAX_TOOL_NAME_CHARS
from buffered_stream.schemas.chat.profiles import PROFILES
from buffered_stream.schemas.completions import CompletionsAssembler
from buffered_stream.schemas.openai_base import MAX_CHOICES


def chunk(*choices: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": list(choices),
        **top,
    }


def assemble(
    chunks: list[dict[str, Any]], profile: str = "generic", schema: str = "chat", **request: Any
) -> dict[str, Any]:
    assembler = make_assembler(schema, profile, request or None)
    for item in chunks:
        assembler.add(item)
    return assembler.result()


# --------------------------------------------------------------------------- order and chunking

texts = st.lists(st.text(max_size=5), min_size=1, max_size=6)
tool_arguments = st.lists(st.text(alphabet='{}":ab ', max_size=4), min_size=1, max_size=4)


@st.composite
def multi_choice_streams(draw: st.DrawFn) -> tuple[list[list[dict[str, Any]]], dict[int, dict[str, Any]]]:
    """Per-choice delta sequences (each ending with its finish) and each choice's expected message."""
    indexes = draw(st.lists(st.integers(0, 2**31), min_size=1, max_size=4, unique=True))
    per_choice, expected = [], {}
    for index in indexes:
        pieces = draw(texts)
        deltas = [{"role": "assistant"}] + [{"content": piece} for piece in pieces]
        message: dict[str, Any] = {"role": "assistant", "content": "".join(pieces)}
        if draw(st.booleans()):
            arguments = draw(tool_arguments)
            deltas.append(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": f"call_{index}",
                            "type": "function",
                            "function": {"name": "f", "arguments": ""},
                        }
                    ]
                }
            )
            deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": part}}]} for part in arguments]
            message["tool_calls"] = [
                {"id": f"call_{index}", "type": "function", "function": {"name": "f", "arguments": "".join(arguments)}}
            ]
            message["content"] = message["content"] or None
        finish = draw(st.sampled_from(["stop", "length", "tool_calls"]))
        per_choice.append(
            [{"index": index, "delta": delta, "finish_reason": None} for delta in deltas]
            + [{"index": index, "delta": {}, "finish_reason": finish}]
        )
        expected[index] = {"index": index, "message": message, "logprobs": None, "finish_reason": finish}
    return per_choice, expected


@st.composite
def interleavings(draw: st.DrawFn, per_choice: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Merge the choices' sequences in any order, keeping each choice's own order, several per chunk."""
    queues = [list(sequence) for sequence in per_choice]
    chunks = []
    while any(queues):
        live = [queue for queue in queues if queue]
        taken = draw(st.lists(st.sampled_from(range(len(live))), min_size=1, max_size=len(live), unique=True))
        chunks.append(chunk(*(live[i].pop(0) for i in taken)))
    return chunks


@given(data=st.data())
@settings(max_examples=200, deadline=None)
def test_any_interleaving_and_grouping_of_choices_gives_the_same_answer(data: st.DataObject) -> None:
    per_choice, expected = data.draw(multi_choice_streams())
    chunks = data.draw(interleavings(per_choice))
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    answer = assemble([*chunks, chunk(usage=usage)])
    assert answer["choices"] == [expected[index] for index in sorted(expected)]
    assert answer["usage"] == usage


@given(pieces=st.lists(st.text(max_size=8), max_size=20), cut=st.integers(0, 20))
def test_legacy_completion_text_is_joined_whatever_the_chunking(pieces: list[str], cut: int) -> None:
    chunks = [
        {
            "id": "c",
            "object": "text_completion",
            "model": "m",
            "choices": [{"index": 0, "text": p, "finish_reason": None}],
        }
        for p in pieces
    ]
    chunks.append({"id": "c", "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
    answer = assemble(chunks, schema="completions")
    assert answer["choices"] == [{"index": 0, "text": "".join(pieces), "logprobs": None, "finish_reason": "stop"}]


# --------------------------------------------------------------------------- arbitrary input

KEYS = [
    "id",
    "model",
    "created",
    "choices",
    "usage",
    "index",
    "delta",
    "finish_reason",
    "logprobs",
    "content",
    "role",
    "refusal",
    "reasoning",
    "tool_calls",
    "function",
    "name",
    "arguments",
    "type",
    "audio",
    "data",
    "transcript",
    "annotations",
    "function_call",
    "text",
    "x",
]
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(KEYS), children, max_size=4),
    max_leaves=20,
)
plausible_choice = st.fixed_dictionaries(
    {"index": st.integers(0, 3) | json_values},
    optional={
        "delta": st.dictionaries(st.sampled_from(KEYS), json_values, max_size=3),
        "finish_reason": json_values,
        "logprobs": json_values,
        "text": json_values,
    },
)
chunks_strategy = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=5) | st.fixed_dictionaries(
    {"choices": st.lists(plausible_choice | json_values, max_size=3)}, optional={"usage": json_values}
)


@pytest.mark.parametrize("schema", sorted(SCHEMAS))
@given(chunks=st.lists(chunks_strategy, max_size=6), profile=st.sampled_from(PROFILE_NAMES))
@settings(max_examples=300, deadline=None)
def test_arbitrary_chunks_assemble_or_raise_conversion_error(
    schema: str, chunks: list[dict[str, Any]], profile: str
) -> None:
    pristine = copy.deepcopy(chunks)
    assembler = make_assembler(schema, profile)
    try:
        for item in chunks:
            assembler.add(item)
        answer = assembler.result()
    except ConversionError as error:
        assert error.kind in (MALFORMED, LIMIT)
        return
    finally:
        assert chunks == pristine  # the assembler never mutates what it was given
    orjson.dumps(answer)
    assert assembler.result() == answer  # result() is repeatable


@pytest.mark.parametrize(
    "bad",
    [
        chunk("not a choice"),
        chunk({"index": "0", "delta": {}}),
        chunk({"index": True, "delta": {}}),
        chunk({"index": 0, "delta": ["content"]}),
        chunk({"index": 0, "delta": {"content": 5}}),
        chunk({"index": 0, "delta": {"role": {}}}),
        chunk({"index": 0, "delta": {"tool_calls": {"index": 0}}}),
        chunk({"index": 0, "delta": {"tool_calls": "[]"}}),
        chunk({"index": 0, "delta": {"tool_calls": [{"index": 0.5}]}}),
        chunk({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": {"a": 1}}}]}}),
        chunk({"index": 0, "delta": {"audio": {"data": "not base64!"}}}),
        chunk({"index": 0, "delta": {}, "finish_reason": 1}),
        chunk({"index": 0, "delta": {}, "logprobs": []}),
        {"id": "x", "choices": {"0": {}}},
        {"id": 7, "choices": []},
        {"choices": [], "usage": [1, 2]},
    ],
)
def test_impossible_shapes_are_malformed_with_a_clear_message(bad: dict[str, Any]) -> None:
    with pytest.raises(ConversionError) as caught:
        assemble([bad])
    assert caught.value.kind == MALFORMED and caught.value.status == 502
    assert caught.value.message.startswith("upstream stream chunk is malformed: ")


# --------------------------------------------------------------------------- bounds


def test_a_huge_choice_or_tool_index_allocates_nothing_by_it() -> None:
    tracemalloc.start()
    answer = assemble(
        [
            chunk(
                {
                    "index": 10**9,
                    "delta": {
                        "tool_calls": [{"index": 10**9, "id": "c", "function": {"name": "f", "arguments": "{}"}}]
                    },
                }
            ),
            chunk({"index": 10**9, "delta": {}, "finish_reason": "tool_calls"}),
        ]
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1 << 20
    assert [c["index"] for c in answer["choices"]] == [10**9]
    assert answer["choices"][0]["message"]["tool_calls"][0]["id"] == "c"


def test_a_hostile_stream_cannot_make_call_splitting_quadratic() -> None:
    """Alternating ids on an open call are parsed a few times only, then simply join that call."""
    deltas = [
        {"index": 0, "id": f"id{i % 2}", "function": {"name": "f", "arguments": '{"a": [1}'}} for i in range(2000)
    ]
    answer = assemble([chunk({"index": 0, "delta": {"tool_calls": [d]}}) for d in deltas])
    (call,) = answer["choices"][0]["message"]["tool_calls"]
    assert call["id"] == "id0" and len(call["function"]["arguments"]) == 2000 * len('{"a": [1}')


def test_a_tool_name_beyond_the_bound_is_a_limit_error() -> None:
    pieces = [
        chunk({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"name": "xy"[i % 2]}}]}})
        for i in range(MAX_TOOL_NAME_CHARS + 1)
    ]
    with pytest.raises(ConversionError) as caught:
        assemble(pieces)
    assert caught.value.kind == LIMIT


def test_a_call_without_id_keeps_its_generated_id_across_results() -> None:
    assembler = make_assembler("chat", "generic")
    assembler.add(
        chunk({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{}"}}]}})
    )
    first = assembler.result()["choices"][0]["message"]["tool_calls"][0]["id"]
    assert first.startswith("call_") and assembler.result()["choices"][0]["message"]["tool_calls"][0]["id"] == first


def test_too_many_tool_calls_is_a_limit_error() -> None:
    calls = [{"index": i, "id": f"c{i}", "function": {"name": "f", "arguments": "{}"}} for i in range(10_000)]
    with pytest.raises(ConversionError) as caught:
        assemble([chunk({"index": 0, "delta": {"tool_calls": calls}})])
    assert (caught.value.kind, caught.value.status) == (LIMIT, 502)
    assert str(MAX_TOOL_CALLS) in caught.value.message


@pytest.mark.parametrize("assembler_type", [ChatAssembler, CompletionsAssembler])
def test_too_many_choices_is_a_limit_error(assembler_type: type) -> None:
    assembler = assembler_type()
    with pytest.raises(ConversionError) as caught:
        for index in range(MAX_CHOICES + 1):
            assembler.add({"choices": [{"index": index, "delta": {}, "text": ""}]})
    assert caught.value.kind == LIMIT and str(MAX_CHOICES) in caught.value.message


# --------------------------------------------------------------------------- rules the corpus does not isolate


def test_usage_is_never_summed_and_null_usage_is_ignored() -> None:
    running = [{"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n} for n in (1, 2, 3)]
    chunks = [chunk({"index": 0, "delta": {"content": "x"}, "finish_reason": None}, usage=u) for u in running]
    chunks.append(chunk({"index": 0, "delta": {}, "finish_reason": "stop"}, usage=None))
    assert assemble(chunks)["usage"] == running[-1]
    assert "usage" not in assemble(
        [chunk({"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}, usage=None)]
    )


def test_usage_without_choices_wins_over_a_later_per_chunk_usage() -> None:
    final = {
        "prompt_tokens": 5,
        "completion_tokens": 9,
        "total_tokens": 14,
        "completion_tokens_details": {"reasoning_tokens": 4},
    }
    chunks = [
        chunk({"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}),
        chunk(usage=final),
        chunk({"index": 0, "delta": {}}, usage={"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}),
    ]
    assembler = make_assembler("chat", "generic")
    for item in chunks:
        assembler.add(item)
    assert assembler.usage == final and assembler.result()["usage"] == final


def test_unknown_keys_carry_their_last_non_null_value() -> None:
    answer = assemble(
        [
            chunk(
                {"index": 0, "delta": {"content": "a", "x_delta": {"n": 1}}, "finish_reason": None, "x_choice": None},
                x_top=None,
            ),
            chunk(
                {
                    "index": 0,
                    "delta": {"x_delta": None, "x_text": "t"},
                    "finish_reason": "stop",
                    "x_choice": 3,
                    "x_only_null": None,
                },
                x_top="v",
            ),
            chunk({"index": 0, "delta": {"x_text": "u"}, "x_choice": None}, x_top=None),
        ]
    )
    choice = answer["choices"][0]
    assert answer["x_top"] == "v"
    assert choice["x_choice"] == 3 and choice["x_only_null"] is None
    assert choice["message"]["x_delta"] == {"n": 1} and choice["message"]["x_text"] == "tu"


def test_a_different_id_joins_the_open_call_until_its_arguments_are_complete() -> None:
    deltas = [
        [{"index": 0, "id": "a", "function": {"name": "f", "arguments": '{"x": '}}],
        [{"index": 0, "id": "a2", "function": {"arguments": "1}"}}],  # a server re-keying mid-call: same call
        [{"index": 0, "id": "b", "function": {"name": "g", "arguments": "{}"}}],  # complete before: new call
    ]
    answer = assemble(
        [chunk({"index": 0, "delta": {"tool_calls": d}}) for d in deltas]
        + [chunk({"index": 0, "delta": {}, "finish_reason": "tool_calls"})]
    )
    calls = answer["choices"][0]["message"]["tool_calls"]
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("a", "f", '{"x": 1}'),
        ("b", "g", "{}"),
    ]


def test_a_name_that_does_not_extend_the_current_one_is_appended() -> None:
    deltas = [{"index": 0, "id": "a", "function": {"name": "get_"}}, {"index": 0, "function": {"name": "weather"}}]
    answer = assemble([chunk({"index": 0, "delta": {"tool_calls": [d]}}) for d in deltas])
    assert answer["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_finished_needs_every_seen_choice_to_finish() -> None:
    assembler = make_assembler("chat", "auto")
    assert not assembler.finished
    assembler.add(chunk({"index": 0, "delta": {"content": "a"}}, {"index": 1, "delta": {"content": "b"}}))
    assembler.add(chunk({"index": 1, "delta": {}, "finish_reason": "stop"}))
    assert not assembler.finished
    assembler.add(chunk({"index": 0, "delta": {}, "finish_reason": "length"}))
    assert assembler.finished


def test_tgi_empty_finish_reason_means_not_finished_in_completions() -> None:
    assembler = make_assembler("completions", "tgi")
    assembler.add({"id": "", "choices": [{"index": 0, "text": "a", "finish_reason": ""}]})
    assert not assembler.finished
    assembler.add({"id": "", "choices": [{"index": 0, "text": "b", "finish_reason": "length"}]})
    assert assembler.finished


@pytest.mark.parametrize(
    ("marker", "profile"),
    [
        ({"system_fingerprint": "fp_ollama"}, "ollama"),
        ({"timings": {"predicted_n": 1}}, "llamacpp"),
        ({"id": ""}, "tgi"),
        ({"choice": {"matched_stop": 2}}, "sglang"),
        ({"choice": {"stop_reason": None}}, "vllm-0.10"),
        ({"prompt_token_ids": [1, 2]}, "vllm"),
        ({"obfuscation": "x1"}, "openai"),
        ({"service_tier": "default"}, "openai"),
        ({"system_fingerprint": "fp_eb9dce56a8"}, "openai"),
        ({"system_fingerprint": "b4567-2f1ea6e1"}, "generic"),
        ({}, "generic"),
    ],
)
def test_auto_resolves_the_profile_from_real_stream_markers(marker: dict[str, Any], profile: str) -> None:
    extra_choice = marker.pop("choice", {})
    chunks = [chunk({"index": 0, "delta": {"content": ""}, "finish_reason": "stop", **extra_choice}, **marker)]
    assert assemble(chunks, "auto") == assemble(chunks, profile)


def _vllm_stream(*deltas: dict[str, Any], prompt_token_ids: bool = True) -> list[dict[str, Any]]:
    """A vLLM chat stream: ``prompt_token_ids`` on the first chunk from 0.10.2 on."""
    top = {"prompt_token_ids": None} if prompt_token_ids else {}
    chunks = [chunk({"index": 0, "delta": {"role": "assistant", "content": "", **deltas[0]}}, **top)]
    chunks += [chunk({"index": 0, "delta": delta}) for delta in deltas[1:]]
    chunks.append(chunk({"index": 0, "delta": {"content": ""}, "finish_reason": "stop", "stop_reason": None}))
    return chunks


@pytest.mark.parametrize(
    ("deltas", "prompt_token_ids", "line"),
    [
        # 0.10.0-0.10.1: no prompt_token_ids at all.
        (({}, {"content": "hi"}), False, "vllm-0.10"),
        # 0.10.2-0.11.0: reasoning_content deltas only where there is reasoning.
        (({}, {"reasoning_content": "r"}, {"content": "hi"}), True, "vllm-0.11.0"),
        # 0.11.1-0.15: reasoning_content on every delta, reasoning beside it.
        (
            (
                {"reasoning_content": None},
                {"reasoning": "r", "reasoning_content": "r"},
                {"content": "hi", "reasoning_content": None},
            ),
            True,
            "vllm-0.11.1",
        ),
        (({"reasoning_content": None}, {"content": "hi", "reasoning_content": None}), True, "vllm-0.11.1"),
        # 0.16 on: reasoning only; the stream cannot tell 0.16-0.23 from the current line.
        (({}, {"reasoning": "r"}, {"content": "hi"}), True, "vllm"),
        (({}, {"content": "hi"}), True, "vllm"),
    ],
)
def test_auto_follows_the_vllm_release_line_its_stream_shows(
    deltas: tuple[dict[str, Any], ...], prompt_token_ids: bool, line: str
) -> None:
    chunks = _vllm_stream(*deltas, prompt_token_ids=prompt_token_ids)
    assert assemble(chunks, "auto") == assemble(chunks, line)


def test_vllm_lines_differ_in_the_reasoning_key_and_empty_tool_calls() -> None:
    chunks = _vllm_stream({}, {"content": "hi"})
    messages = {
        name: assemble(chunks, name)["choices"][0]["message"]
        for name in ("vllm", "vllm-0.16", "vllm-0.11.1", "vllm-0.11.0")
    }
    assert messages["vllm"] == {
        "role": "assistant",
        "content": "hi",
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
        "reasoning": None,
    }
    assert messages["vllm-0.16"] == {**messages["vllm"], "tool_calls": []}
    assert messages["vllm-0.11.1"] == {**messages["vllm-0.16"], "reasoning_content": None}
    assert messages["vllm-0.11.0"] == {
        key: value for key, value in messages["vllm-0.11.1"].items() if key != "reasoning"
    }


def test_the_stream_reasoning_key_wins_over_the_profile() -> None:
    old_key = assemble(_vllm_stream({}, {"reasoning_content": "r"}, {"content": "hi"}), "vllm")["choices"][0]["message"]
    assert old_key["reasoning_content"] == "r" and "reasoning" not in old_key
    new_key = assemble(_vllm_stream({}, {"reasoning": "r"}, {"content": "hi"}), "vllm-0.11.0")["choices"][0]["message"]
    assert new_key["reasoning"] == "r" and "reasoning_content" not in new_key


def test_profiles_only_shape_keys_never_values() -> None:
    chunks = [
        chunk(
            {"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"},
            usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        )
    ]
    for name in PROFILES:
        answer = assemble(chunks, name)
        assert answer["choices"][0]["message"]["content"] == "hi"
        assert answer["usage"]["total_tokens"] == 2


def test_unknown_profile_and_schema_name_the_valid_values() -> None:
    with pytest.raises(ValueError, match="valid profiles: auto, generic, openai, vllm"):
        get_profile("vllm2")
    with pytest.raises(ValueError, match="valid schemas: chat, completions, responses, messages"):
        make_assembler("batches", "auto")
