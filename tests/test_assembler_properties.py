"""Any value anywhere in a real stream assembles or fails as a ``ConversionError``, never otherwise.

Structure-aware mutation of the conformance corpora of all four APIs (chat completions, legacy
completions, Responses, Messages): a few representative, well-formed streams per API are taken
apart into their events, and in one event a value at some field path (any key of any object, any
list element, nested as deep as the event goes) is replaced by another JSON value, a key deleted
or an unknown (or known but misplaced) key added; events are also dropped or repeated, and the SSE
framing is cut or has bytes inserted. The mutated body goes through the real pipeline
(``StreamConverter`` with the API's spec, profile and request hints) in one piece and one event per
feed (the fast paths differ). The outcome must be an answer (bytes orjson parses) or a
``ConversionError`` whose message never quotes a value from the stream; any other exception is a
bug (the service would answer ``internal_error`` with a traceback).

Two layers: a deterministic sweep that puts each of a fixed set of values at every path of every
event shape of every chosen case, and Hypothesis drawing arbitrary JSON values, several mutations
per stream and arbitrary chunkings. Both stay bounded (derandomized, no example database).
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buffered_stream.apis import api_named
from buffered_stream.core.convert import StreamConverter
from buffered_stream.core.errors import MALFORMED, UPSTREAM_ERROR, ConversionError
from support import corpus
from support.apis import api_of
from support.responses_replay import hints_of

# A handful of representative cases per API: together they hold every event type and field shape
# the corpora have (tool calls, logprobs, audio, annotations, reasoning, usage, n>1; Responses
# items, parts, summaries, function calls; Messages text, thinking, tool use, citations, server tools).
CASES: dict[str, tuple[str, ...]] = {
    "chat": (
        "openai-audio",
        "openai-annotations",
        "openai-parallel-calls",
        "llamacpp-live-chat-logprobs",
        "ollama-parallel-calls-at-index-0",
        "vllm-n2-continuous-usage",
        "vllm-current-tool-auto",
        "sglang-reasoning",
        "generic-function-call",
        "openai-refusal",
        "tgi-tool-call",
        "generic-error-mid-stream",
        "vllm-flat-error",
    ),
    "completions": (
        "vllm-completions-echo-logprobs",
        "llamacpp-live-completions-logprobs",
        "tgi-completions-empty-finish",
    ),
    "responses": (
        "openai-function-calls",
        "openai-reasoning-text",
        "llamacpp-tool-calls",
        "ollama-text-then-tool-calls",
        "generic-terminal-empty-output",
        "vllm-reasoning-text",
        "openai-error-event",
        "openai-failed",
        "generic-error-object",
    ),
    "messages": (
        "anthropic-citations",
        "anthropic-thinking-text",
        "anthropic-tool-use-parallel",
        "anthropic-web-search",
        "llamacpp-thinking-tool-use",
        "ollama-tool-use",
        "anthropic-error-overloaded",
    ),
}

# Marks every string the tests put into a stream: an error message must never quote one.
LEAK = "LEAK"

# Valid JSON no answer can hold: orjson reads 1024 levels but writes 254, and Python's ``str`` and
# ``==`` recurse once per level (1000 frames at most). Too deep for Python to copy, so a payload
# holds a mark in their place and the event's bytes get the JSON.
DEEP_ARRAY = "\x00deep array\x00"  # 300 levels: beyond what orjson writes
DEEP_OBJECT = "\x00deep object\x00"  # 1000 levels: beyond what Python's str and == take too
DEEP = {DEEP_ARRAY: b"[" * 300 + b"]" * 300, DEEP_OBJECT: b'{"a":' * 1000 + b"1" + b"}" * 1000}
DEEP_TEXT = "[" * 600 + "]" * 600  # a string, for the fields an assembler parses (tool arguments and input)

Path_ = tuple[str | int, ...]


# --------------------------------------------------------------------------- streams as events


@dataclass
class Event:
    """One SSE event: its ``event:`` name, its JSON payload (None: not JSON, kept as ``raw``)."""

    name: str | None
    payload: Any
    raw: bytes  # the event's bytes as the server sent them, without the blank line
    compact: bool  # the server wrote ``","`` rather than ``", "``

    def encode(self, payload: Any) -> bytes:
        """The event with ``payload``, written the way the server writes its JSON (so that a
        mutated text delta still meets the fast path's template)."""
        separators = (",", ":") if self.compact else (", ", ": ")
        data = json.dumps(payload, ensure_ascii=False, separators=separators, allow_nan=False).encode()
        for mark, deep in DEEP.items():
            data = data.replace(json.dumps(mark).encode(), deep)
        name = f"event: {self.name}\n".encode() if self.name is not None else b""
        return name + b"data: " + data + b"\n\n"


@dataclass(frozen=True)
class Case:
    api: str
    name: str
    profile: str
    request: Any
    events: tuple[Event, ...]
    error: str | None = None  # the kind of error the unmutated stream ends in, if any

    @property
    def id(self) -> str:
        return f"{self.api}/{self.name}"

    def __repr__(self) -> str:  # the case's name is enough in a falsifying example
        return f"<{self.id}>"

    def body(self, replaced: dict[int, Any] | None = None) -> bytes:
        return b"".join(self.pieces(replaced))

    def pieces(self, replaced: dict[int, Any] | None = None, events: list[int] | None = None) -> list[bytes]:
        """One piece per event; ``replaced``: event position -> its new payload (``DROP``: gone);
        ``events``: the positions in order (an event may repeat)."""
        replaced = replaced or {}
        pieces = []
        for position in events if events is not None else range(len(self.events)):
            event = self.events[position]
            if position in replaced:
                if replaced[position] is DROP:
                    continue
                pieces.append(event.encode(replaced[position]))
            else:
                pieces.append(event.raw + b"\n\n")
        return pieces


DROP: Any = object()


def split_events(body: bytes) -> list[Event]:
    body = body.replace(b"\r\n", b"\n")
    events = []
    for block in body.split(b"\n\n"):
        if not block.strip(b"\n"):
            continue
        block = block.strip(b"\n")
        name, data = None, []
        for line in block.split(b"\n"):
            field, _, value = line.partition(b":")
            value = value.removeprefix(b" ")
            if field == b"event":
                name = value.decode()
            elif field == b"data":
                data.append(value)
        payload = None
        if data:
            try:
                payload = orjson.loads(b"\n".join(data))
            except orjson.JSONDecodeError:
                payload = None
        compact = b'": ' not in block and b'", "' not in block
        events.append(Event(name, payload, block, compact))
    return events


@cache
def load(api: str, name: str) -> Case:
    found = corpus.load(api, name)
    meta, body = found.meta, found.body
    request = meta.get("request")
    if api == "responses":
        request = hints_of(request)
    error = meta["error"]["kind"] if "error" in meta else None
    return Case(api, name, meta["profile"], request, tuple(split_events(body)), error)


ALL_CASES = [(api, name) for api, names in CASES.items() for name in names]


# --------------------------------------------------------------------------- the pipeline


def convert(case: Case, pieces: list[bytes], *, whole_body: bool = True) -> bytes | ConversionError:
    """The pipeline's outcome; any exception but ``ConversionError`` escapes (and fails the test)."""
    spec = api_named(case.api)
    converter = StreamConverter(spec, case.profile, hints=case.request, whole_body=whole_body)
    try:
        for piece in pieces:
            converter.feed(piece)
        answer = converter.finish()
    except ConversionError as error:
        assert error.kind and 400 <= error.status <= 599, error
        if error.kind != UPSTREAM_ERROR:  # an upstream error passes the server's own message on
            assert LEAK not in error.message, error.message
        spec.error_body(error)  # the error answer can be built
        return error
    parsed = orjson.loads(answer)
    assert type(parsed) is dict
    if converter.usage is not None:
        spec.usage_tokens(converter.usage)  # metrics read the usage of every answer
    return answer


def both_ways(case: Case, replaced: dict[int, Any] | None = None, events: list[int] | None = None) -> None:
    """The body in one piece (runs matched at once) and one event per feed must give the same kind
    of outcome (the same answer, or an error of the same kind)."""
    pieces = case.pieces(replaced, events)
    whole = convert(case, [b"".join(pieces)])
    per_event = convert(case, pieces)
    assert _kind(whole) == _kind(per_event), (whole, per_event)


def _kind(outcome: bytes | ConversionError | str) -> Any:
    if isinstance(outcome, ConversionError):
        return (outcome.kind, outcome.status)
    if isinstance(outcome, str):
        return outcome
    return orjson.loads(GENERATED_TOOL_CALL_ID.sub(b'"GENERATED"', outcome))  # drawn anew per answer


GENERATED_TOOL_CALL_ID = re.compile(rb'"call_[0-9a-f]{24}"')


# --------------------------------------------------------------------------- paths in an event


def paths(value: Any, prefix: Path_ = (), max_items: int | None = None) -> Iterator[Path_]:
    """Every path below ``value`` (not ``value`` itself): each key of each object, each list element
    (the first ``max_items`` of each list when given), recursively."""
    if type(value) is dict:
        for key, child in value.items():
            yield prefix + (key,)
            yield from paths(child, prefix + (key,), max_items)
    elif type(value) is list:
        for index, child in enumerate(value[:max_items] if max_items is not None else value):
            yield prefix + (index,)
            yield from paths(child, prefix + (index,), max_items)


def get(value: Any, path: Path_) -> Any:
    for step in path:
        value = value[step]
    return value


def replace(payload: Any, path: Path_, new: Any) -> Any:
    if not path:
        return new
    payload = copy.deepcopy(payload)
    get(payload, path[:-1])[path[-1]] = new
    return payload


def delete(payload: Any, path: Path_) -> Any:
    payload = copy.deepcopy(payload)
    del get(payload, path[:-1])[path[-1]]
    return payload


def add_key(payload: Any, path: Path_, key: str, new: Any) -> Any:
    """``key: new`` added to the object at ``path`` (the last key of it, as a server would write)."""
    payload = copy.deepcopy(payload)
    target = get(payload, path)
    target.pop(key, None)
    target[key] = new
    return payload


def shape(event: Event) -> tuple[Any, ...]:
    """What an event is, all text aside: its name, its type and the paths it has."""
    payload = event.payload
    kind = payload.get("type") if type(payload) is dict else None
    return (event.name, kind if type(kind) is str else None, tuple(map(str, paths(payload, max_items=2))))


def representative_events(case: Case) -> list[int]:
    """The positions of the first and second event of each shape (the second meets the fast
    path's template where the first taught it)."""
    seen: dict[Any, list[int]] = {}
    for position, event in enumerate(case.events):
        if event.payload is not None:
            seen.setdefault(shape(event), []).append(position)
    chosen = set()
    for positions in seen.values():
        chosen.update(positions[:2])
    return sorted(chosen)


@cache
def known_keys(api: str) -> tuple[str, ...]:
    """Every key the API's chosen streams use, anywhere: an added key is often a real one in the
    wrong place (``tool_calls`` in a top level, ``delta`` in a content block)."""
    keys: set[str] = set()
    for name in CASES[api]:
        for event in load(api, name).events:
            for path in paths(event.payload):
                if type(path[-1]) is str:
                    keys.add(path[-1])
    return tuple(sorted(keys))


# --------------------------------------------------------------------------- the deterministic sweep

# Every value kind at every path: null, a bool, an int, non-ASCII text (a base64 field must reject
# it), an empty list and an object.
KINDS: tuple[Any, ...] = (None, True, -1, f"{LEAK}-é☃😀", [], {f"{LEAK}-key": f"{LEAK}-value"}, DEEP_OBJECT, DEEP_TEXT)
# And one of these edges at each path in turn (every one meets every event shape): the integers
# orjson reads as i64, u64 and beyond (a float), floats, empty and escaped text, containers of
# nulls, text and objects, an object that looks like a block or an item.
EDGES: tuple[Any, ...] = (
    False,
    0,
    2**63 - 1,
    2**64,
    -(2**63) - 1,
    10**30,
    1.5,
    -0.0,
    "",
    f"{LEAK}",
    f'{LEAK}-\x00\n"\\',
    [None],
    [f"{LEAK}"],
    [{}],
    {},
    {"type": f"{LEAK}-type", "index": 0},
    DEEP_ARRAY,
)


def sweep_mutations(payload: Any) -> Iterator[Any]:
    """The payload with each kind of ``KINDS`` and one edge of ``EDGES`` at each path (and in its
    place: the whole payload), each key deleted, and an unknown key added to each object."""
    for new in (None, [], f"{LEAK}", 0):
        yield replace(payload, (), new)
    for turn, path in enumerate(paths(payload, max_items=2)):
        for new in (*KINDS, EDGES[turn % len(EDGES)]):
            yield replace(payload, path, new)
        yield delete(payload, path)
        if type(get(payload, path)) is dict:
            yield add_key(payload, path, f"{LEAK}-unknown", [f"{LEAK}", {"x": None}])
    yield add_key(payload, (), f"{LEAK}-unknown", f"{LEAK}")


@pytest.mark.parametrize("api,name", ALL_CASES, ids=[f"{api}/{name}" for api, name in ALL_CASES])
def test_every_value_at_every_path_of_every_event_shape(api: str, name: str) -> None:
    case = load(api, name)
    outcome = convert(case, case.pieces())
    assert (outcome.kind if isinstance(outcome, ConversionError) else None) == case.error
    for position in representative_events(case):
        for mutated in sweep_mutations(case.events[position].payload):
            both_ways(case, {position: mutated})


# --------------------------------------------------------------------------- Hypothesis

_INTEGERS = st.one_of(
    st.integers(-(2**15), 2**15),
    st.integers(),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**40, -(10**40)]),
)
_TEXT = st.one_of(
    st.text(max_size=12),
    st.text(st.characters(min_codepoint=0x80, codec="utf-8"), max_size=6),  # non-ASCII only
    st.sampled_from(
        ["", LEAK, f"{LEAK}-é", "AAECAwQFBg==", "é==", "{", '{"a":1}', "[DONE]", "error", "text", DEEP_TEXT]
    ),
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    _INTEGERS,
    st.floats(allow_nan=False, allow_infinity=False),
    _TEXT,
    st.sampled_from(list(DEEP)),
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.lists(children, max_size=4), st.dictionaries(_TEXT, children, max_size=4))


