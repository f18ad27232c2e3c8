"""The native run matcher (``core/_runs.c``) takes exactly the events the Python one takes.

Both implement ``TextTemplate.run_in``: the same events, the same texts, the same place to stop.
Any body, forged or cut anywhere, must give the same ``(end, count)`` and the same appended text
both ways, and nothing may crash the process. (The whole-body tests run the converter both ways
too: ``test_whole_body``'s ``run_matcher`` fixture.)
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buffered_stream.core import template
from buffered_stream.core.pieces import Pieces
from buffered_stream.core.template import TextTemplate

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m"}


def test_the_native_matcher_is_built() -> None:
    """The install builds it wherever a C compiler is found; the test setup always has one."""
    assert template._runs is not None, "buffered_stream.core._runs was not built: is a C compiler installed?"


def chunk(text: str) -> dict:
    return {**HEAD, "choices": [{"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}]}


def learned(field: bytes = b"data: ") -> TextTemplate:
    payload = orjson.dumps(chunk("x"))
    learned = TextTemplate.learn(payload, chunk("x"), ("choices", 0, "delta", "content"), "x", Pieces())
    assert learned is not None
    return learned


def both_ways(body: bytes, pos: int = 0, max_payload: int = 1 << 20) -> tuple[tuple[int, int, str | None], ...]:
    """``run_in`` by the native matcher and by Python: ``(end, count, text appended)`` each."""
    results = []
    for native in (True, False):
        tmpl = learned()
        saved = template._runs
        template._runs = saved if native else None
        try:
            end, count = tmpl.run_in(body, pos, max_payload)
        finally:
            template._runs = saved
        results.append((end, count, tmpl.pieces.text()))
    return tuple(results)


def assert_same(body: bytes, pos: int = 0, max_payload: int = 1 << 20) -> tuple[int, int, str | None]:
    native, python = both_ways(body, pos, max_payload)
    assert native == python
    return native


def events(middles: list[bytes], field: bytes = b"data: ") -> bytes:
    prefix, _, suffix = orjson.dumps(chunk("MIDDLE")).partition(b"MIDDLE")
    return b"".join(field + prefix + middle + suffix + b"\n\n" for middle in middles)


def test_a_plain_run_is_taken_up_to_the_last_event() -> None:
    middles = [f"w{i} ".encode() for i in range(500)]
    body = events(middles) + b"data: [DONE]\n\n"
    end, count, text = assert_same(body)
    assert count == 500 and text == "".join(m.decode() for m in middles)
    assert body[end:] == b"data: [DONE]\n\n"


def test_escapes_and_utf8_are_decoded_as_json_strings() -> None:
    middles = [b"caf\xc3\xa9", b"\\n", b'say \\"hi\\"', b"\\u00e9\\ud83d\\ude00", b"\\\\", b"\xf0\x9f\x98\x80"] * 40
    end, count, text = assert_same(events(middles) + b"data: [DONE]\n\n")
    assert count == len(middles) and text == "".join(orjson.loads(b'"' + m + b'"') for m in middles)


@pytest.mark.parametrize(
    "middle",
    [
        b'"',
        b'","',
        b'"},"x":"',
        b"\\",
        b"a\\",
        b"\x01",
        b"\x7f",
        b"\\x",
        b"\\u12",
        b"\\ud83d",
        b"\xff",
        b"\xc3",
        b"\xed\xa0\x80",
        b"\n",
        b"\n\n",
    ],
)
def test_a_doubtful_middle_stops_both_at_the_same_event(middle: bytes) -> None:
    for position in (0, 1, 30, 98, 99):
        middles = [f"t{i}".encode() for i in range(100)]
        middles.insert(position, middle)
        assert_same(events(middles) + b"data: [DONE]\n\n")


def test_a_multibyte_character_split_across_two_events_is_not_joined() -> None:
    """Each middle alone must be UTF-8: \\xc3 + \\xa9 in two events is two broken strings, not é."""
    native, python = both_ways(events([b"a", b"\xc3", b"\xa9", b"b", b"c"]) + b"data: [DONE]\n\n")
    assert native == python and native[1] == 1


@pytest.mark.parametrize("boundary", [b"\nx", b"\n:", b"\n\r", b"\r\n", b"\n\n\n", b"\n \n", b"\n"])
def test_an_event_not_ended_by_a_blank_line_stops_both_at_the_same_event(boundary: bytes) -> None:
    """``...suffix\nxdata: ...`` is one event with an ignored ``xdata`` line, not two events."""
    body = events([f"t{i}".encode() for i in range(60)]) + b"data: [DONE]\n\n"
    for occurrence in (1, 2, 30, 59):
        at = -1
        for _ in range(occurrence):
            at = body.find(b"\n\ndata: ", at + 1)
        assert_same(body[:at] + boundary + body[at + 2 :])


def test_a_body_cut_anywhere_gives_the_same_run() -> None:
    body = events([f"w{i}".encode() for i in range(12)] + [b"\\n\\u00e9"] * 3) + b"data: [DONE]\n\n"
    for cut in range(len(body) + 1):
        assert_same(body[:cut])


def test_any_start_and_payload_limit_give_the_same_run() -> None:
    body = events([f"w{i}".encode() * (i % 7) for i in range(40)]) + b"data: [DONE]\n\n"
    for pos in range(0, len(body), 7):
        for max_payload in (0, 100, 150, 170, 1 << 20):
            assert_same(body, pos, max_payload)


def test_named_and_tgi_fields_run_both_ways() -> None:
    prefix, _, suffix = orjson.dumps(chunk("MIDDLE")).partition(b"MIDDLE")
    for field in (b"event: delta\ndata: ", b"data:"):
        body = b"".join(field + prefix + f"x{i}".encode() + suffix + b"\n\n" for i in range(50)) + b"data: [DONE]\n\n"
        end, count, _ = assert_same(body)
        assert count == 49 + (field == b"data:")  # a named run stops where the name changes


def test_bad_arguments_raise_instead_of_reading_out_of_bounds() -> None:
    run = template._runs.run
    body = events([b"a", b"b"])
    with pytest.raises(ValueError):
        run(body, len(body) + 1, len(body) + 2, b"data: ", b"{", b"}", 100)
    with pytest.raises(ValueError):
        run(body, -1, 10, b"data: ", b"{", b"}", 100)
    with pytest.raises(TypeError):
        run(body.decode(), 0, 10, b"data: ", b"{", b"}", 100)
    with pytest.raises(TypeError):
        run(body, 0, 10, b"data: ")
    with pytest.raises(TypeError):
        run(body, 0, 10, b"data: ", b"{", b"}", 100, "not bytes")
    assert run(body, len(body), len(body) + 100, b"data: ", b"{", b"}", 100) == (len(body), 0, None)
    assert run(b"", 0, 10, b"", b"", b"", 0) == (0, 0, None)


pieces_of_a_body = st.lists(
    st.sampled_from(
        [
            b"data: ",
            b"data:",
            b"\n",
            b"\n\n",
            b"\\",
            b'"',
            b"\\u00e9",
            b"\xc3\xa9",
            b"\xff",
            b"x",
            b"[DONE]",
            b"event: a\n",
        ]
    )
    | st.binary(max_size=5),
    max_size=12,
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.text(st.characters(codec="utf-8"), max_size=4), min_size=0, max_size=60),
    st.lists(st.tuples(st.integers(0, 4000), pieces_of_a_body), max_size=4),
    st.integers(0, 4000),
    st.integers(0, 400),
)
def test_any_forged_or_cut_body_gives_the_same_run(
    texts: list[str], forgeries: list[tuple[int, list[bytes]]], pos: int, max_payload: int
) -> None:
    body = events([orjson.dumps(text)[1:-1] for text in texts])
    for at, pieces in forgeries:
        at = min(at, len(body))
        body = body[:at] + b"".join(pieces) + body[at:]
    assert_same(body, min(pos, len(body)), max_payload + 100)


@settings(max_examples=500, deadline=None)
@given(
    st.binary(max_size=400)
    | st.lists(st.sampled_from([b"data: ", b"{", b"}", b"\n", b"\n\n", b"\\", b'"', b"x", b"\xff"]), max_size=60).map(
        b"".join
    ),
    st.integers(-5, 450),
    st.integers(-5, 900),
    st.binary(max_size=8),
    st.binary(max_size=8),
    st.binary(max_size=8),
    st.integers(0, 500),
    st.none() | st.binary(max_size=6),
)
def test_any_arguments_give_an_answer_within_the_body_or_a_clear_error(
    body: bytes, pos: int, stop: int, field: bytes, prefix: bytes, suffix: bytes, max_middle: int, tail: bytes | None
) -> None:
    """Whatever it is handed, the matcher stays inside the body: no crash, no read past the end."""
    try:
        end, count, texts = template._runs.run(body, pos, stop, field, prefix, suffix, max_middle, tail)
    except ValueError:
        assert not 0 <= pos <= len(body)
        return
    assert pos <= end <= len(body) and count >= 0
    assert (texts is None) == (count == 0)
    if count:
        taken = body[pos:end]
        assert taken.count(b"\n\n" + field) >= count - 1 and taken.endswith(b"\n\n")
        if type(texts) is str:
            assert texts.isascii() and len(texts) <= len(taken)
        else:
            assert texts.startswith(b'["') and texts.endswith(b'"]')


# -- counted templates: a counter (Responses' ``sequence_number``) after the text -----------------


def delta_event(text: bytes, counter: bytes) -> bytes:
    """A vLLM-shaped Responses delta (sorted keys): the counter stands after the text."""
    return (
        b'{"content_index":0,"delta":"' + text + b'","item_id":"msg_1","logprobs":[],"output_index":0,'
        b'"sequence_number":' + counter + b',"type":"response.output_text.delta"}'
    )


def counted() -> TextTemplate:
    payload = delta_event(b"x", b"7")
    learned = TextTemplate.learn(payload, orjson.loads(payload), ("delta",), "x", Pieces(), "sequence_number")
    assert learned is not None and learned.tail == b',"type":"response.output_text.delta"}'
    return learned


def expected_counted_run(body: bytes, pos: int, field: bytes, max_middle: int) -> tuple[int, int, str | None]:
    """What a counted run must take: event by event, ``text_of`` + a JSON string's decoding, each
    event followed by a blank line and the next event's field (the last one is never taken)."""
    tmpl, texts, at = counted(), [], pos
    while True:
        line_end = body.find(b"\n", at)
        if not body.startswith(field, at) or line_end < 0 or not body.startswith(b"\n" + field, line_end + 1):
            break
        middle = tmpl.text_of(body[at + len(field) : line_end])
        if middle is None or len(middle) > max_middle or any(byte < 0x20 for byte in middle):
            break
        try:
            texts.append(orjson.loads(b'"' + middle + b'"'))
        except orjson.JSONDecodeError:
            break
        at = line_end + 2
    return at, len(texts), "".join(texts) if texts else None


