"""A whole body fed at once (buffered mode) gives exactly the outcome of taking it event by event.

The whole-body path matches runs of chat chunks against the learned template and decodes their
texts in bulk; wherever anything deviates it hands over to the per-event path. Both ways must give
the same answer, or the same error with the same message (which numbers the failing event).
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buffered_stream.core import template
from buffered_stream.core.convert import StreamConverter
from buffered_stream.core.errors import ConversionError
from buffered_stream.schemas.messages.request import NAME as MESSAGES
from buffered_stream.schemas.responses.request import NAME as RESPONSES
from support.apis import api_of
from support.corpus import APIS, Case, at_event_ends, each_case

GENERATED_TOOL_CALL_ID = re.compile(rb"call_[0-9a-f]{24}")
HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m"}


@pytest.fixture(scope="module", params=["native", "python"], autouse=True)
def run_matcher(request: pytest.FixtureRequest) -> Any:
    """Every test here runs with the native run matcher (``core/_runs.c``) and with the Python one."""
    native = template._runs
    assert native is not None, "buffered_stream.core._runs was not built: is a C compiler installed?"
    template._runs = native if request.param == "native" else None
    yield request.param
    template._runs = native


def outcome(
    schema: Any, body: bytes, *, whole_body: bool, profile: str = "auto", parse_all: bool = False, **limits: int
) -> tuple[str, Any]:
    """The answer (or error) of ``body`` fed in one piece, or, with ``whole_body`` False, with
    every event taken one by one; ``parse_all``: with no fast path at all."""
    converter = StreamConverter(api_of(schema), profile, whole_body=whole_body, fast_path=not parse_all, **limits)
    try:
        converter.feed(body)
        answer = GENERATED_TOOL_CALL_ID.sub(b"GENERATED", converter.finish())  # random by design
        return "answer", (orjson.loads(answer), converter.events)
    except ConversionError as error:
        return "error", (error.kind, error.status, str(error))


def assert_same_outcome(schema: Any, body: bytes, **options: Any) -> tuple[str, Any]:
    whole = outcome(schema, body, whole_body=True, **options)
    assert whole == outcome(schema, body, whole_body=False, **options)
    return whole


def assert_taken_unparsed(schema: Any, body: bytes, *, at_least: int) -> None:
    """At least ``at_least`` events of ``body`` were taken by the fast path, without parsing."""
    converter = StreamConverter(api_of(schema))
    converter.feed(body)
    assert converter._fast_path._template_hits >= at_least  # noqa: SLF001 - the count it keeps
    converter.finish()


def assert_same_outcome_as_parsed(schema: Any, body: bytes, **options: Any) -> tuple[str, Any]:
    """Whole body, event by event, and every event parsed: one outcome."""
    whole = assert_same_outcome(schema, body, **options)
    assert whole == outcome(schema, body, whole_body=False, parse_all=True, **options)
    return whole


@each_case(*APIS)
def test_every_corpus_case_gives_the_same_outcome_both_ways(case: Case) -> None:
    assert_same_outcome_as_parsed(case.api, case.body, profile=case.profile)


@each_case(*APIS)
def test_every_corpus_case_fed_one_event_at_a_time_gives_the_same_outcome(case: Case) -> None:
    """Streamed mode: one upstream chunk per event, the shape the one-event fast path takes."""
    schema, body, profile = case.api, case.body, case.profile
    converter = StreamConverter(api_of(schema), profile)
    try:
        for piece in at_event_ends(body):
            converter.feed(piece)
        one_by_one: tuple[str, Any] = (
            "answer",
            (orjson.loads(GENERATED_TOOL_CALL_ID.sub(b"GENERATED", converter.finish())), converter.events),
        )
    except ConversionError as error:
        one_by_one = "error", (error.kind, error.status, str(error))
    assert one_by_one == outcome(schema, body, whole_body=True, profile=profile)


def event(delta: dict[str, Any], finish_reason: str | None = None, **top: Any) -> bytes:
    return orjson.dumps(
        {**HEAD, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **top}
    )


def sse(payloads: list[bytes], end: bytes = b"data: [DONE]\n\n") -> bytes:
    return b"".join(b"data: " + payload + b"\n\n" for payload in payloads) + end


def text_stream(texts: list[str]) -> list[bytes]:
    return [
        event({"role": "assistant", "content": ""}),
        *(event({"content": text}) for text in texts),
        event({}, "stop"),
    ]


def test_a_long_answer_is_taken_in_runs_with_the_same_answer() -> None:
    texts = [f" word{i}" for i in range(3000)]
    kind, (answer, events) = assert_same_outcome("chat", sse(text_stream(texts)))
    assert kind == "answer" and answer["choices"][0]["message"]["content"] == "".join(texts)
    assert events == len(texts) + 3


def test_runs_are_really_taken_without_parsing() -> None:
    """The template takes every text chunk but the first (learned from) and the last of each run."""
    assert_taken_unparsed("chat", sse(text_stream([f" w{i}" for i in range(2000)])), at_least=1990)


@pytest.mark.parametrize(
    "middle",
    [
        b'\\"',  # an escaped quote
        b"\\\\",  # an escaped backslash at the end of a middle
        b'a\\\\"',  # ... then a quote that closes the string
        b"\\",  # a lone backslash: escapes the template's own quote
        b"\\ud83d",  # half a surrogate pair
        b"\\u00e9\\n\\t",
        b'","',  # what joins middles into an array
        b'"},"x":"',  # breaks out of the string
        b"\x01",  # a raw control character
        b"\n\ndata: ",  # a forged event boundary
        b"\ndata: ",
        b"x" * 3000,  # longer than max_event_bytes below
    ],
)
def test_a_forged_middle_anywhere_in_a_run_gives_the_per_event_outcome(middle: bytes) -> None:
    payloads = text_stream([f" t{i}" for i in range(400)])
    prefix, _, suffix = event({"content": "MIDDLE"}).partition(b"MIDDLE")
    for position in (2, 3, 40, 200, 399):
        forged = [*payloads[:position], prefix + middle + suffix, *payloads[position:]]
        assert_same_outcome("chat", sse(forged), max_event_bytes=2048)


@pytest.mark.parametrize(
    ("inserted", "field"),
    [
        (b"\n", b"data: "),
        (b": keep-alive\n\n", b"data: "),
        (b"data: \n\n", b"data: "),
        (b"event: x\n", b"data: "),
        (b"id: 3\n", b"data: "),
        (b"", b"data:"),
        (b"", b"data:  "),
        (b"", b"data: \n"),
        (b"", b"data: {}\n"),
    ],
)
def test_a_different_boundary_inside_a_run_gives_the_per_event_outcome(inserted: bytes, field: bytes) -> None:
    body = sse(text_stream([f" t{i}" for i in range(300)]))
    for occurrence in (3, 50, 150, 299):
        at = -1
        for _ in range(occurrence):
            at = body.find(b"\n\ndata: ", at + 1)
        forged = body[: at + 2] + inserted + field + body[at + 2 + len(b"data: ") :]
        assert_same_outcome("chat", forged)


def test_tgi_data_lines_without_a_space_are_taken_in_runs_too() -> None:
    body = sse(text_stream([f" t{i}" for i in range(300)])).replace(b"data: ", b"data:")
    kind, (answer, _) = assert_same_outcome("chat", body)
    assert kind == "answer"


texts = st.text('ab \\"', max_size=3) | st.text(st.characters(codec="utf-8"), max_size=4)
forgeries = st.binary(max_size=6) | st.sampled_from(
    [b"\\", b'\\"', b"\\\\", b'"', b"\n", b"\n\n", b"\r", b'","', b"\\ud83d", b"data: "]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["content", "content", "content", "reasoning_content"]), texts),
        min_size=1,
        max_size=120,
    ),
    st.lists(st.tuples(st.integers(0, 130), forgeries), max_size=4),
    st.lists(
        st.tuples(
            st.integers(0, 130), st.sampled_from([b"\n", b": c\n", b"\r\n", b"data:", b"x", b"data: [DONE]\n\n"])
        ),
        max_size=3,
    ),
    st.integers(200, 400),
)
def test_any_stream_with_forged_middles_and_boundaries_gives_the_per_event_outcome(
    steps: list[tuple[str, str]], middles: list[tuple[int, bytes]], boundaries: list[tuple[int, bytes]], max_event: int
) -> None:
    payloads = [
        event({"role": "assistant", "content": ""}),
        *(event({key: text}) for key, text in steps),
        event({}, "stop"),
    ]
    prefix, _, suffix = event({"content": "MIDDLE"}).partition(b"MIDDLE")
    for position, middle in middles:
        payloads.insert(min(position, len(payloads)), prefix + middle + suffix)
    events = [b"data: " + payload + b"\n\n" for payload in payloads]
    for position, extra in boundaries:
        events.insert(min(position, len(events)), extra)
    assert_same_outcome("chat", b"".join(events) + b"data: [DONE]\n\n", max_event_bytes=max_event)


def messages_body(texts: list[str], *, after_stop: bytes = b"") -> bytes:
    """An Anthropic Messages stream: every event named, one text block."""

    def named(data: dict[str, Any]) -> bytes:
        return b"event: " + data["type"].encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    parts = [
        named({"type": "message_start", "message": message}),
        named({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ]
    parts += [
        named({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}) for t in texts
    ]
    parts += [
        named({"type": "content_block_stop", "index": 0}),
        named(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(texts)},
            }
        ),
        named({"type": "message_stop"}),
    ]
    return b"".join(parts) + after_stop


def test_named_events_are_taken_in_runs_with_the_same_answer() -> None:
    texts = [f" word{i}" for i in range(2000)]
    body = messages_body(texts)
    kind, (answer, _) = assert_same_outcome_as_parsed(MESSAGES, body)
    assert kind == "answer" and answer["content"][0]["text"] == "".join(texts)
    assert_taken_unparsed(MESSAGES, body, at_least=1990)


@pytest.mark.parametrize(
    "line",
    [
        b"event: error\n",  # the one name that means something: an in-stream error
        b"event: bare-json\n",
        b"event: content_block_delta \n",  # a name with a trailing space
        b"event: ping\n",  # a keep-alive, whatever its data: dropped both ways
        b"event:content_block_delta\n",
        b"id: 9\nevent: content_block_delta\n",
        b"",  # no name at all
    ],
)
def test_a_different_event_line_inside_a_named_run_gives_the_per_event_outcome(line: bytes) -> None:
    events = messages_body([f" t{i}" for i in range(300)]).split(b"\n\n")
    named = b"event: content_block_delta\n"
    for first in (4, 50, 150, 299):
        for renamed in (1, 3):  # one event, or several in a row (a run could start at them)
            forged = list(events)
            for index in range(first, first + renamed):
                assert forged[index].startswith(named)
                forged[index] = line + forged[index][len(named) :]
            assert_same_outcome_as_parsed(MESSAGES, b"\n\n".join(forged))


def test_text_deltas_after_message_stop_are_ignored_both_ways() -> None:
    late = b"".join(
        b"event: content_block_delta\ndata: "
        + orjson.dumps(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f" late{i}"}}
        )
        + b"\n\n"
        for i in range(50)
    )
    kind, (answer, _) = assert_same_outcome_as_parsed(
        MESSAGES, messages_body([f" t{i}" for i in range(100)], after_stop=late)
    )
    assert kind == "answer" and "late" not in answer["content"][0]["text"]


def responses_body(deltas: list[dict[str, Any]], *, after_terminal: bytes = b"", numbered: bool = False) -> bytes:
    """A Responses stream with one message: llama.cpp-shaped (bare events), or ``numbered`` as
    vLLM, SGLang and Ollama write it (sorted keys, a ``sequence_number`` on every event)."""
    numbers = iter(range(10**6))

    def named(data: dict[str, Any]) -> bytes:
        if numbered:
            data = {"sequence_number": next(numbers), **data}
        options = orjson.OPT_SORT_KEYS if numbered else 0
        return b"event: " + data["type"].encode() + b"\ndata: " + orjson.dumps(data, option=options) + b"\n\n"

    item = {"type": "message", "id": "msg_1", "status": "in_progress", "role": "assistant", "content": []}
    response = {
        "id": "resp_1",
        "object": "response",
        "created_at": 7,
        "status": "in_progress",
        "model": "m",
        "output": [],
    }
    parts = [
        named({"type": "response.created", "response": response}),
        named({"type": "response.output_item.added", "output_index": 0, "item": item}),
        named(
            {
                "type": "response.content_part.added",
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []},
            }
        ),
    ]
    parts += [named({"type": "response.output_text.delta", "item_id": "msg_1", **delta}) for delta in deltas]
    done = {
        **response,
        "status": "completed",
        "usage": {"input_tokens": 3, "output_tokens": len(deltas), "total_tokens": 3 + len(deltas)},
    }
    parts.append(named({"type": "response.completed", "response": done}))
    return b"".join(parts) + after_terminal


@pytest.mark.parametrize("numbered", [False, True])
def test_responses_text_deltas_are_taken_in_runs_with_the_same_answer(numbered: bool) -> None:
    texts = [f" word{i}" for i in range(2000)]
    body = responses_body([{"delta": text} for text in texts], numbered=numbered)
    kind, (answer, _) = assert_same_outcome_as_parsed(RESPONSES, body)
    assert kind == "answer" and answer["output"][0]["content"][0]["text"] == "".join(texts)
    assert_taken_unparsed(RESPONSES, body, at_least=1990)


@pytest.mark.parametrize(
    "odd",
    [
        {"delta": "x", "logprobs": [{"token": "x", "logprob": -0.5}]},  # logprobs go to the part too
        {"delta": "x", "logprobs": []},
        {"delta": "x", "output_index": 1},  # another part key: another part
        {"delta": "x", "content_index": 2},
        {"delta": 7},  # not text: an error
        {"delta": "x", "sequence_number": 9},
    ],
)
def test_an_odd_text_delta_inside_a_responses_run_gives_the_per_event_outcome(odd: dict[str, Any]) -> None:
    deltas: list[dict[str, Any]] = [{"delta": f" t{i}"} for i in range(300)]
    for position in (0, 1, 2, 150, 299):
        for repeat in (1, 3):
            for numbered in (False, True):
                body = responses_body([*deltas[:position], *[odd] * repeat, *deltas[position:]], numbered=numbered)
                assert_same_outcome_as_parsed(RESPONSES, body)


@pytest.mark.parametrize("middle", [b"\\x", b"\xff", b"\xc3", b"\\ud83d", b'\\"', b"\xc3\xa9", b"\\n\\u00e9", b"\\"])
def test_a_forged_text_inside_a_numbered_responses_run_gives_the_per_event_outcome(middle: bytes) -> None:
    events = responses_body([{"delta": f" t{i}"} for i in range(300)], numbered=True).split(b"\n\n")
    deltas = [i for i, event in enumerate(events) if b'"delta":" t' in event]
    for index in (deltas[1], deltas[2], deltas[150], deltas[-1]):
        forged = list(events)
        forged[index] = re.sub(rb'"delta":" t\d+"', lambda _: b'"delta":"' + middle + b'"', forged[index])
        assert_same_outcome_as_parsed(RESPONSES, b"\n\n".join(forged))


@pytest.mark.parametrize(
    "counter",
    [
        b"07",
        b"00",
        b"-1",
        b"1.0",
        b"1e3",
        b"",
        b"1234567890123456789",
        b"18446744073709551616",
        b"true",
        b'"5"',
        b"null",
    ],
)
def test_an_odd_sequence_number_inside_a_responses_run_gives_the_per_event_outcome(counter: bytes) -> None:
    """The counter a template leaves open takes only integers orjson reads the same; anything else
    goes through the parser (which may reject the event)."""
    events = responses_body([{"delta": f" t{i}"} for i in range(300)], numbered=True).split(b"\n\n")
    deltas = [i for i, event in enumerate(events) if b'"delta":" t' in event]
    for index in (deltas[0], deltas[1], deltas[150], deltas[-1]):
        forged = list(events)
        forged[index] = re.sub(rb'"sequence_number":\d+', b'"sequence_number":' + counter, forged[index])
        assert_same_outcome_as_parsed(RESPONSES, b"\n\n".join(forged))


def test_responses_text_deltas_after_the_terminal_event_are_ignored_both_ways() -> None:
    late = b"".join(
        b"event: response.output_text.delta\ndata: "
        + orjson.dumps({"type": "response.output_text.delta", "item_id": "msg_1", "delta": f" late{i}"})
        + b"\n\n"
        for i in range(50)
    )
    kind, (answer, _) = assert_same_outcome_as_parsed(
        RESPONSES, responses_body([{"delta": f" t{i}"} for i in range(100)], after_terminal=late)
    )
    assert kind == "answer" and "late" not in orjson.dumps(answer).decode()