JSON = st.recursive(_SCALARS, _containers, max_leaves=10)


@st.composite
def mutated_streams(draw: st.DrawFn, api: str | None = None) -> tuple[Case, dict[int, Any], list[int] | None]:
    """A corpus case with one to three structural mutations of its events, and sometimes an event
    dropped or repeated."""
    if api is None:
        api = draw(st.sampled_from(list(CASES)))
    case = load(api, draw(st.sampled_from(CASES[api])))
    json_events = [position for position, event in enumerate(case.events) if event.payload is not None]
    replaced: dict[int, Any] = {}
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.sampled_from(json_events))
        payload = replaced.get(position, case.events[position].payload)
        if payload is DROP:
            continue
        where = list(paths(payload))
        operation = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add", "insert", "root"]))
        if operation == "root" or not where:
            replaced[position] = draw(JSON)
            continue
        path = draw(st.sampled_from(where))
        if operation == "replace":
            replaced[position] = replace(payload, path, draw(JSON))
        elif operation == "delete":
            replaced[position] = delete(payload, path)
        elif operation == "add":
            objects = [p for p in [(), *where] if type(get(payload, p)) is dict]
            if not objects:
                replaced[position] = draw(JSON)
                continue
            target = draw(st.sampled_from(objects))
            key = draw(st.one_of(st.sampled_from(known_keys(api)), _TEXT))
            replaced[position] = add_key(payload, target, key, draw(JSON))
        else:  # an element more in a list (a second tool call, logprob, item or block)
            lists = [p for p in where if type(get(payload, p)) is list]
            if not lists:
                replaced[position] = replace(payload, path, draw(JSON))
                continue
            target = draw(st.sampled_from(lists))
            items = get(payload, target)
            element = draw(st.one_of(st.sampled_from(items), JSON) if items else JSON)
            at = draw(st.integers(0, len(items)))
            replaced[position] = replace(payload, target, [*items[:at], element, *items[at:]])
    order = None
    if draw(st.integers(0, 4)) == 0:  # an event dropped or repeated
        order = list(range(len(case.events)))
        at = draw(st.integers(0, len(order) - 1))
        if draw(st.booleans()):
            del order[at]
        else:
            order.insert(at, order[at])
    return case, replaced, order


