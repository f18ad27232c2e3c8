"""Chat completions, the fold: each ``chat.completion.chunk`` into per-choice states.

Rules (field by field, see the tests and corpus for each server's shape):

* Choices are keyed by ``index`` (a dict: any int is fine, nothing is sized by it) and sorted.
  ``role`` first (default ``assistant``), ``finish_reason`` last non-null, verbatim. A missing
  choice index means 0; a missing tool-call index means its position in the list.
* Every string delta field (``content``, ``refusal``, ``reasoning_content``, ``reasoning``, or any
  unknown one) is concatenated under the key the server used; a field only ever sent as null
  stays null.
* Tool calls are keyed by (choice, tool ``index``): id/type first non-empty (a repeated id is
  ignored; a *different* id at an index whose arguments already parse as JSON opens a new call,
  as Ollama sends parallel calls all at index 0), a name that extends the current one replaces
  it (llama.cpp re-sends it whole), else it is appended; arguments always appended.
* ``annotations`` appended, ``audio`` data base64-decoded and joined, transcript concatenated,
  other audio fields last. ``logprobs``: null unless a chunk had non-null, then each list
  (``content``, ``refusal``) concatenated, entries copied verbatim.
* Unknown keys, on the choice or a tool call: last non-null value, null when only null was seen.

Every wrong type raises ``ConversionError(MALFORMED)``; more than ``MAX_CHOICES`` choices or
``MAX_TOOL_CALLS`` calls in a choice raises ``ConversionError(LIMIT)``. How the states become the
answer is ``render``; where a chunk's text went, for the core's fast path, is ``assembler``.
"""

from __future__ import annotations

import binascii
from typing import Any

import orjson

from ...core.errors import limit
from ...core.pieces import COMPACT_EVERY, Pieces
from ..openai_base import (
    ChoiceAssembler,
    ExtraKeys,
    OpenAIProfile,
    malformed,
    merge_extras,
    merge_last,
    merge_logprobs,
    too_many,
)
from .profiles import REASONING_KEYS

MAX_TOOL_CALLS = 4096
MAX_TOOL_NAME_CHARS = 1024  # names are concatenated in place: bounded, so that stays linear
# How often one call's arguments are parsed to decide whether a different id starts a new call:
# enough for Ollama's whole calls, too few for a hostile stream to make the work quadratic.
_SPLIT_CHECKS_PER_CALL = 4

# Delta fields whose value must be text when present, and those that must not be text.
_TEXT_KEYS = frozenset({"content", "refusal", *REASONING_KEYS})
_STRUCTURED_KEYS = frozenset({"tool_calls", "function_call", "annotations", "audio"})
# Keys with a rule of their own; any other key is carried as an extra.
_KNOWN_CHOICE_KEYS = frozenset({"index", "delta", "logprobs", "finish_reason"})

UNSEEN: Any = object()  # logprobs of a choice whose chunks never had the key


class ToolCallState:
    __slots__ = ("id", "type", "name", "arguments", "extras", "function_extras", "split_checks")

    def __init__(self) -> None:
        self.id: str | None = None
        self.type: str | None = None
        self.name = ""
        self.arguments = Pieces()
        self.extras: dict[str, Any] = {}
        self.function_extras: dict[str, Any] = {}
        self.split_checks = _SPLIT_CHECKS_PER_CALL

    def arguments_complete(self) -> bool:
        if not self.split_checks:
            return False
        self.split_checks -= 1
        try:
            orjson.loads(self.arguments.text() or "")
        except orjson.JSONDecodeError:
            return False
        return True


