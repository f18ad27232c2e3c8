"""``/v1/chat/completions``: fold ``chat.completion.chunk`` events into one ``chat.completion``.

Rules (field by field, see the module's tests and corpus for each server's shape):

* Top level (``Envelope``, shared with legacy completions): ``id`` first non-empty, ``model``
  first, ``created`` first chunk (last for servers that stamp the end), ``object`` fixed,
  ``obfuscation`` dropped. ``usage``: the one on a chunk without choices wins, else the last
  non-null one; never summed, never invented (no usage in the stream -> no ``usage`` key).
* Choices are keyed by ``index`` (a dict: any int is fine, nothing is sized by it) and sorted.
  ``role`` first (default ``assistant``), ``finish_reason`` last non-null, verbatim. A missing
  choice index means 0; a missing tool-call index means its position in the list.
* Every string delta field (``content``, ``refusal``, ``reasoning_content``, ``reasoning``, or any
  unknown one) is concatenated under the key the server used; a field only ever sent as null
  stays null. ``content`` is always present (except TGI tool answers); when empty it is null or
  ``""`` per the profile.
* Tool calls are keyed by (choice, tool ``index``): id/type first non-empty (a repeated id is
  ignored; a *different* id at an index whose arguments already parse as JSON opens a new call,
  as Ollama sends parallel calls all at index 0), a name that extends the current one replaces
  it (llama.cpp re-sends it whole), else it is appended; arguments always appended. A call the
  stream never gave an id gets a fresh ``call_`` id, as the server's own answer would have one.
* ``annotations`` appended, ``audio`` data base64-decoded, joined and re-encoded, transcript
  concatenated, other audio fields last. ``logprobs``: null unless a chunk had non-null, then
  each list (``content``, ``refusal``) concatenated, entries copied verbatim.
* Unknown keys, on the chunk, the choice or a tool call, are carried the way a non-stream
  answer shows them: last non-null value, null when only null was seen.

``add_raw`` takes a payload without parsing it when it repeats the last text chunk but for its
text, the bulk of a long answer (see ``template``); the converter offers every payload to it first.

``request`` (the client's body) matters only for ``tool_choice``: a forced call makes vLLM answer
``content: ""``. Every wrong type raises ``ConversionError(MALFORMED)``; more than
``MAX_CHOICES`` choices or ``MAX_TOOL_CALLS`` calls in a choice raises ``ConversionError(LIMIT)``.
"""

from __future__ import annotations

import binascii
import uuid
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

import orjson

from ..core.errors import LIMIT, MALFORMED, ConversionError
from ..core.pieces import COMPACT_EVERY, Pieces
from .profiles import (
    AUDIO,
    FUNCTION_CALL,
    REASONING,
    REASONING_KEYS,
    REFUSAL,
    TOOL_CALLS,
    Profile,
    detect,
    fill_defaults,
)
from ..core.template import TextTemplate

MAX_CHOICES = 1024
MAX_TOOL_CALLS = 4096
MAX_TOOL_NAME_CHARS = 1024  # names are concatenated in place: bounded, so that stays linear
# How often one call's arguments are parsed to decide whether a different id starts a new call:
# enough for Ollama's whole calls, too few for a hostile stream to make the work quadratic.
_SPLIT_CHECKS_PER_CALL = 4

# Delta fields whose value must be text when present, and those that must not be text.
_TEXT_KEYS = frozenset({"content", "refusal", *REASONING_KEYS})
_STRUCTURED_KEYS = frozenset({"tool_calls", "function_call", "annotations", "audio"})
# Keys with a rule of their own; any other key is carried as an extra.
_KNOWN_TOP_KEYS = frozenset({"id", "object", "created", "model", "choices", "usage", "obfuscation"})
_KNOWN_CHOICE_KEYS = frozenset({"index", "delta", "logprobs", "finish_reason"})


def malformed(message: str) -> ConversionError:
    return ConversionError(MALFORMED, 502, f"upstream stream chunk is malformed: {message}")


def too_many(what: str, limit: int) -> ConversionError:
    code = "too_many_" + what.replace(" ", "_")
    return ConversionError(LIMIT, 502, f"upstream stream has more than {limit} {what}", code=code)