# CI runs a fixed, bounded set of examples; ASSEMBLER_PROPERTY_EXAMPLES=N (and a random seed) hunts longer.
_HUNT = int(os.environ.get("ASSEMBLER_PROPERTY_EXAMPLES", "0"))
BOUNDED = settings(
    max_examples=_HUNT or 150,
    deadline=None,
    derandomize=not _HUNT,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("api", list(CASES))
@BOUNDED
@given(data=st.data())
def test_any_json_anywhere_assembles_or_is_a_conversion_error(api: str, data: st.DataObject) -> None:
    case, replaced, order = data.draw(mutated_streams(api))
    both_ways(case, replaced, order)


@settings(BOUNDED, max_examples=_HUNT or 200)
@given(stream=mutated_streams(), data=st.data())
def test_any_chunking_of_a_mutated_stream_assembles_or_is_a_conversion_error(
    stream: tuple[Case, dict[int, Any], list[int] | None], data: st.DataObject
) -> None:
    """Arbitrary cuts, and the whole body without runs: every way the converter takes bytes."""
    case, replaced, order = stream
    body = case.body(replaced) if order is None else b"".join(case.pieces(replaced, order))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=6)))
    convert(case, corpus.cut_at(body, cuts))
    convert(case, [body], whole_body=False)


