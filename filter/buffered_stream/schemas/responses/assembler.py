"""The Responses API's assembler: one ``response`` object from its event stream.

A Responses stream ends with a terminal event whose ``response`` is the whole answer:
``response.completed``, ``response.incomplete`` (``response.failed`` is an error). Like the OpenAI
SDK, the answer is that object, then shaped like the backend's *non-stream* builder where the two
builders differ (``ResponsesProfile``). Where the terminal object lacks its ``output`` (absent, or
empty while items streamed), the output is assembled from the events instead:

* items by ``output_index`` (in order of ``output_item.added`` when a server sends no index, as
  llama.cpp does; its events are then matched to items by ``item_id``, a function call's by
  ``call_id``); an ``output_item.done`` item is final and replaces what its deltas built;
* message parts by ``content_index``: ``output_text`` text from ``output_text.delta`` (its
  ``.done`` text wins), annotations from ``output_text.annotation.added``, logprobs concatenated;
  ``refusal`` parts from ``refusal.delta``; ``content_part.done`` replaces the part;
* function call ``arguments`` from ``function_call_arguments.delta`` (``.done`` wins);
* reasoning ``content`` from ``reasoning_text.*`` and ``summary`` from ``reasoning_summary_*``;
* an item never closed gets the response's own status (``completed`` or ``incomplete``).

Top level: the terminal object, plus keys only the last ``response.created``/``in_progress`` had;
``status`` from the object itself (vLLM types an incomplete answer ``response.completed``), else
from the event type. Unknown event types are ignored; events after the terminal one too. A stream
without a terminal event is not ``finished`` (the pipeline reports it truncated). Wrong types raise
``ConversionError(MALFORMED)``; more than ``MAX_ITEMS`` items or ``MAX_PARTS`` parts raise ``LIMIT``.

Memory: the terminal object is kept as its JSON bytes (about the answer's size), and the deltas'
text is dropped once the terminal object or an item's ``done`` event holds it.

The bulk of a long answer, text deltas that repeat the last one but for their text and
``sequence_number``, takes the core's fast path: ``text_target`` says where a delta's text went.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ...core.assembler import TextTarget
from ...core.errors import ConversionError, malformed, too_many
from ...core.pieces import COMPACT_EVERY, Pieces
from .errors import ERROR, FAILED, TEXT_DELTA, upstream_error
from .profiles import GENERIC, ResponsesProfile, detect
from .reshape import reshape

MAX_ITEMS = 4096
MAX_PARTS = 4096

# Event types (and the error ones, from ``errors``).
COMPLETED = "response.completed"
INCOMPLETE = "response.incomplete"
_TERMINAL_STATUS = {COMPLETED: "completed", INCOMPLETE: "incomplete"}
_SNAPSHOT_EVENTS = frozenset({"response.created", "response.in_progress", "response.queued"})
# Event types that report an error instead of data.
_ERROR_TYPES = frozenset({ERROR, FAILED})

# Where a text delta's text is, and the counter its fold ignores (for the core's fast path).
_DELTA_PATH = ("delta",)
_SEQUENCE_NUMBER = "sequence_number"


def _malformed(message: str) -> ConversionError:
    return malformed(f"upstream stream event is malformed: {message}")


class _Part:
    """One content part (message ``content``, reasoning ``content`` or ``summary``) being streamed.

    ``base`` is the part as added (or as ``done`` said, then final); ``text`` the deltas under
    ``field`` (``text`` or ``refusal``).
    """

    __slots__ = ("base", "field", "text", "final", "annotations", "logprobs")

    def __init__(self, base: dict[str, Any], field: str) -> None:
        self.base = base
        self.field = field
        self.text = Pieces()
        self.final: str | None = None
        self.annotations: list[Any] = []
        self.logprobs: list[Any] = []

    def to_json(self) -> dict[str, Any]:
        part = dict(self.base)
        text = self.final if self.final is not None else self.text.text()
        if text is not None or self.field not in part:
            part[self.field] = text or ""
        if self.annotations:
            part["annotations"] = [*_list(part.get("annotations")), *self.annotations]
        if self.logprobs:
            part["logprobs"] = [*_list(part.get("logprobs")), *self.logprobs]
        return part


class _Item:
    """One output item: as added, its parts and arguments so far, or its ``done`` form."""

    __slots__ = ("index", "arrival", "added", "done", "content", "summary", "arguments", "final_arguments")

    def __init__(self, index: int | None, arrival: int, added: dict[str, Any]) -> None:
        self.index = index
        self.arrival = arrival
        self.added = added
        self.done: dict[str, Any] | None = None
        self.content: dict[int, _Part] = {}
        self.summary: dict[int, _Part] = {}
        self.arguments = Pieces()
        self.final_arguments: str | None = None

    def part(self, parts: dict[int, _Part], index: Any, kind: str, field: str) -> _Part:
        """The part at ``index`` (None: the latest), created as ``{"type": kind}`` on first sight."""
        if index is None:
            if parts:
                return parts[next(reversed(parts))]
            index = 0
        elif type(index) is not int:
            raise _malformed("a part index is not an integer")
        part = parts.get(index)
        if part is None:
            if len(parts) >= MAX_PARTS:
                raise too_many("parts", MAX_PARTS)
            part = parts[index] = _Part({"type": kind}, field)
        return part

    def to_json(self, status: str) -> dict[str, Any]:
        if self.done is not None:
            return self.done
        item = dict(self.added)
        kind = item.get("type")
        if self.content or (kind == "message" and "content" not in item):
            item["content"] = [self.content[i].to_json() for i in sorted(self.content)]
        if self.summary:
            item["summary"] = [self.summary[i].to_json() for i in sorted(self.summary)]
        if kind in ("function_call", "custom_tool_call") or self.arguments or self.final_arguments is not None:
            item["arguments"] = (
                self.final_arguments if self.final_arguments is not None else self.arguments.text() or ""
            )
        if "status" in item or kind in ("message", "function_call"):
            item["status"] = status
        return item


def _list(value: Any) -> list[Any]:
    return value if type(value) is list else []


class ResponsesAssembler:
    """Responses API assembler; the ``auto`` profile (``AUTO``) detects the backend at the end.

    ``hints`` (from ``plan_request``) may carry the request's ``tools`` for Ollama.
    """

    __slots__ = (
        "_profile",
        "_hints",
        "_terminal",
        "_terminal_status",
        "_usage",
        "_snapshot",
        "_items",
        "_by_id",
        "_last_item",
        "_sequence_numbers",
        "_delta_key",
        "_delta_part",
    )

    def __init__(self, profile: ResponsesProfile, hints: Mapping[str, Any] | None = None) -> None:
        self._profile = profile
        self._hints = hints or {}
        self._terminal: bytes | None = None  # the terminal ``response`` object, as JSON
        self._terminal_status = "completed"
        self._usage: dict[str, Any] | None = None
        self._snapshot: bytes | None = None  # the last response.created / in_progress object
        self._items: dict[Any, _Item] = {}
        self._by_id: dict[str, _Item] = {}
        self._last_item: _Item | None = None
        self._sequence_numbers = True
        # The part the last text delta went to, by (output_index, content_index, item_id): the
        # next delta nearly always goes there too. Any other event clears it.
        self._delta_key: tuple[Any, Any, Any] | None = None
        self._delta_part: _Part | None = None

    # ----------------------------------------------------------------- the protocol

    @property
    def finished(self) -> bool:
        """A terminal event (``response.completed`` or ``response.incomplete``) arrived."""
        return self._terminal is not None

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._usage

    @property
    def output_started(self) -> bool:
        """An output item was added (the first-token mark), or the terminal response came first."""
        return bool(self._items) or self._terminal is not None

    def add(self, chunk: dict[str, Any]) -> None:
        if self._terminal is not None:
            return
        if chunk.get("type") == TEXT_DELTA:  # the hot path: one text piece to the same part as before
            key = (chunk.get("output_index"), chunk.get("content_index"), chunk.get("item_id"))
            if key == self._delta_key:
                part = self._delta_part
                assert part is not None
            else:
                part = self._part(chunk, "content", "output_text", "text")
                # A key with an item id that is no string (which finds nothing) is not kept: the
                # next key compared with it could be nested deep enough to make ``==`` recurse.
                kept = type(key[2]) is str or key[2] is None
                self._delta_key = key if kept else None
                self._delta_part = part if kept else None
            delta = chunk.get("delta")
            if type(delta) is not str:
                raise _malformed("an 'output_text.delta' has no text")
            text = part.text
            text.append(delta)
            if len(text) >= COMPACT_EVERY:
                text.compact()
            logprobs = chunk.get("logprobs")
            if logprobs:
                if type(logprobs) is not list:
                    raise _malformed("'logprobs' is not a list")
                part.logprobs += logprobs
            return
        self._delta_key = self._delta_part = None
        if self._sequence_numbers and "sequence_number" not in chunk:
            self._sequence_numbers = False
        kind = chunk.get("type")
        if type(kind) is not str:
            error = upstream_error(chunk) if kind is None else None
            if error is not None:
                raise error
            raise _malformed("an event has no string 'type'")
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, chunk)
        elif kind in _SNAPSHOT_EVENTS:
            response = chunk.get("response")
            if not isinstance(response, dict):
                raise _malformed(f"'{kind}' has no response object")
            self._snapshot = _exact_json(response)
        elif kind in _ERROR_TYPES:
            error = upstream_error(chunk)
            if error is not None:
                raise error

    def result(self) -> dict[str, Any]:
        answer: dict[str, Any] = orjson.loads(self._terminal) if self._terminal is not None else {}
        if self._snapshot is not None:
            for key, value in orjson.loads(self._snapshot).items():
                answer.setdefault(key, value)
        if self._terminal is not None and "status" not in answer:
            answer["status"] = self._terminal_status
        output = answer.get("output")
        if not output and self._items:
            status = answer.get("status")
            item_status = status if status in ("completed", "incomplete") else "completed"
            items = sorted(self._items.values(), key=_item_order)
            answer["output"] = [item.to_json(item_status) for item in items]
        profile = self._profile
        if profile.detect:
            profile = detect(answer, self._sequence_numbers)
        if profile is not GENERIC:
            reshape(answer, profile, self._hints)
        return answer

    def text_target(self, chunk: dict[str, Any]) -> TextTarget | None:
        """The core's fast path: after ``add(chunk)`` folded a text delta without logprobs into a
        part, that part's text. Folded again with another text (the same part key) and any
        ``sequence_number``, such a delta only appends its text. OpenAI's deltas are padded and
        numbered before the text: they never repeat as a template."""
        if self._terminal is not None or chunk.get("type") != TEXT_DELTA or chunk.get("logprobs"):
            return None
        # The part ``add`` found: kept with its key (a key with an item id that is no string is
        # not kept), else found again the same way (``add`` made it if it was missing).
        part = self._delta_part if self._delta_key is not None else self._part(chunk, "content", "output_text", "text")
        assert part is not None
        delta: str = chunk["delta"]  # ``add`` checked it is a string
        return _DELTA_PATH, delta, part.text, _SEQUENCE_NUMBER

    # ----------------------------------------------------------------- events

    def _terminal_event(self, chunk: dict[str, Any]) -> None:
        response = chunk.get("response")
        if not isinstance(response, dict):
            raise _malformed(f"'{chunk['type']}' has no response object")
        output = response.get("output")
        if output is not None and type(output) is not list:
            raise _malformed("the response 'output' is not a list")
        usage = response.get("usage")
        self._usage = usage if isinstance(usage, dict) else None
        self._terminal_status = _TERMINAL_STATUS[chunk["type"]]
        self._terminal = _exact_json(response)
        if self._snapshot is not None:  # keep only what the terminal object lacks (usually nothing)
            snapshot = orjson.loads(self._snapshot)
            missing = {key: value for key, value in snapshot.items() if key not in response and key != "status"}
            self._snapshot = _exact_json(missing) if missing else None
        if output:  # the object holds the whole answer: what the deltas built is not needed
            self._items.clear()
            self._by_id.clear()
            self._last_item = None

    def _item_added(self, chunk: dict[str, Any]) -> None:
        item = chunk.get("item")
        if not isinstance(item, dict):
            raise _malformed("'response.output_item.added' has no item object")
        index = _index(chunk, "output_index")
        key = index if index is not None else ("arrival", len(self._items))
        earlier = self._items.pop(key, None)
        if earlier is not None:  # Ollama opens its calls at the index of the text before them
            self._items[("arrival", earlier.arrival)] = earlier
        if len(self._items) >= MAX_ITEMS:
            raise too_many("items", MAX_ITEMS)
        state = self._items[key] = _Item(index, len(self._items), item)
        self._remember(state, item)

    def _item_done(self, chunk: dict[str, Any]) -> None:
        item = chunk.get("item")
        if not isinstance(item, dict):
            raise _malformed("'response.output_item.done' has no item object")
        state = self._find(chunk, item)
        if state is None:
            self._item_added(chunk)
            state = self._last_item
            assert state is not None
        state.done = item  # final: what its deltas built is not needed any more
        state.content.clear()
        state.summary.clear()
        state.arguments = Pieces()
        state.final_arguments = None

    def _text_done(self, chunk: dict[str, Any]) -> None:
        self._finish_part(self._part(chunk, "content", "output_text", "text"), chunk, "text")

    def _annotation_added(self, chunk: dict[str, Any]) -> None:
        part = self._part(chunk, "content", "output_text", "text")
        part.annotations.append(chunk.get("annotation"))

    def _refusal_delta(self, chunk: dict[str, Any]) -> None:
        self._part(chunk, "content", "refusal", "refusal").text.add(_delta_text(chunk, "refusal"))

    def _refusal_done(self, chunk: dict[str, Any]) -> None:
        self._finish_part(self._part(chunk, "content", "refusal", "refusal"), chunk, "refusal")

    def _content_part_added(self, chunk: dict[str, Any]) -> None:
        self._add_part(chunk, "content", "content_index")

    def _content_part_done(self, chunk: dict[str, Any]) -> None:
        self._done_part(chunk, "content", "content_index")

    def _reasoning_delta(self, chunk: dict[str, Any]) -> None:
        self._part(chunk, "content", "reasoning_text", "text").text.add(_delta_text(chunk, "reasoning_text"))

    def _reasoning_done(self, chunk: dict[str, Any]) -> None:
        self._finish_part(self._part(chunk, "content", "reasoning_text", "text"), chunk, "text")

    def _summary_part_added(self, chunk: dict[str, Any]) -> None:
        self._add_part(chunk, "summary", "summary_index")

    def _summary_part_done(self, chunk: dict[str, Any]) -> None:
        self._done_part(chunk, "summary", "summary_index")

    def _summary_delta(self, chunk: dict[str, Any]) -> None:
        self._part(chunk, "summary", "summary_text", "text", "summary_index").text.add(
            _delta_text(chunk, "reasoning_summary_text")
        )

    def _summary_done(self, chunk: dict[str, Any]) -> None:
        self._finish_part(self._part(chunk, "summary", "summary_text", "text", "summary_index"), chunk, "text")

    def _arguments_delta(self, chunk: dict[str, Any]) -> None:
        delta = _delta_text(chunk, "function_call_arguments")
        item = self._item_of(chunk)
        if item.done is None:
            item.arguments.add(delta)

    def _arguments_done(self, chunk: dict[str, Any]) -> None:
        arguments = chunk.get("arguments")
        if type(arguments) is not str:
            raise _malformed("a 'function_call_arguments.done' has no arguments")
        item = self._item_of(chunk)
        if item.done is None:
            item.final_arguments = arguments
            item.arguments = Pieces()

    # ----------------------------------------------------------------- finding items and parts

    def _remember(self, state: _Item, item: dict[str, Any]) -> None:
        self._last_item = state
        for key in ("id", "call_id"):
            value = item.get(key)
            if type(value) is str and value:
                self._by_id[value] = state

    def _find(self, chunk: dict[str, Any], item: dict[str, Any] | None = None) -> _Item | None:
        index = _index(chunk, "output_index")
        if index is not None:
            return self._items.get(index)
        for holder, key in ((chunk, "item_id"), (item, "id"), (item, "call_id")):
            value = holder.get(key) if holder is not None else None
            if type(value) is str and value in self._by_id:
                return self._by_id[value]
        return None if item is not None else self._last_item

    def _item_of(self, chunk: dict[str, Any]) -> _Item:
        """The item an event belongs to, opened as a bare item if the stream never added it."""
        state = self._find(chunk)
        if state is None:
            index = _index(chunk, "output_index")
            key = index if index is not None else ("arrival", len(self._items))
            if len(self._items) >= MAX_ITEMS:
                raise too_many("items", MAX_ITEMS)
            item: dict[str, Any] = {}
            item_id = chunk.get("item_id")
            if type(item_id) is str:
                item["id"] = item_id
            state = self._items[key] = _Item(index, len(self._items), item)
            self._remember(state, item)
        return state

    def _part(
        self, chunk: dict[str, Any], where: str, kind: str, field: str, index_key: str = "content_index"
    ) -> _Part:
        item = self._item_of(chunk)
        parts = item.content if where == "content" else item.summary
        return item.part(parts, chunk.get(index_key), kind, field)

    def _add_part(self, chunk: dict[str, Any], where: str, index_key: str) -> None:
        base = chunk.get("part")
        if not isinstance(base, dict):
            raise _malformed("a part event has no part object")
        item = self._item_of(chunk)
        if item.done is not None:
            return
        parts = item.content if where == "content" else item.summary
        index = chunk.get(index_key)
        if index is None:
            index = len(parts)
        elif type(index) is not int:
            raise _malformed("a part index is not an integer")
        if len(parts) >= MAX_PARTS and index not in parts:
            raise too_many("parts", MAX_PARTS)
        field = "refusal" if base.get("type") == "refusal" else "text"
        parts[index] = _Part(base, field)

    def _done_part(self, chunk: dict[str, Any], where: str, index_key: str) -> None:
        base = chunk.get("part")
        if not isinstance(base, dict):
            raise _malformed("a part event has no part object")
        item = self._item_of(chunk)
        if item.done is not None:
            return
        parts = item.content if where == "content" else item.summary
        part = item.part(parts, chunk.get(index_key), "", "text")  # its base is replaced below
        part.base = base
        part.field = "refusal" if base.get("type") == "refusal" else "text"
        part.final = None
        part.text = Pieces()
        part.annotations = []
        part.logprobs = []

    @staticmethod
    def _finish_part(part: _Part, chunk: dict[str, Any], key: str) -> None:
        text = chunk.get(key)
        if type(text) is not str:
            raise _malformed(f"a '.done' event has no '{key}'")
        part.final = text
        part.text = Pieces()
        logprobs = chunk.get("logprobs")
        if type(logprobs) is list and logprobs and not part.logprobs:
            part.logprobs = logprobs


# What each event type does (a class-level table: per-answer bound methods would cost more memory
# than a short answer).
_HANDLERS: dict[str, Any] = {
    "response.output_text.done": ResponsesAssembler._text_done,
    "response.output_text.annotation.added": ResponsesAssembler._annotation_added,
    "response.refusal.delta": ResponsesAssembler._refusal_delta,
    "response.refusal.done": ResponsesAssembler._refusal_done,
    "response.content_part.added": ResponsesAssembler._content_part_added,
    "response.content_part.done": ResponsesAssembler._content_part_done,
    "response.output_item.added": ResponsesAssembler._item_added,
    "response.output_item.done": ResponsesAssembler._item_done,
    "response.function_call_arguments.delta": ResponsesAssembler._arguments_delta,
    "response.function_call_arguments.done": ResponsesAssembler._arguments_done,
    "response.reasoning_text.delta": ResponsesAssembler._reasoning_delta,
    "response.reasoning_text.done": ResponsesAssembler._reasoning_done,
    "response.reasoning_summary_part.added": ResponsesAssembler._summary_part_added,
    "response.reasoning_summary_part.done": ResponsesAssembler._summary_part_done,
    "response.reasoning_summary_text.delta": ResponsesAssembler._summary_delta,
    "response.reasoning_summary_text.done": ResponsesAssembler._summary_done,
    COMPLETED: ResponsesAssembler._terminal_event,
    INCOMPLETE: ResponsesAssembler._terminal_event,
}


def _exact_json(value: Any) -> bytes:
    """``value`` (a response object, the answer's top level) as JSON in a bytes object of its own
    size (orjson's result keeps the spare room of its growing buffer, several times the JSON for a
    long answer); malformed when it nests deeper than JSON can be written (orjson reads 1024
    levels but writes 254)."""
    try:
        return bytes(memoryview(orjson.dumps(value)))
    except orjson.JSONEncodeError:
        raise _malformed("a response object nests too deep to be answered") from None


def _index(chunk: Mapping[str, Any], key: str) -> int | None:
    value = chunk.get(key)
    if value is None:
        return None
    if type(value) is not int:
        raise _malformed(f"'{key}' is not an integer")
    return value


def _item_order(item: _Item) -> tuple[int, int, int]:
    return (0, item.index, item.arrival) if item.index is not None else (1, 0, item.arrival)


def _delta_text(chunk: dict[str, Any], event: str) -> str:
    """The text of a ``*.delta`` event; anything else is an impossible shape."""
    delta = chunk.get("delta")
    if type(delta) is not str:
        raise _malformed(f"a '{event}.delta' has no text")
    return delta
