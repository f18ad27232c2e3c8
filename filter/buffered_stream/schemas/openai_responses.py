"""OpenAI Responses API (``POST /v1/responses``): one ``response`` object from its event stream.

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
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import orjson

from ..core import errors
from ..core.assembler import shown, writable
from ..core.errors import UPSTREAM_ERROR, ConversionError, http_status_in
from ..core.fast_path import TextFastPath
from ..core.pieces import COMPACT_EVERY, Pieces
from ..core.request import Rewrite, Skip, load_non_stream_request, model_of, stream_body

PATHS = ("/v1/responses",)
SCHEMA = "responses"
BACKGROUND = Skip("background")

MAX_ITEMS = 4096
MAX_PARTS = 4096
_DEFAULT_ERROR_STATUS = 502
_MESSAGE_EXCERPT_CHARS = 100

# Event types.
TEXT_DELTA = "response.output_text.delta"
COMPLETED = "response.completed"
INCOMPLETE = "response.incomplete"
FAILED = "response.failed"
ERROR = "error"
_TERMINAL_STATUS = {COMPLETED: "completed", INCOMPLETE: "incomplete"}
_SNAPSHOT_EVENTS = frozenset({"response.created", "response.in_progress", "response.queued"})
# Event types that report an error instead of data.
_ERROR_TYPES = frozenset({ERROR, FAILED})


# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True, slots=True)
class ResponsesProfile:
    """Where a backend's non-stream ``response`` differs from its stream's terminal object.

    The defaults describe OpenAI, whose terminal object *is* the non-stream answer. A profile only
    reshapes (keys, ids derived from other values, usage key names); values come from the stream.
    """

    name: str
    # llama.cpp: the non-stream object has ``completed_at`` (the same clock reading as its
    # ``created_at``); the stream's terminal object has no ``completed_at``.
    completed_at_from_created_at: bool = False
    # llama.cpp: non-stream reasoning items carry ``status``; the stream's do not.
    reasoning_item_status: str | None = None
    # Ollama: the non-stream builder answers function calls only, dropping the text streamed
    # before them (its stream keeps that text as a message item after the calls).
    drop_messages_beside_function_calls: bool = False
    # Ollama: non-stream reasoning and function call item ids derive from the response id
    # (``rs_<id>``, ``fc_<id>_<n>``); the stream's are random numbers.
    item_ids_from_response_id: bool = False
    # Ollama: the non-stream ``reasoning`` omits an unset ``effort``/``summary``; the stream's has null.
    drop_null_reasoning_keys: bool = False
    # Ollama: the non-stream ``tools`` re-serialise the request's (namespace tools keep their
    # nested ``tools``); the stream's list drops nested tools.
    tools_from_request: bool = False
    # SGLang: the non-stream ``usage`` keeps chat-completions key names; its stream renames them.
    chat_usage_keys: bool = False


GENERIC = ResponsesProfile("generic")

# OpenAI: ``response.completed`` carries the very object a non-stream call returns
# (openai-python ``lib/streaming/responses/_responses.py`` takes it as the final response).
OPENAI = ResponsesProfile("openai")

# vLLM (0.11-0.24, ``vllm/entrypoints/openai/responses/serving.py``, earlier
# ``serving_responses.py``): ``responses_stream_generator`` ends with the object
# ``responses_full_generator`` builds, the very function the non-stream path returns, so nothing
# differs but random item ids (``msg_``/``rs_``/``fc_`` + uuid, drawn anew by each builder). Its
# terminal event is typed ``response.completed`` even when ``status`` is ``incomplete``; a
# generation error ends the stream without a terminal event (its error object fails vLLM's own
# event validation, so the body is cut), which reads as truncated.
VLLM = ResponsesProfile("vllm")

# llama.cpp ``llama-server`` (``tools/server/server-task.cpp``: ``to_json_oaicompat_resp_final``
# vs ``to_json_oaicompat_resp_stream``/``_partial``): the final object has ``completed_at`` and
# ``created_at`` from one ``std::time`` reading and reasoning items with ``status: completed``; the
# stream's terminal object has neither. Its events carry no ``sequence_number``,
# ``output_index`` or ``content_index``, and ``response.created`` only ``{id, object, status}``.
LLAMACPP = ResponsesProfile("llamacpp", completed_at_from_created_at=True, reasoning_item_status="completed")

# Ollama (v0.13.3 to v0.33, ``openai/responses.go``: ``ToResponse`` vs
# ``ResponsesStreamConverter``; ``middleware/openai.go`` sets ``completed_at``): separate builders.
# ``created_at`` is the stream's completion time vs the last chat chunk's time (both the end of
# generation, wall-clock); item ids, tool serialisation, ``reasoning`` nulls and text before tool
# calls differ as the fields above say. Function call ``call_id`` values are random per call.
OLLAMA = ResponsesProfile(
    "ollama",
    drop_messages_beside_function_calls=True,
    item_ids_from_response_id=True,
    drop_null_reasoning_keys=True,
    tools_from_request=True,
)

# SGLang (``python/sglang/srt/entrypoints/openai/serving_responses.py`` with ``protocol.py``'s
# ``ResponsesResponse.usage: UsageInfo``; streaming works for gpt-oss/Harmony models only): the
# terminal object is ``responses_full_generator``'s, like vLLM, but its usage is renamed to
# ``input_tokens``... for the event while the non-stream answer keeps ``UsageInfo``
# (``prompt_tokens``, ``total_tokens``, ``completion_tokens``, ``prompt_tokens_details``,
# ``reasoning_tokens``). The stream reads cached tokens from a key ``UsageInfo`` lacks, so a cache
# count (``--enable-cache-report``) cannot be known: ``prompt_tokens_details`` comes out null.
# Later SGLang serialises ``usage`` in the Responses shape on both paths; its stream then reports
# input and output tokens as 0, which no assembler can recover (use ``generic`` there).
SGLANG = ResponsesProfile("sglang", chat_usage_keys=True)

PROFILES: Mapping[str, ResponsesProfile] = MappingProxyType(
    {"generic": GENERIC, "openai": OPENAI, "vllm": VLLM, "llamacpp": LLAMACPP, "ollama": OLLAMA, "sglang": SGLANG}
)
AUTO = "auto"
PROFILE_NAMES: tuple[str, ...] = (AUTO, *PROFILES)

_OLLAMA_RESPONSE_ID = re.compile(r"resp_[0-9]+")


def get_profile(name: str) -> ResponsesProfile | None:
    """The named profile; None for ``auto`` (detected at the end); ValueError if unknown."""
    if name == AUTO:
        return None
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; valid profiles: {', '.join(PROFILE_NAMES)}") from None


def detect(response: Mapping[str, Any], sequence_numbers: bool) -> ResponsesProfile:
    """The profile a finished stream reveals, from markers its server really sends.

    llama.cpp: events without ``sequence_number``. Ollama: a response id of decimal digits
    (``resp_123456``; OpenAI's are hex). SGLang: an ``error`` key but no ``background`` key (its
    ``ResponsesResponse`` has no ``background``; vLLM's has no ``error``). Anything else needs no
    reshaping (OpenAI, vLLM): generic.
    """
    if not sequence_numbers:
        return LLAMACPP
    response_id = response.get("id")
    if isinstance(response_id, str) and _OLLAMA_RESPONSE_ID.fullmatch(response_id):
        return OLLAMA
    if "error" in response and "background" not in response:
        return SGLANG
    return GENERIC


# --------------------------------------------------------------------------- request


def plan_request(body: bytes, models: tuple[str, ...] = ()) -> Rewrite | Skip:
    """Convert a Responses request that asks for no stream; leave everything else alone.

    Only ``"stream": true`` is written (every server puts usage in the terminal object, so no
    ``stream_options``). ``background: true`` is a queued response polled later: not ours. The
    hints carry the request's ``tools`` when one nests tools (Ollama's non-stream answer echoes
    them, its stream does not).
    """
    request = load_non_stream_request(body, models)
    if isinstance(request, Skip):
        return request
    background = request.get("background")
    if background is not None and background is not False:
        return BACKGROUND
    rewritten = stream_body(body, parsed=request)  # the client's bytes with only ``stream`` edited
    if isinstance(rewritten, Skip):
        return rewritten
    tools = request.get("tools")
    hints: dict[str, Any] = {}
    if isinstance(tools, list) and any(isinstance(tool, dict) and "tools" in tool for tool in tools):
        hints["tools"] = tools
    return Rewrite(
        body=rewritten,
        schema=SCHEMA,
        model=model_of(request),
        hints=hints,
    )


# --------------------------------------------------------------------------- errors


def upstream_error(chunk: dict[str, Any]) -> ConversionError | None:
    """The error a parsed event reports, or None for a data event (one or two key lookups).

    ``{"type": "error", "code", "message", "param", ...}`` (or its nested ``error`` object),
    ``response.failed`` (its ``response.error``), vLLM's flat ``{"object": "error", ...}`` and
    ``{"error": {...}}``. Status: the upstream's HTTP status when it gives one (a 3-digit ``code``
    or ``http_status_code``), else 502.
    """
    kind = chunk.get("type")
    if kind == TEXT_DELTA:  # the bulk of every stream
        return None
    if type(kind) is str and kind.startswith("response."):
        if kind != FAILED:
            return None
        response = chunk.get("response")
        error = response.get("error") if isinstance(response, dict) else None
        if not isinstance(error, dict):
            error = {"message": "upstream response failed", "code": None}
        return _error_from(error)
    if kind == ERROR:
        nested = chunk.get("error")
        if isinstance(nested, dict):
            return _error_from(nested, chunk)
        return _error_from({key: value for key, value in chunk.items() if key not in ("type", "sequence_number")})
    error = chunk.get("error")
    if isinstance(error, dict):
        return _error_from(error, chunk)
    if error:  # {"error": "text"}
        return _error_from({"message": shown(error)}, chunk)
    if chunk.get("object") == "error":
        return _error_from({key: value for key, value in chunk.items() if key != "object"})
    return None


def error_event(payload: bytes) -> ConversionError:
    """An ``event: error`` (or llama.cpp ``error:`` line) is fatal whatever it holds: its own
    error object when it parses as one (llama.cpp sends the bare ``{code, message, type}``)."""
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        return _error_from({"message": "upstream sent an error event"})
    return upstream_error(parsed) or _error_from(parsed)


def error_body(error: ConversionError) -> bytes:
    """The Responses API answers errors in the OpenAI shape, ``{"error": {...}}``."""
    return error.body()


def _error_from(error: Mapping[str, Any], outer: Mapping[str, Any] | None = None) -> ConversionError:
    """One OpenAI-style error object (``message, type, param, code`` and the upstream's extras)."""
    upstream_type = error.get("type")
    upstream = {
        "message": shown(error.get("message") or "no message"),
        "type": upstream_type if isinstance(upstream_type, str) and upstream_type != ERROR else "upstream_error",
        "param": error.get("param"),
        "code": error.get("code"),
        **{key: value for key, value in error.items() if key not in ("message", "type", "param", "code")},
    }
    status = http_status_in(error) or (http_status_in(outer) if outer else None) or _DEFAULT_ERROR_STATUS
    if not writable(upstream, 1):  # nested too deep for the error body ``{"error": ...}``: the gist only
        upstream = {"message": upstream["message"], "type": upstream["type"], "param": None, "code": None}
    return ConversionError(
        UPSTREAM_ERROR,
        status,
        f"upstream reported an error in the stream: {upstream['message'][:_MESSAGE_EXCERPT_CHARS]}",
        upstream_error=upstream,
    )


def usage_tokens(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Token counts under one set of names, whichever the answer uses (SGLang keeps chat names)."""
    input_tokens = usage.get("input_tokens", usage.get("prompt_tokens"))
    output_tokens = usage.get("output_tokens", usage.get("completion_tokens"))
    return {"input_tokens": input_tokens, "output_tokens": output_tokens, "total_tokens": usage.get("total_tokens")}


def _delta_text(chunk: dict[str, Any], event: str) -> str:
    """The text of a ``*.delta`` event; anything else is an impossible shape."""
    delta = chunk.get("delta")
    if type(delta) is not str:
        raise _malformed(f"a '{event}.delta' has no text")
    return delta


def is_end_payload(payload: bytes) -> bool:
    """A ``[DONE]`` line some proxies add after the terminal event."""
    return payload.strip() == b"[DONE]"


# --------------------------------------------------------------------------- assembly


_DELTA_PATH = ("delta",)
_SEQUENCE_NUMBER = "sequence_number"


def _malformed(message: str) -> ConversionError:
    return errors.malformed(f"upstream stream event is malformed: {message}")


def _too_many(what: str, bound: int) -> ConversionError:
    return errors.too_many(what, bound, code=f"too_many_{what}")


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
                raise _too_many("parts", MAX_PARTS)
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
    """Responses API assembler; ``profile`` None means detect it at the end (``auto``).

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
        "_fast_path",
        # ``add_raw`` and ``add_run`` are the fast path's own bound methods (``core.fast_path``):
        # text deltas that repeat the last one but for their text and ``sequence_number`` (which
        # a delta's fold ignores). OpenAI's are padded and numbered before the text: parsed.
        "add_raw",
        "add_run",
    )

    def __init__(self, profile: ResponsesProfile | None = None, hints: Mapping[str, Any] | None = None) -> None:
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
        self._fast_path = fast_path = TextFastPath()
        self.add_raw = fast_path.add_raw
        self.add_run = fast_path.add_run

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
            else:
                fast_path = self._fast_path
                if fast_path.payload is not None:
                    # Folded again with another text (same part key) and any sequence number,
                    # this event only appends its text.
                    fast_path.learn_text(chunk, _DELTA_PATH, delta, text, _SEQUENCE_NUMBER)
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
        profile = self._profile or detect(answer, self._sequence_numbers)
        if profile is not GENERIC:
            _reshape(answer, profile, self._hints)
        return answer

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
        self._fast_path.forget()  # later events are ignored, not appended
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
            raise _too_many("items", MAX_ITEMS)
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
                raise _too_many("items", MAX_ITEMS)
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
            raise _too_many("parts", MAX_PARTS)
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


# --------------------------------------------------------------------------- profile reshaping


def _reshape(answer: dict[str, Any], profile: ResponsesProfile, hints: Mapping[str, Any]) -> None:
    """Turn the terminal object into the profile's non-stream shape (keys and derived ids only)."""
    output = answer.get("output")
    items = [item for item in output if isinstance(item, dict)] if type(output) is list else []
    if profile.drop_messages_beside_function_calls and any(item.get("type") == "function_call" for item in items):
        answer["output"] = items = [item for item in items if item.get("type") != "message"]
    if profile.item_ids_from_response_id and isinstance(answer.get("id"), str):
        calls = 0
        for item in items:
            if item.get("type") == "reasoning":
                item["id"] = f"rs_{answer['id']}"
            elif item.get("type") == "function_call":
                item["id"] = f"fc_{answer['id']}_{calls}"
                calls += 1
    if profile.reasoning_item_status is not None:
        for item in items:
            if item.get("type") == "reasoning" and "status" not in item:
                item["status"] = profile.reasoning_item_status
    if profile.completed_at_from_created_at and "completed_at" not in answer and "created_at" in answer:
        answer["completed_at"] = answer["created_at"]
    reasoning = answer.get("reasoning")
    if profile.drop_null_reasoning_keys and isinstance(reasoning, dict):
        answer["reasoning"] = {key: value for key, value in reasoning.items() if value is not None}
    tools = hints.get("tools")
    if profile.tools_from_request and type(tools) is list:
        answer["tools"] = [_go_tool(tool) for tool in tools]
    usage = answer.get("usage")
    if profile.chat_usage_keys and isinstance(usage, dict) and "input_tokens" in usage:
        details = usage.get("output_tokens_details")
        answer["usage"] = {
            "prompt_tokens": usage.get("input_tokens"),
            "total_tokens": usage.get("total_tokens"),
            "completion_tokens": usage.get("output_tokens"),
            "prompt_tokens_details": None,
            "reasoning_tokens": details.get("reasoning_tokens", 0) if isinstance(details, dict) else 0,
        }


def _go_tool(tool: Any) -> Any:
    """A request tool as Ollama's ``ResponsesTool`` struct serialises it (nested ``tools`` kept)."""
    if not isinstance(tool, dict):
        return tool
    shaped = {
        "type": tool.get("type", ""),
        "name": tool.get("name", ""),
        "description": tool.get("description"),
        "strict": tool.get("strict"),
        "parameters": tool.get("parameters"),
    }
    nested = tool.get("tools")
    if type(nested) is list and nested:
        shaped["tools"] = [_go_tool(inner) for inner in nested]
    return shaped


def make_assembler(profile: ResponsesProfile | None, hints: Mapping[str, Any] | None = None) -> ResponsesAssembler:
    return ResponsesAssembler(profile, hints)