class ChoiceState:
    __slots__ = (
        "role",
        "texts",
        "content",
        "others",
        "calls",
        "call_keys",
        "function_call",
        "annotations",
        "audio",
        "audio_data",
        "audio_transcript",
        "finish_reason",
        "logprobs",
        "extras",
    )

    def __init__(self) -> None:
        self.role: str | None = None
        self.texts: dict[str, Pieces] = {}
        self.content: Pieces | None = None  # texts["content"], once the delta sent that key
        self.others: dict[str, Any] = {}
        self.calls: dict[int, ToolCallState] = {}
        self.call_keys: dict[int, int] = {}  # stream tool index -> key in ``calls``
        self.function_call: ToolCallState | None = None
        self.annotations: list[Any] | None = None
        self.audio: dict[str, Any] | None = None
        self.audio_data: list[bytes] = []
        self.audio_transcript = Pieces()
        self.finish_reason: Any = None
        self.logprobs: Any = UNSEEN
        self.extras: dict[str, Any] = {}


class ChatFold(ChoiceAssembler):
    """The per-choice states of a chat stream, and ``fold`` to add one parsed chunk to them."""

    __slots__ = ("_choice_shape",)

    def __init__(self, profile: OpenAIProfile) -> None:
        super().__init__(profile, ChoiceState)
        self._choice_shape = ExtraKeys(_KNOWN_CHOICE_KEYS)

    def fold(self, chunk: dict[str, Any]) -> None:
        state_of = self._choices.state_of
        for choice in self._envelope.read(chunk):
            state = state_of(choice)
            delta = choice.get("delta")
            if delta:
                if type(delta) is not dict:
                    raise malformed("'delta' is not an object")
                content = delta.get("content")
                pieces = state.content
                if len(delta) == 1 and type(content) is str and pieces is not None:
                    pieces.append(content)  # the most common chunk: one more piece of text
                    if len(pieces) >= COMPACT_EVERY:
                        pieces.compact()
                else:
                    self._add_delta(state, delta)
            finish_reason = choice.get("finish_reason")
            if finish_reason is not None:
                if type(finish_reason) is not str:
                    raise malformed("'finish_reason' is not a string")
                self._choices.finish(state, finish_reason)
            logprobs = choice.get("logprobs")
            if logprobs is not None:
                state.logprobs = merge_logprobs(state.logprobs if state.logprobs is not UNSEEN else None, logprobs)
            elif state.logprobs is UNSEEN and "logprobs" in choice:
                state.logprobs = None
            if not _KNOWN_CHOICE_KEYS.issuperset(choice):
                merge_extras(state.extras, self._choice_shape.extras_of(choice), choice)

    def _add_delta(self, state: ChoiceState, delta: dict[str, Any]) -> None:
        texts = state.texts
        for key, value in delta.items():
            if type(value) is str:
                if key == "role":
                    if state.role is None:
                        state.role = value
                    continue
                if key in _STRUCTURED_KEYS:
                    raise malformed(f"delta '{key}' is a string")
                pieces = texts.get(key)
                if pieces is None:
                    pieces = texts[key] = self._new_text(state, key)
                pieces.add(value)
            elif value is None:
                if key != "role" and key not in texts:
                    texts[key] = self._new_text(state, key)
            elif key == "tool_calls":
                self._add_tool_calls(state, value)
            elif key == "function_call":
                if type(value) is not dict:
                    raise malformed("'function_call' is not an object")
                if state.function_call is None:
                    state.function_call = ToolCallState()
                _add_function(state.function_call, value)
            elif key == "annotations":
                if type(value) is not list:
                    raise malformed("'annotations' is not a list")
                if state.annotations is None:
                    state.annotations = []
                state.annotations.extend(value)
            elif key == "audio":
                _add_audio(state, value)
            elif key in _TEXT_KEYS or key == "role":
                raise malformed(f"delta '{key}' is not a string")
            else:
                state.others[key] = value

    @staticmethod
    def _new_text(state: ChoiceState, key: str) -> Pieces:
        pieces = Pieces()
        if key == "content":
            state.content = pieces
        return pieces

    def _add_tool_calls(self, state: ChoiceState, deltas: Any) -> None:
        if type(deltas) is not list:
            raise malformed("'tool_calls' is not a list")
        found = arguments_piece(state, deltas[0]) if len(deltas) == 1 else None
        if found is not None:
            arguments, piece = found
            arguments.add(piece)
            return
        for position, delta in enumerate(deltas):
            if type(delta) is not dict:
                raise malformed("a tool call is not an object")
            index = delta.get("index")
            if index is None:
                index = position
            elif type(index) is not int:
                raise malformed("a tool call 'index' is not an integer")
            call_id = delta.get("id") or None
            if call_id is not None and type(call_id) is not str:
                raise malformed("a tool call 'id' is not a string")
            key = state.call_keys.get(index)
            call = None if key is None else state.calls[key]
            if (
                call is not None
                and call_id is not None
                and call.id is not None
                and call_id != call.id
                and call.arguments_complete()
            ):
                call = None  # Ollama: the next parallel call arrives at the same index
            if call is None:
                call = self._new_tool_call(state, index)
            for name, value in delta.items():
                if name == "function":
                    if value is not None:
                        if type(value) is not dict:
                            raise malformed("a tool call 'function' is not an object")
                        _add_function(call, value)
                elif name == "id":
                    if call.id is None:
                        call.id = call_id
                elif name == "type":
                    if value:
                        if type(value) is not str:
                            raise malformed("a tool call 'type' is not a string")
                        if call.type is None:
                            call.type = value
                elif name != "index":
                    merge_last(call.extras, name, value)

    @staticmethod
    def _new_tool_call(state: ChoiceState, index: int) -> ToolCallState:
        calls = state.calls
        if len(calls) >= MAX_TOOL_CALLS:
            raise too_many("tool calls", MAX_TOOL_CALLS)
        key = index if index not in calls else max(calls) + 1
        state.call_keys[index] = key
        call = calls[key] = ToolCallState()
        return call


