"""The SSE decoder: every rule holds however the body is cut into chunks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buffered_stream.core.errors import LIMIT, ConversionError
from buffered_stream.core.sse import BARE_JSON_EVENT, ERROR_EVENT, SseDecoder
from support.corpus import cut_at, every_chunking

BIG = 1 << 20


def decode(chunks: list[bytes], max_event: int = BIG, max_buffer: int = BIG) -> list:
    decoder = SseDecoder(max_event, max_buffer)
    events = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.close()


CASES = {
    "one event": (b'data: {"a":1}\n\n', [("", b'{"a":1}')]),
    "crlf": (b"data: a\r\n\r\ndata: b\r\n\r\n", [("", b"a"), ("", b"b")]),
    "cr only": (b"data: a\r\rdata: b\r\r", [("", b"a"), ("", b"b")]),
    "mixed line ends": (b"data: a\r\n\ndata: b\n\r\ndata: c\r\r\n", [("", b"a"), ("", b"b"), ("", b"c")]),
    "no space after colon": (b"data:{}\n\n", [("", b"{}")]),
    "only one space stripped": (b"data:  x\n\n", [("", b" x")]),
    "comments": (b": ping\n\n:\ndata: a\n: inside\n\n", [("", b"a")]),
    "event name kept and reset": (
        b"event: message_start\ndata: {}\n\ndata: x\n\n",
        [("message_start", b"{}"), ("", b"x")],
    ),
    "data lines joined": (b"data: a\ndata:\ndata: b\n\n", [("", b"a\n\nb")]),
    "id and retry ignored": (b"id: 7\nretry: 10\nfoo: bar\ndata: x\n\n", [("", b"x")]),
    "mixed data prefixes": (b"data: a\n\ndata:b\n\ndata:  c\n\n", [("", b"a"), ("", b"b"), ("", b" c")]),
    "field without colon": (b"data\n\n", [("", b"")]),
    "event without data not dispatched": (b"event: ping\n\nid: 3\n\n", []),
    "blank lines around": (b"\n\n\ndata: a\n\n\n\n\ndata: b\n\n", [("", b"a"), ("", b"b")]),
    "done without blank line": (b"data: x\n\ndata: [DONE]", [("", b"x"), ("", b"[DONE]")]),
    "done with one newline": (b"data: [DONE]\r\n", [("", b"[DONE]")]),
    "llama.cpp error field": (
        b'data: {"a":1}\n\nerror: {"code":500,"message":"boom"}\n\n',
        [("", b'{"a":1}'), (ERROR_EVENT, b'{"code":500,"message":"boom"}')],
    ),
    "event error": (b"event: error\ndata: {}\n\n", [(ERROR_EVENT, b"{}")]),
    "ollama bare json line": (
        b'data: {"a":1}\n\n{"error":{"message":"x"}}\n',
        [("", b'{"a":1}'), (BARE_JSON_EVENT, b'{"error":{"message":"x"}}')],
    ),
    "utf-8 passed through as bytes": (
        'data: {"c":"\U0001f600é"}\n\n'.encode(),
        [("", '{"c":"\U0001f600é"}'.encode())],
    ),
    "colon inside value": (b'data: {"a":"b: c"}\n\n', [("", b'{"a":"b: c"}')]),
}


@pytest.mark.parametrize("body,expected", CASES.values(), ids=CASES.keys())
def test_rule_holds_at_every_chunk_boundary(body: bytes, expected: list) -> None:
    for chunks in every_chunking(body):
        assert decode(chunks) == expected, chunks


def test_events_are_returned_as_soon_as_their_blank_line_arrives() -> None:
    decoder = SseDecoder(BIG, BIG)
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"\ndata: b\n\ndata: c") == [("", b"a"), ("", b"b")]
    assert decoder.held_bytes == len(b"data: c")
    assert decoder.close() == [("", b"c")]
    assert decoder.held_bytes == 0


def test_cr_at_chunk_end_pairs_only_with_the_next_lf() -> None:
    decoder = SseDecoder(BIG, BIG)
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n") == []  # the LF completes the CRLF: no blank line yet
    assert decoder.feed(b"\r") == [("", b"a")]


def test_recorded_shape_of_a_chat_stream() -> None:
    body = (
        b"".join(b'data: {"choices": [{"index": 0, "delta": {"content": "%d"}}]}\n\n' % i for i in range(50))
        + b"data: [DONE]\n\n"
    )
    for size in (1, 7, 64, 4096):
        chunks = [body[i : i + size] for i in range(0, len(body), size)]
        events = decode(chunks)
        assert len(events) == 51
        assert events[-1] == ("", b"[DONE]")


def test_event_larger_than_limit_is_refused() -> None:
    assert decode([b"data: " + b"x" * 10 + b"\n\n"], max_event=10) == [("", b"x" * 10)]
    with pytest.raises(ConversionError) as info:
        decode([b"data: " + b"x" * 11 + b"\n\n"], max_event=10)
    assert info.value.kind == LIMIT
    assert info.value.status == 502
    assert "max_event_bytes=10" in info.value.message
    assert "11 bytes" in info.value.message


def test_event_limit_holds_among_many_events_of_one_chunk() -> None:
    body = b"data: ok\n\n" * 5 + b"data: " + b"x" * 11 + b"\n\n" + b"data: ok\n\n"
    with pytest.raises(ConversionError) as info:
        SseDecoder(10, BIG).feed(body)
    assert info.value.kind == LIMIT


def test_joined_data_lines_count_towards_the_event_limit() -> None:
    with pytest.raises(ConversionError) as info:
        decode([b"data: xxxxx\ndata: xxxxx\n\n"], max_event=10)
    assert info.value.kind == LIMIT


@pytest.mark.parametrize("body", [b"error: " + b"x" * 11 + b"\n\n", b"{" + b"x" * 10 + b"\n\n"])
def test_pseudo_events_obey_the_event_limit(body: bytes) -> None:
    with pytest.raises(ConversionError) as info:
        decode([body], max_event=10)
    assert info.value.kind == LIMIT


def test_bytes_held_without_an_event_are_bounded() -> None:
    decoder = SseDecoder(BIG, 100)
    with pytest.raises(ConversionError) as info:
        for _ in range(100):
            decoder.feed(b": ping\n")
    assert info.value.kind == LIMIT
    assert "max_buffer_bytes=100" in info.value.message


def test_large_event_fed_byte_by_byte_stays_within_limits() -> None:
    body = b"data: " + b"y" * 5000 + b"\n\n"
    assert decode([body[i : i + 1] for i in range(len(body))], 5000, 5010) == [("", b"y" * 5000)]


# Hypothesis: any chunking of any valid event list decodes to that event list.

_names = st.sampled_from(["", "message", "error", "content_block_delta"])
_lines = st.lists(st.binary(max_size=20).filter(lambda b: b"\r" not in b and b"\n" not in b), min_size=1, max_size=3)
_line_ends = st.sampled_from([b"\n", b"\r", b"\r\n"])


@st.composite
def encoded_stream(draw: st.DrawFn) -> tuple[bytes, list]:
    events = draw(st.lists(st.tuples(_names, _lines), max_size=6))
    out = bytearray()

    def add_line(content: bytes) -> None:
        end = draw(_line_ends)
        if not content and out[-1:] == b"\r" and end == b"\n":
            end = b"\r\n"  # CR then LF would be one line end, not two
        out.extend(content + end)

    for name, lines in events:
        if draw(st.booleans()):
            add_line(b": keep-alive")
        if name:
            add_line(b"event: " + name.encode())
        for line in lines:
            spaced = draw(st.booleans()) or line[:1] == b" "
            add_line((b"data: " if spaced else b"data:") + line)
        add_line(b"")
    return bytes(out), [(name, b"\n".join(lines)) for name, lines in events]


@st.composite
def split(draw: st.DrawFn, body: bytes) -> list[bytes]:
    return cut_at(body, sorted(draw(st.lists(st.integers(0, len(body)), max_size=8))))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_chunking_of_valid_events_gives_the_same_events(data: st.DataObject) -> None:
    body, expected = data.draw(encoded_stream())
    assert decode(data.draw(split(body))) == expected


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_arbitrary_bytes_decode_the_same_in_any_chunking(data: st.DataObject) -> None:
    body = data.draw(st.binary(max_size=200) | st.sampled_from(list(CASES)).map(lambda k: CASES[k][0]))
    assert decode(data.draw(split(body))) == decode([body])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=12))
def test_arbitrary_bytes_decode_or_raise_a_limit_with_bounded_buffering(chunks: list[bytes]) -> None:
    decoder = SseDecoder(max_event_bytes=32, max_buffer_bytes=48)
    try:
        for chunk in chunks:
            for _, payload in decoder.feed(chunk):
                assert len(payload) <= 32
            assert decoder.held_bytes <= 48
        for _, payload in decoder.close():
            assert len(payload) <= 32
    except ConversionError as error:
        assert error.kind == LIMIT


def line_by_line(body: bytes) -> list:
    """The general line loop alone (no fast path), over an LF-only body that ends its last event."""
    events: list = []
    SseDecoder(BIG, BIG)._decode_lines(body.split(b"\n"), events)  # noqa: SLF001 - the reference path
    return events


NAMED = b'event: response.created\ndata: {}\n\nevent: response.output_text.delta\ndata: {"delta":"a"}\n\n'


def test_named_events_in_one_chunk_are_decoded_like_line_by_line() -> None:
    assert (
        decode([NAMED * 50])
        == line_by_line(NAMED * 50)
        == [("response.created", b"{}"), ("response.output_text.delta", b'{"delta":"a"}')] * 50
    )


@pytest.mark.parametrize(
    "odd",
    [
        b"event:x\ndata: {}",
        b"event: x\ndata:{}",
        b"event: x\ndata:  {}",
        b"event: \xff\ndata: {}",
        b"event: \ndata: {}",
        b"data: {}\nevent: x",
        b"event: x\nid: 1",
        b"events: x\ndata: {}",
        b"event: x\n: c",
        b"event: error\ndata: {}",
        b": c\ndata: {}",
        b'event: x\n{"a":1}',
        b"event: x\nerror: {}",
    ],
)
def test_named_events_that_differ_anywhere_are_decoded_like_line_by_line(odd: bytes) -> None:
    for position in (0, 3, 9):
        events = [NAMED[:-2]] * 10
        events.insert(position, odd)
        body = b"\n\n".join(events) + b"\n\n"
        assert decode([body]) == line_by_line(body)


def test_named_events_obey_the_event_limit() -> None:
    body = NAMED * 3 + b"event: x\ndata: " + b"y" * 100 + b"\n\n" + NAMED
    with pytest.raises(ConversionError) as caught:
        decode([body], max_event=99)
    assert caught.value.kind == LIMIT


_field_lines = st.sampled_from([b"event: ", b"event:", b"data: ", b"data:", b": ", b"id: ", b"{", b"error: "])


_values = st.binary(max_size=6).filter(lambda b: b"\n" not in b and b"\r" not in b)
_named_pair = st.tuples(_values, _values).map(lambda nv: [(b"event: ", nv[0]), (b"data: ", nv[1])])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        _named_pair | _named_pair | st.lists(st.tuples(_field_lines, _values), min_size=1, max_size=3), max_size=12
    )
)
def test_any_lf_only_body_decodes_like_line_by_line(events: list[list[tuple[bytes, bytes]]]) -> None:
    body = b"".join(b"".join(field + value + b"\n" for field, value in lines) + b"\n" for lines in events)
    assert decode([body]) == line_by_line(body)