@settings(BOUNDED, max_examples=_HUNT or 200)
@given(stream=mutated_streams(), data=st.data())
def test_damaged_framing_assembles_or_is_a_conversion_error(
    stream: tuple[Case, dict[int, Any], list[int] | None], data: st.DataObject
) -> None:
    """The body cut at a random byte, or random bytes (framing bytes likely) put in anywhere."""
    case, replaced, order = stream
    body = case.body(replaced) if order is None else b"".join(case.pieces(replaced, order))
    if data.draw(st.booleans()):
        body = body[: data.draw(st.integers(0, len(body)))]
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(body)))
        junk = data.draw(
            st.one_of(
                st.binary(max_size=6),
                st.sampled_from(
                    [b"\n", b"\n\n", b"\r", b"data: ", b"event: error\n", b":", b"\xff", b"\xc3", b"{", b'"']
                ),
            )
        )
        body = body[:at] + junk + body[at:]
    convert(case, [body])
    convert(case, [body[i : i + 7] for i in range(0, len(body), 7)])


# --------------------------------------------------------------------------- regressions


def _audio_chunk(data: Any) -> bytes:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-audio-preview",
        "choices": [{"index": 0, "delta": {"audio": {"id": "audio_1", "data": data}}, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


@pytest.mark.parametrize("data", ["AAEC\u00e9AwQ=", "\u00e9", "AAECAwQFBg==\u2603", "😀"])
def test_non_ascii_base64_audio_data_is_malformed(data: str) -> None:
    """``binascii.a2b_base64`` raises a plain ValueError (not ``binascii.Error``) for a str with
    non-ASCII: it was an ``internal_error`` with a traceback instead of a 502 ``malformed``."""
    finish = b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    body = _audio_chunk("AAECAwQFBg==") + _audio_chunk(data) + finish + b"data: [DONE]\n\n"
    for pieces in ([body], [body[: len(_audio_chunk("AAECAwQFBg=="))], body[len(_audio_chunk("AAECAwQFBg==")) :]]):
        converter = StreamConverter(api_of("chat"), "openai")
        with pytest.raises(ConversionError) as caught:
            for piece in pieces:
                converter.feed(piece)
            converter.finish()
        assert (caught.value.kind, caught.value.status) == (MALFORMED, 502)
        assert data not in caught.value.message and "audio 'data'" in caught.value.message


def _chat_chunk(delta: dict[str, Any], finish_reason: str | None = None, **top: Any) -> bytes:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", **top}
    chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _named(name: str, payload: bytes) -> bytes:
    return f"event: {name}\n".encode() + b"data: " + payload + b"\n\n"


def _outcomes(api: str, profile: str, body: bytes) -> list[bytes | ConversionError | str]:
    """The outcome of ``body`` in one piece, one event per feed and without runs (see ``convert``)."""
    case = Case(api, "regression", profile, None, ())
    return [convert(case, [body]), convert(case, corpus.events(body)), convert(case, [body], whole_body=False)]


def test_tool_arguments_nested_too_deep_to_rewrite_are_kept_as_streamed() -> None:
    """TGI's answer re-serialises the arguments compactly; orjson reads 600 levels but writes 254:
    ``orjson.JSONEncodeError`` escaped the render. Now they stay as streamed."""
    call = {"index": 0, "id": "0", "type": "function", "function": {"name": "f", "arguments": DEEP_TEXT}}
    body = (
        _chat_chunk({"role": "assistant", "tool_calls": [call]}) + _chat_chunk({}, "tool_calls") + b"data: [DONE]\n\n"
    )
    for outcome in _outcomes("chat", "tgi", body):
        assert isinstance(outcome, bytes)
        assert orjson.loads(outcome)["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == DEEP_TEXT


def test_a_tool_input_nested_too_deep_to_answer_is_malformed() -> None:
    """A Messages tool input is parsed from its ``partial_json`` pieces: one nested deeper than an
    answer can be written is ``malformed`` where it is parsed."""
    start = b'{"type":"message_start","message":{"id":"m","type":"message","role":"assistant","model":"x","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":1}}}'
    block = (
        b'{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}'
    )
    delta = orjson.dumps(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": DEEP_TEXT}}
    )
    body = b"".join(
        _named(name, payload)
        for name, payload in (
            ("message_start", start),
            ("content_block_start", block),
            ("content_block_delta", delta),
            ("content_block_stop", b'{"type":"content_block_stop","index":0}'),
            (
                "message_delta",
                b'{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":2}}',
            ),
            ("message_stop", b'{"type":"message_stop"}'),
        )
    )
    for outcome in _outcomes("messages", "anthropic", body):
        assert isinstance(outcome, ConversionError) and outcome.kind == MALFORMED, outcome
        assert "nests too deep" in outcome.message


def test_text_deltas_with_the_same_deeply_nested_item_id_are_no_recursion_error() -> None:
    """The Responses hot path compared each delta's (output_index, content_index, item_id) with the
    last one's: two equal item ids nested 1000 levels made ``==`` raise ``RecursionError``."""
    deep = DEEP[DEEP_OBJECT]
    delta = (
        b'{"type":"response.output_text.delta","output_index":0,"content_index":0,"item_id":' + deep + b',"delta":"x"}'
    )
    terminal = (
        b'{"type":"response.completed","response":{"id":"r","object":"response","status":"completed","output":[]}}'
    )
    body = _named("response.output_text.delta", delta) * 3 + _named("response.completed", terminal)
    for outcome in _outcomes("responses", "generic", body):
        assert isinstance(outcome, bytes)
        assert orjson.loads(outcome)["output"][0]["content"][0]["text"] == "xxx"


@pytest.mark.parametrize(
    "api,body",
    [
        ("chat", b'data: {"error":{"message":' + DEEP[DEEP_OBJECT] + b',"code":400}}\n\n'),
        ("chat", b'data: {"error":' + DEEP[DEEP_ARRAY] + b"}\n\n"),
        ("chat", b"event: error\ndata: " + DEEP[DEEP_ARRAY] + b"\n\n"),
        ("responses", _named("error", b'{"type":"error","message":' + DEEP[DEEP_OBJECT] + b',"code":"x"}')),
        ("responses", b'data: {"error":{"message":"m","param":' + DEEP[DEEP_ARRAY] + b"}}\n\n"),
        (
            "messages",
            _named("error", b'{"type":"error","error":{"type":"api_error","message":' + DEEP[DEEP_OBJECT] + b"}}"),
        ),
        ("messages", _named("error", b'{"type":"error","error":' + DEEP[DEEP_ARRAY] + b"}")),
    ],
    ids=[
        "chat-message",
        "chat-error",
        "chat-error-event",
        "responses-message",
        "responses-param",
        "messages-message",
        "messages-error",
    ],
)
def test_an_upstream_error_nested_too_deep_is_still_an_upstream_error(api: str, body: bytes) -> None:
    """Its message was ``str()``-ed (a ``RecursionError`` at 1000 levels) and its object kept for
    the error body (an ``orjson.JSONEncodeError`` beyond 254): now the message says it is too deep
    to show and the body keeps what can be written."""
    for outcome in _outcomes(api, "generic", body):
        assert isinstance(outcome, ConversionError), outcome
        assert outcome.kind in (UPSTREAM_ERROR, MALFORMED)
        assert orjson.loads(api_named(api).error_body(outcome))


def test_a_block_index_that_is_no_integer_is_not_quoted() -> None:
    """Messages quoted a bad block index with ``repr``: any JSON value, completion text included."""
    body = _named(
        "content_block_delta",
        b'{"type":"content_block_delta","index":"'
        + LEAK.encode()
        + b' text","delta":{"type":"text_delta","text":"x"}}',
    )
    for outcome in _outcomes("messages", "generic", body):
        assert isinstance(outcome, ConversionError) and outcome.kind == MALFORMED
        assert "of type str" in outcome.message