def merge_last(extras: dict[str, Any], key: str, value: Any) -> None:
    """The non-stream value of an unknown field: the last non-null one, null if only null came."""
    if value is not None or key not in extras:
        extras[key] = value


def _merge_extras(extras: dict[str, Any], keys: tuple[str, ...], source: dict[str, Any]) -> None:
    """``merge_last`` of each of ``keys`` from ``source`` (which has them all)."""
    for key in keys:
        value = source[key]
        if value is not None or key not in extras:
            extras[key] = value


class ExtraKeys:
    """Which keys of an object are extras (not in ``known``), remembered for the next object.

    The chunks of a stream nearly always repeat the keys of the one before: one C-level set
    comparison then replaces a Python loop over every key of every chunk.
    """

    __slots__ = ("_known", "_keys", "_extras")

    def __init__(self, known: frozenset[str]) -> None:
        self._known = known
        self._keys: frozenset[str] = frozenset()
        self._extras: tuple[str, ...] = ()

    def extras_of(self, obj: dict[str, Any]) -> tuple[str, ...]:
        """The extra keys of ``obj``, in its order (so that answers are deterministic)."""
        keys = self._keys
        if len(obj) != len(keys) or not keys.issuperset(obj):
            self._keys = frozenset(obj)
            self._extras = tuple(key for key in obj if key not in self._known)
        return self._extras


class Choices(dict):
    """Per-choice states keyed by ``index`` (a dict: an index of 1e9 allocates nothing), with the
    number not finished yet. Shared by every choice-based schema."""

    __slots__ = ("_new_state", "unfinished")

    def __init__(self, new_state: Any) -> None:
        super().__init__()
        self._new_state = new_state
        self.unfinished = 0

    @property
    def finished(self) -> bool:
        return bool(self) and self.unfinished == 0

    def state_of(self, choice: Any) -> Any:
        """The state of a stream ``choice`` object, created on its first chunk."""
        if type(choice) is not dict:
            raise malformed("a choice is not an object")
        index = choice.get("index", 0)
        if type(index) is not int:
            raise malformed("a choice 'index' is not an integer")
        state = self.get(index)
        if state is None:
            if len(self) >= MAX_CHOICES:
                raise too_many("choices", MAX_CHOICES)
            state = self[index] = self._new_state()
            self.unfinished += 1
        return state

    def finish(self, state: Any, finish_reason: str) -> None:
        """Record a finish reason (the last one wins, verbatim)."""
        if state.finish_reason is None:
            self.unfinished -= 1
        state.finish_reason = finish_reason


