"""Payloads taken unparsed by a text template give exactly the answer (or error) of parsing them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from buffered_stream.core.convert import StreamConverter
from buffered_stream.core.errors import ConversionError
from buffered_stream.core.fast_path import TextFastPath
from buffered_stream.schemas.chat import ChatAssembler
from support.apis import api_of

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m"}


def outcome(payloads: list[bytes], *, templates: bool) -> tuple[str, Any]:
    converter = StreamConverter(api_of("chat"), fast_path=templates)
    try:
        converter.feed(b"".join(b"data: " + payload + b"\n\n" for payload in payloads))
        return "answer", orjson.loads(converter.finish())
    except ConversionError as error:
        return "error", (error.kind, error.status, str(error))


def assert_same_outcome(payloads: list[bytes]) -> tuple[str, Any]:
    with_templates = outcome(payloads, templates=True)
    assert with_templates == outcome(payloads, templates=False)
    return with_templates


def offered_as_the_converter_does() -> Callable[[bytes], bool]:
    """A chat assembler behind the core's fast path: a payload offered is taken unparsed (True) or
    parsed, folded and learned from (False), as ``StreamConverter`` does."""
    assembler, fast_path = ChatAssembler(), TextFastPath()

    def offer(payload: bytes) -> bool:
        if fast_path.add_raw(payload):
            return True
        chunk = orjson.loads(payload)
        assembler.add(chunk)
        if fast_path.payload is not None:
            fast_path.learn(chunk, assembler.text_target(chunk))
        return False

    return offer


def event(delta: dict[str, Any], finish_reason: str | None = None, ensure_ascii: bool = False, **top: Any) -> bytes:
    chunk = {**HEAD, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **top}
    return json.dumps(chunk, ensure_ascii=True).encode() if ensure_ascii else orjson.dumps(chunk)


def stream(texts: list[str], key: str = "content") -> list[bytes]:
    return [event({"role": "assistant", key: ""}), *(event({key: text}) for text in texts), event({}, "stop")]


def test_repeated_text_chunks_are_taken_unparsed_with_the_same_answer() -> None:
    kind, answer = assert_same_outcome(stream(["Hello", " wor", "ld", "!"]))
    assert kind == "answer" and answer["choices"][0]["message"]["content"] == "Hello world!"
    offer = offered_as_the_converter_does()
    first, second, third = stream(["a", "b"])[:3]
    assert not offer(first)
    assert not offer(second)
    assert offer(third)  # the template learned from the second chunk


def test_escaped_and_non_ascii_text_is_read_like_the_parser_reads_it() -> None:
    texts = ["plain", 'a "quote"', "back\\slash", "line\n", "tab\t", "é", "😀", "\u2028", "\x7f", "}]}"]
    assert_same_outcome(stream(texts))
    assert_same_outcome([event({"content": text}, ensure_ascii=True) for text in ["x", "é", "y"]] + [event({}, "stop")])


def test_a_middle_that_breaks_out_of_the_string_is_parsed_as_what_it_is() -> None:
    good = event({"content": "ab"})
    prefix, suffix = good.split(b"ab")
    injected = [
        prefix + b'x","refusal":"no' + suffix,  # a second delta key
        prefix + b'x"},"finish_reason":"stop","index":0,"delta":{"content":"y' + suffix,
        prefix + b"\xff\xfe" + suffix,  # not UTF-8
        prefix + b"raw\ncontrol" + suffix,
        prefix + b"\\u12" + suffix,
        prefix + b'"' + suffix,
    ]
    for payload in injected:
        assert_same_outcome([event({"role": "assistant", "content": ""}), good, good, payload, good, event({}, "stop")])


def test_arguments_pieces_follow_their_call_even_when_the_index_moves_to_a_new_call() -> None:
    def call(index: int, **fields: Any) -> bytes:
        return event({"tool_calls": [{"index": index, **fields}]})

    payloads = [
        event({"role": "assistant", "content": None}),
        call(0, id="a", type="function", function={"name": "f", "arguments": ""}),
        call(0, function={"arguments": "{"}),
        call(0, function={"arguments": '"x": 1'}),
        call(0, function={"arguments": "}"}),
        call(0, id="b", type="function", function={"name": "g", "arguments": ""}),  # Ollama: a new call at 0
        call(0, function={"arguments": "{"}),
        call(0, function={"arguments": "}"}),
        event({}, "tool_calls"),
    ]
    kind, answer = assert_same_outcome(payloads)
    calls = answer["choices"][0]["message"]["tool_calls"]
    assert [(c["id"], c["function"]["arguments"]) for c in calls] == [("a", '{"x": 1}'), ("b", "{}")]


def test_a_role_repeated_beside_the_text_is_kept_first() -> None:
    payloads = [event({"role": "assistant", "content": "a"}), event({"role": "assistant", "content": "b"})]
    payloads += [event({"role": "tool", "content": "c"}), event({"content": "d", "role": "assistant"})]
    payloads += [event({"role": "assistant", "content": "e"}), event({}, "stop")]
    kind, answer = assert_same_outcome(payloads)
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "abcde"}


def test_openai_random_padding_is_skipped_and_anything_else_there_is_parsed() -> None:
    def padded(text: str, padding: str) -> bytes:
        return event({"content": text}, service_tier="default", usage=None, obfuscation=padding)

    payloads = [event({"role": "assistant", "content": ""}, obfuscation="x")]
    payloads += [padded(f"t{i} ", "aBc9"[: i % 5]) for i in range(12)]
    payloads += [padded("q", "é"), padded('"', "k"), padded("r", 'p"q'), padded("s", "\\"), padded("u", "z")]
    prefix, suffix = padded("MIDDLE", "PAD").split(b"MIDDLE")
    head, _ = suffix.split(b"PAD")
    forged = [
        prefix + b"v" + head + b'"}',  # the padding's own quote missing: the text's closing quote is its
        prefix + b"v" + head[:-1] + b"}",
        prefix + b"v" + head + b"a" + head + b'b"}',
        prefix + b"v" + head + b'a","x":"b"}',
        prefix + b"v" + head + b"\xff" + b'"}',
        prefix + b"v" + head + b"a" + b'"} ',
        prefix + b'v"' + head + b'a"}',
    ]
    payloads += [item for payload in forged for item in (payload, padded("w", "ok"))]
    kind, answer = assert_same_outcome([*payloads, event({}, "stop", obfuscation="")])
    assert kind == "error" or "obfuscation" not in answer


def test_chunks_that_differ_elsewhere_are_parsed() -> None:
    payloads = [event({"role": "assistant", "content": ""})]
    payloads += [event({"content": f"t{i}"}, created=7 + i // 3, obfuscation="x" * (i % 5)) for i in range(30)]
    payloads += [event({"reasoning_content": "r"}), event({"content": "z"}, system_fingerprint="fp")]
    payloads += [event({}, "stop")]
    assert_same_outcome(payloads)


texts = st.text("ab ", max_size=3) | st.text(st.characters(codec="utf-8"), max_size=6)


@settings(max_examples=400)
@given(
    st.booleans(),
    st.lists(
        st.tuples(
            st.sampled_from(["content", "content", "content", "reasoning_content", "refusal"]),
            texts,
            st.sampled_from([7, 7, 7, 8]),  # a server stamping chunks by the second
        ),
        max_size=40,
    ),
    st.lists(st.tuples(st.integers(0, 40), st.binary(max_size=8) | texts.map(str.encode)), max_size=3),
)
def test_any_text_stream_and_any_forged_middle_give_the_parsed_outcome(
    ascii_only: bool, steps: list[tuple[str, str, int]], forged: list[tuple[int, bytes]]
) -> None:
    payloads = [event({"role": "assistant", "content": ""}, ensure_ascii=ascii_only)]
    payloads += [event({key: text}, ensure_ascii=ascii_only, created=created) for key, text, created in steps]
    prefix, _, suffix = event({"content": "MIDDLE"}, ensure_ascii=ascii_only).partition(b"MIDDLE")
    for position, middle in forged:
        payloads.insert(min(position, len(payloads)), prefix + middle + suffix)
    payloads.append(event({}, "stop"))
    assert_same_outcome(payloads)


def test_deltas_with_null_tool_calls_are_no_template_and_no_error() -> None:
    chunk = {**HEAD, "choices": [{"index": 0, "delta": {"tool_calls": None}, "finish_reason": None}]}
    text = {**HEAD, "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}
    kind, answer = outcome([orjson.dumps(chunk), orjson.dumps(chunk), orjson.dumps(text)], templates=True)
    assert kind == "answer" and answer["choices"][0]["message"]["content"] == "hi"
    assert (kind, answer) == outcome([orjson.dumps(chunk), orjson.dumps(chunk), orjson.dumps(text)], templates=False)


def test_nulls_repeated_beside_the_text_stay_in_the_template() -> None:
    """vLLM 0.11.1-0.15 send ``reasoning_content: null`` on every delta, SGLang ``role`` and
    ``reasoning_content`` null: the chunks still repeat but for their text."""
    vllm = [event({"role": "assistant", "content": "", "reasoning_content": None})]
    vllm += [event({"reasoning": text, "reasoning_content": text}) for text in ["a", "b"]]
    vllm += [event({"content": text, "reasoning_content": None}) for text in ["x", "y", "z"]]
    sglang = [event({"role": "assistant", "content": "", "reasoning_content": None})]
    sglang += [event({"role": None, "content": text, "reasoning_content": None}) for text in ["x", "y", "z"]]
    for payloads in (vllm, sglang):
        kind, answer = assert_same_outcome([*payloads, event({}, "stop")])
        assert kind == "answer" and answer["choices"][0]["message"]["content"] == "xyz"
        offer = offered_as_the_converter_does()
        taken = [offer(payload) for payload in payloads]
        assert taken[-1], "the last text chunk was taken unparsed"
    first_null = [
        event({"role": "assistant", "content": ""}),
        event({"content": "a", "refusal": None}),
        event({"content": "b", "refusal": None}),
    ]
    assert assert_same_outcome([*first_null, event({}, "stop")])[1]["choices"][0]["message"]["refusal"] is None
