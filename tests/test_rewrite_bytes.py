"""The request rewrite is byte-faithful: only ``stream`` (and, for the OpenAI family,
``stream_options``) change; every other byte of the client's body reaches the upstream as sent.

Unit cases pin the spellings that re-serialising used to change (integers beyond 64 bits, -0.0,
duplicate keys, escapes, whitespace); the property tests render arbitrary objects with random
whitespace, escapes, big numbers and duplicate keys, and check (a) the exact bytes against the
rule restated from the rendered pieces (no scanning) and (b) a big-int-preserving, duplicate-keeping
parse against the original's. The size cases: a rewrite never grows a body past the route's
``max_request_bytes`` (Envoy's request buffer); such a body goes upstream untouched.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buffered_stream.apis import CHAT, COMPLETIONS, SCHEMAS, plan_request
from buffered_stream.core.json_edit import JsonEditError, edit_object, scan_object, set_member
from buffered_stream.core.request import NOT_JSON, REQUEST_TOO_LARGE, Rewrite, Skip, stream_body
from buffered_stream.settings import RouteSettings, SettingsError, route_settings_from_metadata

MiB = 1 << 20
ENVOY_BUFFER = 16 * MiB  # per_connection_buffer_limit_bytes in the shipped envoy.yaml
USAGE = b'{"include_usage":true}'


def plan(schema: str, body: bytes, limit: int | None = None) -> Rewrite | Skip:
    return plan_request(schema, body, (), limit)


def rewritten(schema: str, body: bytes) -> bytes:
    result = plan(schema, body)
    assert isinstance(result, Rewrite), result
    return result.body


# --------------------------------------------------------------------------- scanner and editor


def test_scan_finds_top_level_members_with_their_spans() -> None:
    body = b' \r\n{\t"a" :\t[1, {"stream": 2}, "]}"] ,"str\\u0065am"\r:\nnull , "b":"x\\"y\\\\"\n}\t'
    layout = scan_object(body)
    assert [m.key for m in layout.members] == ["a", "stream", "b"]
    assert [body[m.start : m.value_end] for m in layout.members] == [
        b'"a" :\t[1, {"stream": 2}, "]}"]',
        b'"str\\u0065am"\r:\nnull',
        b'"b":"x\\"y\\\\"',
    ]
    assert (body[layout.open : layout.open + 1], body[layout.close : layout.close + 1]) == (b"{", b"}")
    assert layout.find("stream") == (layout.members[1],)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{}", b'{"stream":true}'),
        (b" {\t} ", b' {\t"stream":true} '),
        (b'{"a":1}', b'{"a":1,"stream":true}'),
        (b'{"stream":false}', b'{"stream":true}'),
        (b'{"stream" : null , "a":1}', b'{"stream" : true , "a":1}'),
        (b'{"stream":1,"a":2,"stream":3,"b":4,"stream":5}', b'{"stream":true,"a":2,"b":4}'),
        (b'{"a":1, "stream":0, "stream":0}', b'{"a":1, "stream":true}'),
        (b'{"a":{"stream":false},"b":[{"stream":1}]}', b'{"a":{"stream":false},"b":[{"stream":1}],"stream":true}'),
    ],
)
def test_set_member_replaces_in_place_removes_duplicates_or_appends(body: bytes, expected: bytes) -> None:
    assert set_member(body, "stream", b"true") == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"stream":1}', b"{}"),
        (b'{ "stream":1 }', b"{  }"),
        (b'{"stream":1, "a":2}', b'{"a":2}'),
        (b'{"a":1 , "stream":2}', b'{"a":1}'),
        (b'{"a":1, "stream":2, "b":3}', b'{"a":1, "b":3}'),
        (b'{"stream":1,"stream":2,"a":3,"stream":4}', b'{"a":3}'),
        (b'{"a":1}', b'{"a":1}'),
    ],
)
def test_removing_a_member_takes_the_comma_next_to_it(body: bytes, expected: bytes) -> None:
    assert edit_object(body, {"stream": None}) == expected


def test_an_unedited_body_is_returned_as_is() -> None:
    body = b'{"a": 1}'
    assert edit_object(body, {"stream": None}) is body


def test_numbers_are_kept_as_written() -> None:
    body = b'{"a":123456789012345678901234567890,"b":1e400,"c":-0.0,"d":1E+2,"e":-0,"f":0.10}'
    assert set_member(body, "stream", b"true") == body[:-1] + b',"stream":true}'


def test_long_strings_with_many_escaped_quotes_and_trailing_backslashes() -> None:
    # Longer than the regular expression's short-string bound, more escaped quotes than the
    # bytes.find loop follows before it hands over to the regular expression, and a string that
    # ends with an escaped backslash right before its closing quote.
    long_plain = b'"' + b"x" * 5000 + b'"'
    many_quotes = b'"' + b'a\\"' * 500 + b'\\\\"'
    backslashes = b'"' + b"\\\\" * 300 + b'"'
    escapes = b'"' + b"line\\n" * 2000 + b'"'
    for value in (long_plain, many_quotes, backslashes, escapes):
        for body in (
            b'{"v":' + value + b',"stream":false}',
            b'{"v":[' + value + b',{"k":' + value + b'}],"stream":false}',
        ):
            layout = scan_object(body)
            assert [m.key for m in layout.members] == ["v", "stream"]
            assert set_member(body, "stream", b"true") == body.replace(b'"stream":false', b'"stream":true')


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[1]",
        b'"x"',
        b"{",
        b'{"a"}',
        b'{"a" 1}',
        b'{"a":1,}',
        b'{"a":1} x',
        b'{"a":"x}',
        b'{"a":[1',
        b'{"a":[1}',
        b"{a:1}",
        b'{"\\x":1}',
    ],
)
def test_bytes_that_are_not_one_object_raise(body: bytes) -> None:
    with pytest.raises(JsonEditError):
        scan_object(body)


def test_a_scan_failure_leaves_the_request_alone() -> None:
    assert stream_body(b'{"a":') is NOT_JSON


# --------------------------------------------------------------------------- the plans


def test_chat_edits_only_stream_and_stream_options() -> None:
    body = b'{"model": "m", "seed": 123456789012345678901234567890, "messages": [], "stream": false}'
    assert (
        rewritten(CHAT, body)
        == b'{"model": "m", "seed": 123456789012345678901234567890, "messages": [], "stream": true,"stream_options":{"include_usage":true}}'
    )
    assert rewritten(COMPLETIONS, body) == rewritten(CHAT, body)


@pytest.mark.parametrize("schema", ["responses", "messages"])
def test_responses_and_messages_edit_only_stream(schema: str) -> None:
    body = b'{"model":"m","x":123456789012345678901234567890,"input":"hi"}'
    assert rewritten(schema, body) == body[:-1] + b',"stream":true}'
    assert rewritten(schema, body[:-1] + b',"stream":false}') == body[:-1] + b',"stream":true}'


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b',"stream":false', b',"stream":true'),
        (b',"stream":null', b',"stream":true'),
        (b"", b',"stream":true'),
    ],
)
def test_stream_false_null_or_absent(stream: bytes, expected: bytes) -> None:
    body = b'{"model":"m"' + stream + b"}"
    assert rewritten("messages", body) == b'{"model":"m"' + expected + b"}"
    assert rewritten(CHAT, body) == b'{"model":"m"' + expected + b',"stream_options":{"include_usage":true}}'


def test_negative_zero_and_float_spellings_survive() -> None:
    body = b'{"model":"m","temperature":-0.0,"top_p":1.0E-0,"x":[0.10,1e2]}'
    assert rewritten("messages", body) == body[:-1] + b',"stream":true}'


def test_a_number_beyond_double_range_is_left_alone() -> None:
    # orjson refuses 1e400, so the request is not ours: it goes upstream untouched, as before.
    assert plan(CHAT, b'{"model":"m","x":1e400}') == Skip("not_json")


def test_duplicate_keys_are_kept_and_duplicate_streams_become_one() -> None:
    body = b'{"model":"a","model":"b","stream":false,"n":1,"stream":null,"n":2}'
    assert rewritten("messages", body) == b'{"model":"a","model":"b","stream":true,"n":1,"n":2}'
    # The decision reads the parsed request (orjson: the last duplicate wins).
    assert plan(CHAT, b'{"model":"m","stream":false,"stream":true}') == Skip("stream_requested")
    assert (
        rewritten(CHAT, b'{"stream":true,"stream":false}') == b'{"stream":true,"stream_options":{"include_usage":true}}'
    )
    assert plan("messages", b'{"model":"a","model":"b"}').model == "b"


def test_an_escaped_spelling_of_stream_is_stream() -> None:
    body = b'{"model":"m","str\\u0065am":false,"stre\\u0061m":null}'
    assert rewritten("messages", body) == b'{"model":"m","str\\u0065am":true}'
    assert plan("messages", b'{"str\\u0065am":true}') == Skip("stream_requested")
    body = b'{"\\u0073tream_options":{"a":1},"stream_opti\\u006fns":[]}'
    assert rewritten(CHAT, body) == b'{"\\u0073tream_options":{"include_usage":true},"stream":true}'


def test_unicode_escapes_and_raw_utf8_are_kept() -> None:
    body = '{"model":"m","messages":[{"content":"caf\\u00e9 café \\ud83d\\ude00 😀 \\/ \\"q\\" \\u2028"}]}'.encode()
    assert rewritten("responses", body) == body[:-1] + b',"stream":true}'


def test_odd_whitespace_is_kept() -> None:
    body = b'\r\n\t{\t"model"\r:\n"m" ,\t"stream" :\tfalse\r\n}\n'
    assert rewritten("messages", body) == b'\r\n\t{\t"model"\r:\n"m" ,\t"stream" :\ttrue\r\n}\n'
    assert (
        rewritten(CHAT, body)
        == b'\r\n\t{\t"model"\r:\n"m" ,\t"stream" :\ttrue,"stream_options":{"include_usage":true}\r\n}\n'
    )


@pytest.mark.parametrize("body", [b"{}", b" {\n} "])
def test_an_empty_object(body: bytes) -> None:
    assert orjson.loads(rewritten("messages", body)) == {"stream": True}
    assert rewritten(CHAT, body) == body.replace(b"}", b'"stream":true,"stream_options":{"include_usage":true}}')


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (b'{"continuous_usage_stats": true}', b'{"continuous_usage_stats": true,"include_usage":true}'),
        (
            b'{ "include_usage" : false, "x": 123456789012345678901234567890 }',
            b'{ "include_usage" : true, "x": 123456789012345678901234567890 }',
        ),
        (b'{"include_usage":true}', b'{"include_usage":true}'),
        (b"{}", USAGE),
        (b"null", USAGE),
        (b"true", USAGE),
        (b"[1]", USAGE),
        (b'"x"', USAGE),
    ],
)
def test_stream_options_object_or_not(options: bytes, expected: bytes) -> None:
    body = b'{"model":"m","stream_options": ' + options + b',"n":1}'
    assert rewritten(CHAT, body) == b'{"model":"m","stream_options": ' + expected + b',"n":1,"stream":true}'


def test_duplicate_stream_options_become_one_from_the_last() -> None:
    body = b'{"stream_options":{"a":1},"model":"m","stream_options":{"b":2, "include_usage":false}}'
    assert rewritten(CHAT, body) == b'{"stream_options":{"b":2, "include_usage":true},"model":"m","stream":true}'
    body = b'{"stream_options":{"a":1},"stream_options":null}'
    assert rewritten(CHAT, body) == b'{"stream_options":{"include_usage":true},"stream":true}'


def test_nested_stream_keys_are_not_touched() -> None:
    body = (
        b'{"model":"m","metadata":{"stream":false,"stream_options":1},"messages":[{"stream":false,'
        b'"content":"{\\"stream\\": false, \\"stream_options\\": 1}"}],"stream":false}'
    )
    assert rewritten(CHAT, body) == body.replace(
        b'"stream":false}', b'"stream":true,"stream_options":{"include_usage":true}}'
    )
    assert rewritten(CHAT, body).count(b'"stream":false') == 2


def test_hints_and_model_still_come_from_the_parsed_request() -> None:
    result = plan(CHAT, b'{"model":"m","tool_choice":{"type":"function","function":{"name":"f"}},"stream":false}')
    assert isinstance(result, Rewrite)
    assert (result.model, result.hints) == ("m", {"tool_choice": {"type": "function", "function": {"name": "f"}}})
    tools = [{"type": "namespace", "name": "crm", "tools": []}]
    result = plan("responses", orjson.dumps({"model": "m", "tools": tools}))
    assert isinstance(result, Rewrite) and result.hints == {"tools": tools}


# --------------------------------------------------------------------------- size limit


def padded(size: int, tail: bytes = b"") -> bytes:
    """A chat body of exactly ``size`` bytes (its prompt is the padding)."""
    head, end = b'{"model":"m","messages":[{"role":"user","content":"', b'"}]' + tail + b"}"
    return head + b"x" * (size - len(head) - len(end)) + end


def test_a_body_that_fits_envoy_is_forwarded_untouched_rather_than_grown_past_it() -> None:
    body = padded(ENVOY_BUFFER - 20)
    assert len(body) == ENVOY_BUFFER - 20
    limit = RouteSettings().max_request_bytes
    assert limit == ENVOY_BUFFER
    grown = plan(CHAT, body)  # without a limit: 52 bytes more than Envoy holds
    assert isinstance(grown, Rewrite) and len(grown.body) > ENVOY_BUFFER
    assert plan(CHAT, body, limit) is REQUEST_TOO_LARGE
    assert SCHEMAS[CHAT].plan(body, (), limit) == Skip("request_too_large")


def test_a_body_with_room_is_rewritten() -> None:
    # Messages adds only ',"stream":true' (14 bytes): it fits in the last 20.
    result = plan("messages", padded(ENVOY_BUFFER - 20), ENVOY_BUFFER)
    assert isinstance(result, Rewrite) and len(result.body) == ENVOY_BUFFER - 6
    # An explicit "stream": false becomes true in place: one byte shorter, even at the limit.
    result = plan(CHAT, padded(ENVOY_BUFFER, b',"stream":false,"stream_options":{"include_usage":true}'), ENVOY_BUFFER)
    assert isinstance(result, Rewrite) and len(result.body) == ENVOY_BUFFER - 1


def test_the_limit_is_inclusive() -> None:
    growth = len(b',"stream":true,"stream_options":{"include_usage":true}')
    exact = plan(CHAT, padded(1000 - growth), 1000)
    assert isinstance(exact, Rewrite) and len(exact.body) == 1000
    assert plan(CHAT, padded(1001 - growth), 1000) is REQUEST_TOO_LARGE
    assert plan(CHAT, padded(1001 - growth), None) != REQUEST_TOO_LARGE


def test_max_request_bytes_setting() -> None:
    assert RouteSettings().max_request_bytes == 16 * MiB
    assert route_settings_from_metadata({"buffered_stream": {"max_request_bytes": 1048576.0}}).max_request_bytes == MiB
    annotations = {"envoy-gateway": {"resources": [{"annotations": {"buffered-stream.max_request_bytes": "2097152"}}]}}
    assert route_settings_from_metadata(annotations).max_request_bytes == 2 * MiB
    for bad, message in ((0, "positive"), (1.5, "whole number"), ("big", "whole number")):
        with pytest.raises(SettingsError, match=f"max_request_bytes must be .*{message}"):
            route_settings_from_metadata({"buffered_stream": {"max_request_bytes": bad}})


def test_the_adapter_forwards_a_too_large_body_untouched() -> None:
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
    from google.protobuf import struct_pb2

    from buffered_stream.adapter.service import CONTINUE_REQUEST_BODY, Exchange, RouteSettingsCache

    def run(metadata: str, data: bytes) -> tuple[pb.ProcessingResponse, str]:
        exchange = Exchange(RouteSettingsCache(RouteSettings()))
        attributes = struct_pb2.Struct()
        attributes.update({"xds.route_metadata": metadata, "xds.route_name": "chat"})
        pairs = ((":method", "POST"), (":path", "/v1/chat/completions"), ("content-type", "application/json"))
        headers = base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs])
        exchange.handle(
            pb.ProcessingRequest(
                request_headers=pb.HttpHeaders(headers=headers), attributes={"envoy.filters.http.ext_proc": attributes}
            )
        )
        reply = exchange.handle(pb.ProcessingRequest(request_body=pb.HttpBody(body=data, end_of_stream=True)))
        status = base_pb2.HeaderMap(
            headers=[
                base_pb2.HeaderValue(key=":status", raw_value=b"200"),
                base_pb2.HeaderValue(key="content-type", raw_value=b"application/json"),
            ]
        )
        exchange.handle(pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=status)))
        return reply, exchange.outcome

    enabled = 'fields { key: "enabled" value { bool_value: true } }'
    metadata = 'filter_metadata { key: "buffered_stream" value { %s } }'
    reply, outcome = run(metadata % enabled, padded(ENVOY_BUFFER - 20))
    assert (reply, outcome) == (CONTINUE_REQUEST_BODY, "passthrough_request_too_large")
    small = metadata % (enabled + ' fields { key: "max_request_bytes" value { number_value: 200 } }')
    reply, outcome = run(small, padded(160))
    assert (reply, outcome) == (CONTINUE_REQUEST_BODY, "passthrough_request_too_large")
    reply, outcome = run(small, padded(100))
    assert (
        reply.request_body.response.body_mutation.body
        == padded(100)[:-1] + b',"stream":true,"stream_options":{"include_usage":true}}'
    )


# --------------------------------------------------------------------------- properties


@dataclass
class Obj:
    """A rendered JSON object whose pieces are known, so the expected edit needs no scanner."""

    members: list[tuple[str, bytes, bytes, Any]]  # decoded key, key as written, ws ":" ws, value
    seps: list[bytes]  # ws "," ws after each member but the last
    after_open: bytes = b""
    before_close: bytes = b""
    outside: tuple[bytes, bytes] = (b"", b"")  # whitespace around a top-level object

    def render(self) -> bytes:
        out = [self.outside[0], b"{", self.after_open]
        for index, (_, key, colon, value) in enumerate(self.members):
            if index:
                out.append(self.seps[index - 1])
            out += (key, colon, render(value))
        out += (self.before_close, b"}", self.outside[1])
        return b"".join(out)


Value = Union[bytes, Obj]


def render(value: Value) -> bytes:
    return value.render() if isinstance(value, Obj) else value


def expected_edit(obj: Obj, changes: dict[str, bytes | None]) -> bytes:
    """The documented rule, restated from the pieces: the first member of an edited key keeps its
    key spelling and colon with the new value; its other members go with the separator after them
    (the one before them for the last member); absent keys are appended after the last member."""
    first: dict[str, int] = {}
    for index, (key, *_) in enumerate(obj.members):
        first.setdefault(key, index)
    kept = [
        index
        for index, (key, *_) in enumerate(obj.members)
        if key not in changes or (changes[key] is not None and first[key] == index)
    ]
    out = [obj.outside[0], b"{", obj.after_open]
    for position, index in enumerate(kept):
        if position:
            out.append(obj.seps[kept[position - 1]])
        key, key_text, colon, value = obj.members[index]
        out += (key_text, colon, changes[key] if key in changes else render(value))  # type: ignore[list-item]
    written = bool(kept)
    for key, value in changes.items():
        if value is not None and key not in first:
            out += ((b"," if written else b""), json.dumps(key, ensure_ascii=False).encode(), b":", value)
            written = True
    out += (obj.before_close, b"}", obj.outside[1])
    return b"".join(out)


WS = st.sampled_from([b"", b"", b" ", b"\t", b"\r\n", b"\n\t ", b"  \r"])
SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


# Characters that need escaping (quotes and backslashes next to each other: ``\\\"``), raw UTF-8
# of every width, and anything else but a lone surrogate (not text: raw, it cannot be UTF-8).
TEXT = st.text(
    st.one_of(st.sampled_from('"\\"\\/\n\t\x00\x1f é€😀'), st.characters(exclude_categories=("Cs",))), max_size=8
)


@st.composite
def json_string(draw: st.DrawFn, text: st.SearchStrategy[str] = TEXT) -> tuple[str, bytes]:
    """A string and one of its many JSON spellings (raw UTF-8, short escapes, \\u escapes in either
    case, surrogate pairs)."""
    decoded = draw(text)
    out = []
    for char in decoded:
        style = draw(st.sampled_from(["raw", "raw", "short", "u"]))
        if style == "raw" and char not in '"\\' and ord(char) >= 0x20:
            out.append(char)
        elif style != "u" and char in SHORT_ESCAPES:
            out.append(SHORT_ESCAPES[char])
        else:
            units = (
                [ord(char)]
                if ord(char) < 0x10000
                else [0xD800 + ((ord(char) - 0x10000) >> 10), 0xDC00 + ((ord(char) - 0x10000) & 0x3FF)]
            )
            spelled = "".join(f"\\u{unit:04x}" for unit in units)
            out.append(spelled.upper().replace("\\U", "\\u") if draw(st.booleans()) else spelled)
    return decoded, ('"' + "".join(out) + '"').encode()


LONG_STRINGS = st.sampled_from(
    [
        b'"' + b"x" * 600 + b'"',
        b'"' + b'q\\"' * 100 + b'"',
        b'"' + b"a\\n" * 300 + b'\\\\"',
        b'"' + b"\\\\" * 70 + b'"',
        b'"' + b'\\\\\\"' * 90 + b"y" * 300 + b'"',
    ]
)


def numbers(huge: bool) -> st.SearchStrategy[bytes]:
    spelled = [
        b"-0.0",
        b"-0",
        b"0.10",
        b"1E+2",
        b"2.5e-7",
        b"123456789012345678901234567890",
        b"-98765432109876543210987654321",
    ]
    return st.one_of(
        st.integers(-(10**30), 10**30).map(lambda n: str(n).encode()),
        st.floats(allow_nan=False, allow_infinity=False).map(lambda x: repr(x).encode()),
        st.sampled_from(spelled + ([b"1e400", b"-1E+400"] if huge else [])),
    )


KEYS = ["model", "messages", "stream", "stream", "stream_options", "include_usage", "tool_choice", "n", "x", ""]


def key_strings(names: list[str] = KEYS) -> st.SearchStrategy[tuple[str, bytes]]:
    """Mostly the interesting names, plainly or oddly spelled, sometimes any short text."""
    plain = st.sampled_from(names).map(lambda key: (key, json.dumps(key).encode()))
    return st.one_of(
        plain,
        plain,
        json_string(st.sampled_from(names)),
        json_string(st.text(st.characters(exclude_categories=("Cs",)), max_size=4)),
    )


@st.composite
def objects(
    draw: st.DrawFn,
    values: st.SearchStrategy[Value],
    top: bool = False,
    value_for: Callable[[str], st.SearchStrategy[Value] | None] | None = None,
    keys: st.SearchStrategy[tuple[str, bytes]] = key_strings(),
) -> Obj:
    members = []
    for _ in range(draw(st.integers(0, 8 if top else 3))):
        key, key_text = draw(keys)
        special = value_for(key) if value_for is not None else None
        members.append((key, key_text, draw(WS) + b":" + draw(WS), draw(special if special is not None else values)))
    seps = [draw(WS) + b"," + draw(WS) for _ in members[1:]]
    return Obj(
        members,
        seps,
        after_open=draw(WS),
        before_close=draw(WS) if members else b"",
        outside=(draw(WS), draw(WS)) if top else (b"", b""),
    )


def values(huge: bool = False) -> st.SearchStrategy[Value]:
    scalars = st.one_of(
        st.sampled_from([b"null", b"true", b"false"]),
        numbers(huge),
        json_string().map(lambda pair: pair[1]),
        LONG_STRINGS,
    )

    def containers(children: st.SearchStrategy[Value]) -> st.SearchStrategy[Value]:
        arrays = st.tuples(WS, st.lists(st.tuples(WS, children, WS), max_size=4)).map(
            lambda parts: b"[" + (b",".join(a + render(v) + b for a, v, b in parts[1]) if parts[1] else parts[0]) + b"]"
        )
        return st.one_of(arrays, objects(children))

    return st.recursive(scalars, containers, max_leaves=8)


VALUES = values()


def stream_value(key: str) -> st.SearchStrategy[Value] | None:
    if key == "stream":
        return st.sampled_from([b"false", b"null", b"false", b"null", b"true", b"0", b'"no"'])
    if key == "stream_options":
        return st.one_of(objects(VALUES, keys=key_strings(["include_usage", "include_usage", "x", "stream"])), VALUES)
    return None


def tagged(body: bytes) -> Any:
    """Parsed keeping big integers and duplicate keys; objects tagged (an empty one is not [])."""
    return json.loads(body, object_pairs_hook=lambda pairs: ("{}", pairs))


def with_usage(options: Any) -> Any:
    if not (isinstance(options, tuple) and options[0] == "{}"):
        return ("{}", [("include_usage", True)])
    pairs = options[1]
    keys = [key for key, _ in pairs]
    out = [(key, value) for key, value in pairs if key != "include_usage"]
    position = keys.index("include_usage") if "include_usage" in keys else len(out)
    return ("{}", out[:position] + [("include_usage", True)] + out[position:])


@settings(max_examples=250, deadline=None)
@given(
    obj=objects(VALUES, top=True, value_for=stream_value),
    schema=st.sampled_from([CHAT, COMPLETIONS, "responses", "messages"]),
)
def test_property_rewrite_is_byte_faithful(obj: Obj, schema: str) -> None:
    body = obj.render()
    parsed = orjson.loads(body)  # the generator renders only JSON orjson accepts
    result = plan(schema, body)
    stream = parsed.get("stream")
    if stream is not None and stream is not False:
        assert result == Skip("stream_requested")
        return
    assert isinstance(result, Rewrite), result
    openai = schema in (CHAT, COMPLETIONS)
    edited = ("stream", "stream_options") if openai else ("stream",)

    # (a) the exact bytes: everything outside the edited members as the client sent it.
    changes: dict[str, bytes | None] = {"stream": b"true"}
    if openai:
        options = [value for key, _, _, value in obj.members if key == "stream_options"]
        last = options[-1] if options else None
        changes["stream_options"] = expected_edit(last, {"include_usage": b"true"}) if isinstance(last, Obj) else USAGE
    assert result.body == expected_edit(obj, changes)

    # (b) the meaning: the original's members, minus every edited one, plus exactly one of each.
    before, after = tagged(body)[1], tagged(result.body)[1]
    assert [pair for pair in after if pair[0] not in edited] == [pair for pair in before if pair[0] not in edited]
    assert [value for key, value in after if key == "stream"] == [True]
    if openai:
        client = [value for key, value in before if key == "stream_options"]
        assert [value for key, value in after if key == "stream_options"] == [
            with_usage(client[-1] if client else None)
        ]
        hints = {"tool_choice": parsed["tool_choice"]} if "tool_choice" in parsed else {}
        assert result.hints == hints
    assert orjson.loads(result.body)["stream"] is True
    model = parsed.get("model")
    assert result.model == (model if isinstance(model, str) else None)


@settings(max_examples=250, deadline=None)
@given(
    obj=objects(values(huge=True), top=True),
    changes=st.dictionaries(
        st.sampled_from(["stream", "stream_options", "model", "x", "é"]),
        st.sampled_from([None, b"true", b"[1, {}]", b'"v"']),
        max_size=3,
    ),
)
def test_property_edit_object_matches_the_rule(obj: Obj, changes: dict[str, bytes | None]) -> None:
    body = obj.render()
    result = edit_object(body, changes)
    assert result == expected_edit(obj, changes)
    before, after = tagged(body)[1], tagged(result)[1]
    assert [pair for pair in after if pair[0] not in changes] == [pair for pair in before if pair[0] not in changes]
    for key, value in changes.items():
        assert [v for k, v in after if k == key] == ([] if value is None else [tagged(value)])


@pytest.mark.parametrize(
    ("body", "taken"),
    [
        (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}', True),
        (b'{"model": "m", "stream" : false, "n": 1}', True),
        (b"{ }", True),
        (b'{"model": "m", "messages": [{"content": "caf\\u00e9"}]}', False),  # a \u escape: scanned
        (b'{"stream": false, "x": {"stream": 1}}', False),  # "stream" twice in the body
        (b'{"stream": {"a": 1}, "stream": false}', False),  # duplicates
        (b'{"stream_options": {"include_usage": false}}', False),  # the client's own options
    ],
)
def test_small_common_bodies_skip_the_scan_and_give_the_scans_bytes(body: bytes, taken: bool) -> None:
    from buffered_stream.core.request import _edited_in_place, stream_body, with_include_usage

    parsed = orjson.loads(body)
    fast = _edited_in_place(body, parsed, True, None)
    assert (fast is not None) is taken
    scanned = stream_body(body, with_include_usage)
    assert stream_body(body, with_include_usage, parsed=parsed) == scanned
    if fast is not None:
        assert fast == scanned