class Envelope:
    """The top-level fields every OpenAI-style chunk carries, and the usage."""

    __slots__ = (
        "_unsettled",
        "_id",
        "_model",
        "_created_first",
        "_last_chunk",
        "_final_usage",
        "_last_usage",
        "_extras",
        "_shape",
    )

    def __init__(self) -> None:
        self._unsettled = True
        self._id: str | None = None
        self._model: Any = None
        self._created_first: Any = None
        self._last_chunk: dict[str, Any] = {}
        self._final_usage: dict[str, Any] | None = None
        self._last_usage: dict[str, Any] | None = None
        self._extras: dict[str, Any] = {}
        self._shape = ExtraKeys(_KNOWN_TOP_KEYS)

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._final_usage if self._final_usage is not None else self._last_usage

    def read(self, chunk: dict[str, Any]) -> list[Any]:
        """Fold the chunk's top level in and return its choices (validated to be a list)."""
        if self._unsettled:
            self._settle(chunk)
        self._last_chunk = chunk
        if not _KNOWN_TOP_KEYS.issuperset(chunk):
            _merge_extras(self._extras, self._shape.extras_of(chunk), chunk)
        choices = chunk.get("choices")
        if type(choices) is not list:
            if choices is not None:
                raise malformed("'choices' is not a list")
            choices = []
        usage = chunk.get("usage")
        if usage is not None:
            if type(usage) is not dict:
                raise malformed("'usage' is not an object")
            if choices:
                self._last_usage = usage
            else:
                self._final_usage = usage
        return choices

    def _settle(self, chunk: dict[str, Any]) -> None:
        """First-seen fields; called only until all are known (TGI's ids stay empty: always)."""
        if not self._id:
            chunk_id = chunk.get("id")
            if chunk_id is not None:
                if type(chunk_id) is not str:
                    raise malformed("'id' is not a string")
                if self._id is None or chunk_id:
                    self._id = chunk_id
        if self._created_first is None:
            self._created_first = chunk.get("created")
        if self._model is None:
            self._model = chunk.get("model")
        self._unsettled = not self._id or self._created_first is None or self._model is None

    def detect(self, choice_extra_keys: set[str]) -> Profile:
        return detect(
            first_id=self._id,
            top_extras=self._extras,
            choice_extra_keys=choice_extra_keys,
        )

    def answer(
        self, profile: Profile, obj: str, choices: list[dict[str, Any]], top_keys: Mapping[str, Any]
    ) -> dict[str, Any]:
        answer: dict[str, Any] = {"id": self._id if self._id is not None else "", "object": obj}
        created = self._created_first
        if profile.created_from_last_chunk:
            created = self._last_chunk.get("created", created)
        if created is not None:
            answer["created"] = created
        if self._model is not None:
            answer["model"] = self._model
        answer["choices"] = choices
        usage = self.usage
        if usage is not None:
            usage = dict(usage)
            fill_defaults(usage, profile.usage_keys)
            answer["usage"] = usage
        answer.update(self._extras)
        fill_defaults(answer, top_keys)
        return answer


def merge_logprobs(target: dict[str, Any] | None, logprobs: Any) -> dict[str, Any]:
    """Concatenate each list of a non-null ``logprobs`` object; other fields last non-null."""
    if type(logprobs) is not dict:
        raise malformed("'logprobs' is not an object")
    if target is None:
        target = {}
    for key, value in logprobs.items():
        if type(value) is list:
            pieces = target.get(key)
            if type(pieces) is list:
                pieces.extend(value)
            else:
                target[key] = list(value)
        else:
            merge_last(target, key, value)
    return target