def native_counted_run(body: bytes, pos: int, field: bytes, max_middle: int) -> tuple[int, int, str | None]:
    tmpl = counted()
    end, count, texts = template._runs.run(body, pos, len(body), field, tmpl.prefix, tmpl.suffix, max_middle, tmpl.tail)
    if type(texts) is bytes:
        try:
            texts = "".join(orjson.loads(texts))
        except orjson.JSONDecodeError:
            return pos, -1, None  # the caller hands such a run to the per-event path
    return end, count, texts


@pytest.mark.parametrize(
    "counter",
    [
        b"0",
        b"9",
        b"10",
        b"123456789012345678",
        b"1234567890123456789",
        b"07",
        b"00",
        b"-1",
        b"1.0",
        b"1e3",
        b"",
        b" 5",
        b'"5"',
        b"5 ",
    ],
)
def test_a_counted_run_takes_exactly_the_counters_orjson_reads_the_same(counter: bytes) -> None:
    events = [delta_event(f"t{i}".encode(), str(i).encode()) for i in range(60)]
    for position in (0, 1, 30, 59):
        forged = list(events)
        forged[position] = delta_event(b"odd", counter)
        body = b"".join(b"data: " + event + b"\n\n" for event in forged) + b"data: [DONE]\n\n"
        native = native_counted_run(body, 0, b"data: ", 1 << 20)
        assert native == expected_counted_run(body, 0, b"data: ", 1 << 20)
        valid = counter.isdigit() and len(counter) <= 18 and (len(counter) == 1 or counter[:1] != b"0")
        assert (native[1] == 60) == valid, (counter, position, native[1])


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.text(st.characters(codec="utf-8"), max_size=3), st.integers(0, 10**20)), max_size=40),
    st.lists(st.tuples(st.integers(0, 3000), pieces_of_a_body), max_size=3),
    st.integers(0, 40),
)
def test_any_counted_body_gives_the_per_event_run(
    steps: list[tuple[str, int]], forgeries: list[tuple[int, list[bytes]]], max_middle: int
) -> None:
    body = b"".join(b"data: " + delta_event(orjson.dumps(text)[1:-1], str(n).encode()) + b"\n\n" for text, n in steps)
    for at, pieces in forgeries:
        at = min(at, len(body))
        body = body[:at] + b"".join(pieces) + body[at:]
    native = native_counted_run(body, 0, b"data: ", max_middle)
    if native[1] >= 0:  # else: handed to the per-event path, which the whole-body tests cover
        assert native == expected_counted_run(body, 0, b"data: ", max_middle)
