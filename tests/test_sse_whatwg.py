"""The SSE decoder against the WHATWG event-stream parsing rules, one table row per rule, every
row under several chunkings; and a BOM-prefixed stream through ``StreamConverter``.

Spec: https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
The project's own extensions (``error:`` field, bare JSON line, ``close()`` dispatching an
unterminated event) have rows too, so that the rules and the extensions are seen to coexist.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from buffered_stream.core.convert import StreamConverter
from buffered_stream.core.errors import ConversionError
from buffered_stream.core.sse import BARE_JSON_EVENT, ERROR_EVENT, SseDecoder
from support.apis import api_of
from support.corpus import at_event_ends, byte_by_byte, every_chunking, fixed_size, whole

BIG = 1 << 20
BOM = b"\xef\xbb\xbf"


def decode(chunks: list[bytes]) -> list[tuple[str, bytes]]:
    decoder = SseDecoder(BIG, BIG)
    events = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.close()


def chunkings(body: bytes) -> Iterator[list[bytes]]:
    """Whole, byte by byte (also with empty chunks between), every two-piece split, and every
    three-piece split of short bodies (a BOM or CRLF cut in three)."""
    yield from every_chunking(body)
    yield [b"", *(piece for i in range(len(body)) for piece in (body[i : i + 1], b""))]
    if len(body) <= 24:
        for a in range(len(body) + 1):
            for b in range(a, len(body) + 1):
                yield [body[:a], body[a:b], body[b:]]


# rule -> (body, expected events); "" is the default event type (the spec's "message").
RULES: dict[str, tuple[bytes, list[tuple[str, bytes]]]] = {
    # Line ends: CR, LF, CRLF; CR then LF across a chunk boundary is one line end (every split).
    "line end LF": (b"data: a\n\ndata: b\n\n", [("", b"a"), ("", b"b")]),
    "line end CR": (b"data: a\r\rdata: b\r\r", [("", b"a"), ("", b"b")]),
    "line end CRLF": (b"data: a\r\n\r\ndata: b\r\n\r\n", [("", b"a"), ("", b"b")]),
    "CR then CRLF is a blank line": (b"data: a\r\r\ndata: b\n\n", [("", b"a"), ("", b"b")]),
    "LF then CR is a blank line": (b"data: a\n\rdata: b\n\n", [("", b"a"), ("", b"b")]),
    "CRLF then CR is a blank line": (b"data: a\r\n\rdata: b\r\n\n", [("", b"a"), ("", b"b")]),
    "CR ends a line inside a value": (b"data: a\rb\n\n", [("", b"a")]),
    "CR ends a data line of a multi-line event": (b"data: a\rdata: b\r\r", [("", b"a\nb")]),
    # Comments.
    "comment line ignored": (b": hi\ndata: a\n: there\n\n", [("", b"a")]),
    "empty comment": (b":\ndata: a\n\n", [("", b"a")]),
    "comment that looks like data": (b":data: a\n\n", []),
    "comment-only blocks dispatch nothing": (b": ping\n\n: ping\r\n\r\n", []),
    "space before colon is no comment": (b" : x\ndata: a\n\n", [("", b"a")]),
    # A field line without a colon: the whole line is the name, the value is empty.
    "data without colon appends an empty line": (b"data\n\n", [("", b"")]),
    "two bare data lines": (b"data\ndata\n\n", [("", b"\n")]),
    "bare data then data": (b"data\ndata: a\n\n", [("", b"\na")]),
    "data then bare data": (b"data: a\ndata\n\n", [("", b"a\n")]),
    "bare event sets the default type": (b"event: x\nevent\ndata: a\n\n", [("", b"a")]),
    "name with trailing space is another field": (b"data \n\ndata : a\n\n", []),
    # Exactly one leading space of the value is removed.
    "no space": (b"data:a\n\n", [("", b"a")]),
    "one space": (b"data: a\n\n", [("", b"a")]),
    "two spaces keep one": (b"data:  a\n\n", [("", b" a")]),
    "only a space": (b"data: \n\n", [("", b"")]),
    "tab is kept": (b"data:\ta\n\n", [("", b"\ta")]),
    "trailing space is kept": (b"data: a \n\n", [("", b"a ")]),
    "event value loses one space": (b"event:  x\ndata: a\n\nevent:y\ndata:b\n\n", [(" x", b"a"), ("y", b"b")]),
    "colon in the value stays": (b"data: a: b\n\n", [("", b"a: b")]),
    # data lines joined with LF; an empty data buffer is not dispatched; the type resets.
    "data lines joined with LF": (b"data: a\ndata: b\ndata: c\n\n", [("", b"a\nb\nc")]),
    "empty data lines joined": (b"data:\ndata:\n\n", [("", b"\n")]),
    "event without data not dispatched": (b"event: x\n\n", []),
    "type resets even when nothing was dispatched": (b"event: x\n\ndata: a\n\n", [("", b"a")]),
    "type resets after dispatch": (b"event: x\ndata: a\n\ndata: b\n\n", [("x", b"a"), ("", b"b")]),
    "last event line wins": (b"event: x\nevent: y\ndata: a\n\n", [("y", b"a")]),
    "event after data applies": (b"data: a\nevent: x\n\n", [("x", b"a")]),
    "blank lines between events": (b"\n\n\ndata: a\n\n\r\n\rdata: b\n\n", [("", b"a"), ("", b"b")]),
    # id with NUL and retry with non-digits are ignored, like every id and retry: no event breaks.
    "id with NUL": (b"id: a\x00b\ndata: x\n\n", [("", b"x")]),
    "id after data with NUL": (b"data: x\nid: \x00\n\n", [("", b"x")]),
    "bare id": (b"id\ndata: x\n\n", [("", b"x")]),
    "id alone dispatches nothing": (b"id: 1\n\n", []),
    "retry with non-digits": (b"retry: 1a\ndata: x\n\n", [("", b"x")]),
    "retry negative": (b"data: x\nretry: -1\n\n", [("", b"x")]),
    "retry digits": (b"retry: 1000\ndata: x\n\n", [("", b"x")]),
    "bare retry": (b"retry\ndata: x\n\n", [("", b"x")]),
    # Unknown fields are ignored; names are case-sensitive.
    "unknown field": (b"foo: bar\ndata: x\nbaz\n\n", [("", b"x")]),
    "names are case-sensitive": (b"Data: x\nEVENT: y\n\n", []),
    "unknown field alone dispatches nothing": (b"foo: x\n\n", []),
    # One leading BOM of the stream is removed: only at the start, only once.
    "BOM at start": (BOM + b"data: a\n\n", [("", b"a")]),
    "BOM then event line": (BOM + b"event: x\ndata: a\n\n", [("x", b"a")]),
    "BOM then comment": (BOM + b": hi\ndata: a\n\n", [("", b"a")]),
    "BOM then blank line": (BOM + b"\r\ndata: a\r\n\r\n", [("", b"a")]),
    "BOM then bare data": (BOM + b"data\n\n", [("", b"")]),
    "BOM alone": (BOM, []),
    "second BOM stays in the field name": (BOM + BOM + b"data: a\n\ndata: b\n\n", [("", b"b")]),
    "BOM later in the stream stays": (b"data: a\n\n" + BOM + b"data: b\n\n", [("", b"a")]),
    "BOM on a later line of the first event stays": (BOM + b"data: a\n" + BOM + b"data: b\n\n", [("", b"a")]),
    "BOM in a value stays": (b"data: " + BOM + b"a\n\n", [("", BOM + b"a")]),
    "partial BOM is no BOM": (b"\xef\xbbdata: a\n\ndata: b\n\n", [("", b"b")]),
    "partial BOM alone": (b"\xef\xbb", []),
    "BOM after a blank line stays": (b"\n" + BOM + b"data: a\n\n", []),
    # The project's extensions still hold (after a BOM too).
    "extension: close dispatches the unterminated event": (BOM + b"data: a\ndata: [DONE]", [("", b"a\n[DONE]")]),
    "extension: error field": (BOM + b'error: {"e":1}\n\n', [(ERROR_EVENT, b'{"e":1}')]),
    "extension: bare JSON line": (BOM + b'{"e":1}\n', [(BARE_JSON_EVENT, b'{"e":1}')]),
}


@pytest.mark.parametrize(("body", "expected"), RULES.values(), ids=RULES.keys())
def test_rule_holds_in_every_chunking(body: bytes, expected: list[tuple[str, bytes]]) -> None:
    for chunks in chunkings(body):
        assert decode(chunks) == expected, chunks


def test_bom_split_across_chunks_is_removed_as_soon_as_it_is_complete() -> None:
    decoder = SseDecoder(BIG, BIG)
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\xef\xbb") == []
    assert not decoder.at_event_start  # the next bytes may still complete the BOM
    assert decoder.feed(b"\xbfdata: a\n\n") == [("", b"a")]
    assert decoder.at_event_start
    assert decoder.feed(BOM + b"data: b\n\ndata: c\n\n") == [("", b"c")]


# StreamConverter: a BOM-prefixed chat stream gives exactly the answer of the same stream without it.

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m"}


def chat_event(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
    return (
        b"data: "
        + orjson.dumps(
            {**HEAD, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        )
        + b"\n\n"
    )


def chat_body(words: int) -> bytes:
    """A role chunk, ``words`` text chunks (long enough for the whole-body runs), finish, [DONE]."""
    return b"".join(
        [
            chat_event({"role": "assistant", "content": "Hel"}),
            *(chat_event({"content": f" w{i}"}) for i in range(words)),
            chat_event({}, "stop"),
            b"data: [DONE]\n\n",
        ]
    )


def outcome(chunks: list[bytes], *, whole_body: bool = True) -> tuple[str, Any]:
    converter = StreamConverter(api_of("chat"), whole_body=whole_body)
    try:
        for chunk in chunks:
            converter.feed(chunk)
        return "answer", (orjson.loads(converter.finish()), converter.events)
    except ConversionError as error:
        return "error", (error.kind, error.status, str(error))


def converter_chunkings(body: bytes) -> Iterator[list[bytes]]:
    """Whole, one event per feed (the one-event fast path), byte by byte, and fixed sizes."""
    yield from whole(body)
    yield at_event_ends(body)
    yield from byte_by_byte(body)
    for size in (2, 3, 5, 64, 700, 4096):
        yield fixed_size(body, size)


@pytest.mark.parametrize("words", [1, 40, 400])
@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
def test_bom_prefixed_chat_stream_gives_the_same_answer(words: int, crlf: bool) -> None:
    body = chat_body(words)
    if crlf:
        body = body.replace(b"\n", b"\r\n")
    expected = outcome([body])
    assert expected[0] == "answer"
    assert expected[1][0]["choices"][0]["message"]["content"] == "Hel" + "".join(f" w{i}" for i in range(words))
    for chunks in converter_chunkings(BOM + body):
        assert outcome(chunks) == expected, [len(c) for c in chunks[:3]]
        assert outcome(chunks, whole_body=False) == expected


def test_bom_split_between_the_first_feeds_of_a_chat_stream() -> None:
    body = chat_body(40)
    expected = outcome([body])
    for cut in range(1, len(BOM)):
        assert outcome([BOM[:cut], BOM[cut:] + body]) == expected
        assert outcome([BOM[:cut], BOM[cut:], body]) == expected


def test_bom_after_the_first_event_is_not_removed_by_the_converter() -> None:
    """A first event taken by the converter's own fast path still ends the stream's start."""
    first, rest = chat_event({"role": "assistant", "content": "Hel"}), chat_body(40).split(b"\n\n", 1)[1]
    skipped = chat_event({"content": "SKIPPED"})
    expected = outcome([first + rest])
    assert outcome([first, BOM + skipped, rest]) == outcome([first, BOM + skipped + rest]) == expected
    assert outcome([first + BOM + skipped + rest]) == expected