def copy_logprobs(logprobs: dict[str, Any] | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    return {key: list(value) if type(value) is list else value for key, value in logprobs.items()}


_UNSEEN: Any = object()
# Templates that never matched before the stream may stop offering new ones (OpenAI's chunks
# carry random padding; a template would never match).
_TEMPLATE_LEARN_TRIES = 4


class _ToolCall:
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

    def answer(self, profile: Profile, position: int) -> dict[str, Any]:
        arguments = self.arguments.text() or ""
        if profile.compact_tool_arguments:
            with suppress(orjson.JSONDecodeError):  # not JSON: kept as streamed
                arguments = orjson.dumps(orjson.loads(arguments)).decode()
        function = {**self.function_extras, "name": self.name, "arguments": arguments}
        fill_defaults(function, profile.function_keys)
        if self.id is None:  # like the server's own answer would: a fresh id, kept for repeated results
            self.id = f"call_{uuid.uuid4().hex[:24]}"
        call_id = profile.fixed_tool_call_id or self.id
        call: dict[str, Any] = {**self.extras, "id": call_id, "type": self.type or "function", "function": function}
        if profile.keep_tool_call_index:
            call["index"] = position
        return call


class _Choice:
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
        self.calls: dict[int, _ToolCall] = {}
        self.call_keys: dict[int, int] = {}  # stream tool index -> key in ``calls``
        self.function_call: _ToolCall | None = None
        self.annotations: list[Any] | None = None
        self.audio: dict[str, Any] | None = None
        self.audio_data: list[bytes] = []
        self.audio_transcript = Pieces()
        self.finish_reason: Any = None
        self.logprobs: Any = _UNSEEN
        self.extras: dict[str, Any] = {}


class ChoiceAssembler:
    """What every choice-based schema's assembler holds: the profile (None: detect it at the end),
    the top-level ``Envelope`` and the per-choice states."""

    __slots__ = ("_profile", "_envelope", "_choices")

    def __init__(self, profile: Profile | None, new_choice_state: Any) -> None:
        self._profile = profile
        self._envelope = Envelope()
        self._choices = Choices(new_choice_state)

    @property
    def finished(self) -> bool:
        return self._choices.finished

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._envelope.usage


class ChatAssembler(ChoiceAssembler):
    """Chat completions assembler; ``profile`` None means auto-detect at the end."""

    __slots__ = (
        "_forced_tool_choice",
        "_choice_shape",
        "_template",
        "_template_hits",
        "_learn_tries",
        "_payload",
    )

    def __init__(self, profile: Profile | None = None, request: Mapping[str, Any] | None = None) -> None:
        super().__init__(profile, _Choice)
        tool_choice = request.get("tool_choice") if request else None
        self._forced_tool_choice = tool_choice == "required" or isinstance(tool_choice, dict)  # or named
        self._choice_shape = ExtraKeys(_KNOWN_CHOICE_KEYS)
        self._template: TextTemplate | None = None
        self._template_hits = 0
        self._learn_tries = _TEMPLATE_LEARN_TRIES
        self._payload: bytes | None = None  # the raw form of the chunk ``add`` gets next

    def add_raw(self, payload: bytes) -> bool:
        """Fold in a payload without parsing it if it repeats the last text chunk but for its
        text (see ``template``); False: parse it and ``add`` the chunk."""
        template = self._template
        if template is not None:
            middle = template.text_of(payload)
            if middle is not None:
                try:  # parses only if the middle is the inside of one JSON string, as in the template
                    piece = orjson.loads(b'"' + middle + b'"')
                except orjson.JSONDecodeError:
                    return False  # the parser will say what is wrong
                pieces = template.pieces
                pieces.append(piece)
                if len(pieces) >= COMPACT_EVERY:
                    pieces.compact()
                self._template_hits += 1
                return True
            if not self._template_hits:
                self._learn_tries -= 1  # a template that never matched: the stream varies more
            self._template = None
        if self._learn_tries > 0:
            self._payload = payload
        return False

    def add(self, chunk: dict[str, Any]) -> None:
        self._fold(chunk)
        payload = self._payload
        if payload is not None:
            self._payload = None
            self._learn_template(payload, chunk)

    def _learn_template(self, payload: bytes, chunk: dict[str, Any]) -> None:
        """Make ``chunk`` the template if folding it in again would only append its one text."""
        choices = chunk.get("choices")
        if type(choices) is not list or len(choices) != 1 or choices[0].get("logprobs") is not None:
            return
        choice = choices[0]
        delta = choice.get("delta")
        if type(delta) is not dict:
            return
        if len(delta) == 2 and "role" in delta:  # Ollama and TGI repeat the role, which is kept first
            delta = {key: value for key, value in delta.items() if key != "role"}
        if len(delta) != 1:
            return
        state = self._choices[choice.get("index", 0)]
        ((key, value),) = delta.items()
        if type(value) is str and key != "role":
            path: tuple[str | int, ...] = ("choices", 0, "delta", key)
            found = state.texts[key], value
        elif key == "tool_calls" and type(value) is list and len(value) == 1 and (found := _arguments_piece(state, value[0])):
            path = ("choices", 0, "delta", "tool_calls", 0, "function", "arguments")
        else:
            return
        pieces, piece = found
        self._template = TextTemplate.learn(payload, chunk, path, piece, pieces)
        self._template_hits = 0

    def _fold(self, chunk: dict[str, Any]) -> None:
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
                state.logprobs = merge_logprobs(state.logprobs if state.logprobs is not _UNSEEN else None, logprobs)
            elif state.logprobs is _UNSEEN and "logprobs" in choice:
                state.logprobs = None
            if not _KNOWN_CHOICE_KEYS.issuperset(choice):
                _merge_extras(state.extras, self._choice_shape.extras_of(choice), choice)

    def _add_delta(self, state: _Choice, delta: dict[str, Any]) -> None:
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
                    state.function_call = _ToolCall()
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
    def _new_text(state: _Choice, key: str) -> Pieces:
        pieces = Pieces()
        if key == "content":
            state.content = pieces
        return pieces

    def _add_tool_calls(self, state: _Choice, deltas: Any) -> None:
        if type(deltas) is not list:
            raise malformed("'tool_calls' is not a list")
        found = _arguments_piece(state, deltas[0]) if len(deltas) == 1 else None
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
                self._template = None  # its index may now lead to this new call
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
    def _new_tool_call(state: _Choice, index: int) -> _ToolCall:
        calls = state.calls
        if len(calls) >= MAX_TOOL_CALLS:
            raise too_many("tool calls", MAX_TOOL_CALLS)
        key = index if index not in calls else max(calls) + 1
        state.call_keys[index] = key
        call = calls[key] = _ToolCall()
        return call

    def result(self) -> dict[str, Any]:
        profile = self._profile
        if profile is None:
            profile = self._envelope.detect({key for state in self._choices.values() for key in state.extras})
        choices = [self._choice_answer(profile, index, self._choices[index]) for index in sorted(self._choices)]
        return self._envelope.answer(profile, "chat.completion", choices, profile.top_keys)

    def _choice_answer(self, profile: Profile, index: int, state: _Choice) -> dict[str, Any]:
        answer: dict[str, Any] = {"index": index, "message": self._message(profile, state)}
        if state.logprobs is not _UNSEEN:
            answer["logprobs"] = copy_logprobs(state.logprobs)
        answer["finish_reason"] = state.finish_reason
        answer.update(state.extras)
        fill_defaults(answer, profile.choice_keys)
        return answer

    def _message(self, profile: Profile, state: _Choice) -> dict[str, Any]:
        texts = {key: pieces.text() for key, pieces in state.texts.items()}
        content = texts.pop("content", None)
        produced: set[str] = set()
        if texts.get(REFUSAL):
            produced.add(REFUSAL)
        if any(texts.get(key) for key in REASONING_KEYS):
            produced.add(REASONING)
        if state.calls:
            produced.add(TOOL_CALLS)
        if state.function_call is not None:
            produced.add(FUNCTION_CALL)
        if state.audio is not None:
            produced.add(AUDIO)

        message: dict[str, Any] = {"role": state.role or "assistant"}
        if content:
            message["content"] = content
        elif TOOL_CALLS in produced and profile.omit_content_beside_tool_calls:
            pass
        elif TOOL_CALLS in produced and self._forced_tool_choice and profile.forced_tool_choice_content is not None:
            message["content"] = profile.forced_tool_choice_content
        else:
            message["content"] = None if produced & profile.null_content_beside else ""
        message.update(texts)
        message.update(state.others)
        if state.calls:
            calls = state.calls
            message["tool_calls"] = [calls[key].answer(profile, position) for position, key in enumerate(sorted(calls))]
        if state.function_call is not None:
            call = state.function_call
            message["function_call"] = {**call.function_extras, "name": call.name, "arguments": call.arguments.text() or ""}
        if state.annotations is not None:
            message["annotations"] = list(state.annotations)
        if state.audio is not None:
            message["audio"] = _audio_answer(state)
        defaults = profile.message_keys
        if any(key in message for key in REASONING_KEYS):  # keep only the reasoning key the server used
            defaults = {key: value for key, value in defaults.items() if key not in REASONING_KEYS}
        fill_defaults(message, defaults)
        return message


def _arguments_piece(state: _Choice, delta: Any) -> tuple[Pieces, str] | None:
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


def _add_function(call: _ToolCall, function: dict[str, Any]) -> None:
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
                raise ConversionError(LIMIT, 502, f"upstream tool call name exceeds {MAX_TOOL_NAME_CHARS} characters")
        else:
            call.function_extras[key] = value


def _add_audio(state: _Choice, audio: Any) -> None:
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
            except binascii.Error:
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


def _audio_answer(state: _Choice) -> dict[str, Any]:
    audio = dict(state.audio or {})
    if state.audio_data:
        audio["data"] = binascii.b2a_base64(b"".join(state.audio_data), newline=False).decode("ascii")
    transcript = state.audio_transcript.text()
    if transcript is not None:
        audio["transcript"] = transcript
    return audio