def arguments_piece(state: ChoiceState, delta: Any) -> tuple[Pieces, str] | None:
    """For the common tool-call delta, ``{"index": i, "function": {"arguments": s}}`` of a call
    already open: that call's arguments and ``s``, to fold in with no loop. None for any other."""
    if type(delta) is not dict or len(delta) != 2:
        return None
    index = delta.get("index")
    function = delta.get("function")
    key = state.call_keys.get(index) if type(index) is int else None
    if key is None or type(function) is not dict or len(function) != 1:
        return None
    piece = function.get("arguments")
    if type(piece) is not str:
        return None
    return state.calls[key].arguments, piece


def _add_function(call: ToolCallState, function: dict[str, Any]) -> None:
    for key, value in function.items():
        if value is None:
            continue
        if key == "arguments":
            if type(value) is not str:
                raise malformed("tool call 'arguments' is not a string")
            arguments = call.arguments
            arguments.add(value)
        elif key == "name":
            if type(value) is not str:
                raise malformed("tool call 'name' is not a string")
            if not call.name or value.startswith(call.name):
                call.name = value  # llama.cpp re-sends the whole, growing name
            else:
                call.name += value
            if len(call.name) > MAX_TOOL_NAME_CHARS:
                raise limit(f"upstream tool call name exceeds {MAX_TOOL_NAME_CHARS} characters")
        else:
            call.function_extras[key] = value


def _add_audio(state: ChoiceState, audio: Any) -> None:
    if type(audio) is not dict:
        raise malformed("'audio' is not an object")
    if state.audio is None:
        state.audio = {}
    for key, value in audio.items():
        if value is None:
            state.audio.setdefault(key, None)
        elif key == "data":
            if type(value) is not str:
                raise malformed("audio 'data' is not a string")
            try:
                state.audio_data.append(binascii.a2b_base64(value))
            except ValueError:  # binascii.Error, or a plain ValueError for a str with non-ASCII
                raise malformed("audio 'data' is not base64") from None
            state.audio["data"] = None
        elif key == "transcript":
            if type(value) is not str:
                raise malformed("audio 'transcript' is not a string")
            transcript = state.audio_transcript
            transcript.add(value)
            state.audio["transcript"] = None
        else:
            state.audio[key] = value
