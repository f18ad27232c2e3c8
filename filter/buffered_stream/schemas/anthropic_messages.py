"""Anthropic Messages (``POST /v1/messages``): fold the event stream into the one ``message`` answer.

Rules (Anthropic's "messages-streaming" docs and ``accumulate_event`` of anthropic-sdk-python's
``lib/streaming/_messages.py``, minus that function's known slips):

- ``message_start.message`` is the base object: id, type, role, model, content, stop_reason,
  stop_sequence, usage and whatever else it carries. A start without ``usage`` is fine.
- Content blocks are kept by their ``index`` and ordered by it; never merged across indices and
  never invented. ``content_block_start`` gives a block as the answer will show it, deltas fill it:
  ``text_delta`` concatenates ``text``; ``citations_delta`` appends to the text block's
  ``citations``; ``thinking_delta`` concatenates ``thinking`` and ``signature_delta`` replaces
  ``signature`` (a thinking block that only got a signature still has ``thinking: ""``);
  ``input_json_delta`` pieces of a ``*tool_use`` block are joined and parsed at
  ``content_block_stop`` (nothing streamed: the start's ``input``, ``{}`` without one).
  ``redacted_thinking``, ``*_tool_result`` and unknown blocks are taken from their start as sent.
- ``message_delta.delta`` sets ``stop_reason``, ``stop_sequence`` (and any other key it carries);
  its ``usage`` is cumulative: each non-null field REPLACES (never adds to) the one before, a null
  never overwrites a real value, and a field the server leaves out keeps its earlier value.
- ``ping`` and unknown event types are ignored; ``message_stop`` finishes the answer and anything
  after it is ignored. Without ``message_stop`` the answer is not finished (a truncated stream).
- An ``error`` event is the upstream's failure, with Anthropic's HTTP status for its type.

A ``MessagesProfile`` shapes the answer like one server's own ``stream: false`` answer: key order,
which null or empty keys it leaves out, what an answer without blocks looks like. Profiles shape
keys only; every value comes from the stream. ``auto`` picks one from the shape of
``message_start`` (see ``detect``) and falls back to ``generic``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson

from ..core import errors
from ..core.assembler import shown, writable
from ..core.errors import UPSTREAM_ERROR, ConversionError
from ..core.fast_path import TextFastPath
from ..core.pieces import COMPACT_EVERY, Pieces
from ..core.request import Rewrite, Skip, load_non_stream_request, model_of, stream_body

SCHEMA = "messages"
PATHS = ("/v1/messages",)


def is_end_payload(payload: bytes) -> bool:
    """vLLM ends its Messages stream with an OpenAI-style ``data: [DONE]`` after ``message_stop``;
    without ``message_stop`` the answer is still incomplete (truncated)."""
    return payload.strip() == b"[DONE]"


MAX_BLOCKS = 4096

# Anthropic's documented error types and their HTTP statuses; anything else is a bad gateway.
ERROR_STATUS: Mapping[str, int] = MappingProxyType(
    {
        "invalid_request_error": 400,
        "authentication_error": 401,
        "permission_error": 403,
        "not_found_error": 404,
        "request_too_large": 413,
        "rate_limit_error": 429,
        "api_error": 500,
        "timeout_error": 504,
        "overloaded_error": 529,
    }
)
UNKNOWN_ERROR_STATUS = 502
_MESSAGE_EXCERPT_CHARS = 100

# Key orders of the native answers: Anthropic's and Go's structs, and the pydantic models and
# ordered JSON of vLLM, SGLang and llama.cpp.
MODEL_FIRST_ORDER = ("id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage")
CONTENT_FIRST_ORDER = ("id", "type", "role", "content", "model", "stop_reason", "stop_sequence", "usage")

_TOOL_USE_SUFFIX = "tool_use"  # tool_use, server_tool_use, mcp_tool_use: their input streams as JSON
_UNSET = object()


# --------------------------------------------------------------------------- request


def plan_request(body: bytes, models: tuple[str, ...] = ()) -> Rewrite | Skip:
    """Convert a ``stream`` false/absent request: the body gets ``"stream": true`` and nothing else.

    Anthropic has no ``stream_options``: usage always streams. ``models`` is an allow-list of glob
    patterns for the request's ``model`` (empty: every model). The answer needs nothing from the
    request, so ``hints`` is empty.
    """
    request = load_non_stream_request(body, models)
    if isinstance(request, Skip):
        return request
    rewritten = stream_body(body, parsed=request)  # the client's bytes with only ``stream`` edited
    if isinstance(rewritten, Skip):
        return rewritten
    return Rewrite(body=rewritten, schema=SCHEMA, model=model_of(request), hints={})


# --------------------------------------------------------------------------- errors


def upstream_error(chunk: dict[str, Any]) -> ConversionError | None:
    """The failure an in-stream ``{"type": "error", "error": {...}}`` reports, else None.

    The same payload arrives as ``event: error``; a bare ``{"error": ...}`` without a ``type`` (a
    proxy between us and the server) counts too. The status follows the error's type.
    """
    kind = chunk.get("type")
    if kind != "error" and not (kind is None and chunk.get("error")):
        return None
    error = chunk.get("error")
    status = UNKNOWN_ERROR_STATUS
    if isinstance(error, dict):
        upstream = error
        error_type = error.get("type")
        if isinstance(error_type, str):
            status = ERROR_STATUS.get(error_type, UNKNOWN_ERROR_STATUS)
    else:  # no error object to pass on: one in Anthropic's shape, with a bad-gateway status
        upstream = {"type": "api_error", "message": shown(error) if error else "upstream sent an error event"}
    message = shown(upstream.get("message") or "no message")[:_MESSAGE_EXCERPT_CHARS]
    if not writable(upstream, 1):  # nested too deep for the error body ``{"error": ...}``: the gist only
        error_type, text = upstream.get("type"), upstream.get("message")
        upstream = {
            "type": error_type if isinstance(error_type, str) else "api_error",
            "message": text if type(text) is str else message,
        }
    return ConversionError(
        UPSTREAM_ERROR,
        status,
        f"upstream reported an error in the stream: {message}",
        upstream_error=upstream,
    )


def error_body(error: ConversionError) -> bytes:
    """Anthropic's error answer: the upstream's own error object when there is one, else ours."""
    if error.upstream_error is not None:
        return orjson.dumps({"type": "error", "error": error.upstream_error})
    return orjson.dumps({"type": "error", "error": {"type": "api_error", "message": error.message}})


def usage_tokens(usage: Mapping[str, Any] | None) -> dict[str, int]:
    """Input, output and total tokens of a Messages usage, for metrics; only what was reported.

    ``input_tokens`` counts cache reads and writes too (Anthropic reports them apart), so it means
    what an OpenAI ``prompt_tokens`` means.
    """
    if not usage:
        return {}
    counts: dict[str, int] = {}
    inputs = [
        value
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        if type(value := usage.get(key)) is int
    ]
    if inputs:
        counts["input_tokens"] = sum(inputs)
    output = usage.get("output_tokens")
    if type(output) is int:
        counts["output_tokens"] = output
        if "input_tokens" in counts:
            counts["total_tokens"] = counts["input_tokens"] + output
    return counts


def _malformed(what: str) -> ConversionError:
    return errors.malformed(f"upstream stream event is malformed: {what}")


_limit = errors.limit


def _index_of(index: Any) -> str:
    """A block ``index`` for an error message: the number, or only the type of anything else (a
    string there could be completion text, which messages never quote)."""
    return str(index) if type(index) is int else f"of type {type(index).__name__}"


# --------------------------------------------------------------------------- profiles


def _keys(**defaults: Any) -> Mapping[str, Any]:
    return MappingProxyType(defaults)


@dataclass(frozen=True, slots=True)
class MessagesProfile:
    """The native ``stream: false`` shape of one server; ``doc`` names the server version and source."""

    name: str
    doc: str
    # The answer's keys in this order; other keys follow in the order the stream gave them.
    key_order: tuple[str, ...] = MODEL_FIRST_ORDER
    # Keys the answer always has, with their value when the stream never set them.
    defaults: Mapping[str, Any] = field(
        default_factory=lambda: _keys(
            type="message", role="assistant", content=[], stop_reason=None, stop_sequence=None
        )
    )
    # pydantic ``model_dump(exclude_none=True)``: null keys of the message, its usage and blocks go.
    drop_none: bool = False
    # Go ``omitempty``: these message keys go when null or "".
    omit_empty: frozenset[str] = frozenset()
    # ``content`` of an answer without any block: [] (Anthropic), null (Go nil slice) or one empty
    # text block (SGLang: "Anthropic requires at least one content block").
    empty_content: tuple[Mapping[str, Any], ...] | None = ()
    # Resolve the profile from ``message_start`` (``auto`` only).
    detect: bool = False


GENERIC = MessagesProfile(
    "generic",
    "Anthropic's documented Message shape, exactly as the stream built it (nothing dropped).",
)

PROFILES: Mapping[str, MessagesProfile] = MappingProxyType(
    {
        "auto": MessagesProfile(
            "auto", "Detected from the message_start shape (see detect()); generic when unknown.", detect=True
        ),
        "generic": GENERIC,
        "anthropic": MessagesProfile(
            "anthropic",
            "Anthropic's own API (messages-streaming docs; anthropic-sdk-python "
            "src/anthropic/lib/streaming/_messages.py accumulate_event): the non-stream answer is the "
            "message_start snapshot with blocks, stop fields and the cumulative usage folded in "
            "(the generic rules, named for routes to Anthropic).",
        ),
        "vllm": MessagesProfile(
            "vllm",
            "vLLM main (commit 82df3f4): vllm/entrypoints/anthropic/serving.py builds both answers from "
            "protocol.py's AnthropicMessagesResponse; api_router.py sends model_dump(exclude_none=True), "
            "so no stop_sequence or cache keys when null. Its stream dumps exclude_unset (message_start "
            "has no type/role) and ends with data: [DONE]; thinking signatures are random uuid hex, "
            "different in each answer.",
            key_order=CONTENT_FIRST_ORDER,
            defaults=_keys(type="message", role="assistant", content=[]),
            drop_none=True,
        ),
        "sglang": MessagesProfile(
            "sglang",
            "SGLang main (2026): python/sglang/srt/entrypoints/anthropic/serving.py and "
            "response_conversion.py, model_dump(exclude_none=True) of protocol.py's "
            "AnthropicMessagesResponse; its usage split puts input_tokens on message_start only "
            "(message_delta carries output_tokens), and an answer without blocks gets one empty text block.",
            key_order=CONTENT_FIRST_ORDER,
            defaults=_keys(type="message", role="assistant", content=[]),
            drop_none=True,
            empty_content=(_keys(type="text", text=""),),
        ),
        "llamacpp": MessagesProfile(
            "llamacpp",
            "llama.cpp llama-server master (2026; /v1/messages since PR #17570): tools/server/server-task.cpp "
            "to_json_anthropic / to_json_anthropic_stream / cmpl_partial::to_json_anthropic. "
            "nlohmann ordered_json: content before model; usage {cache_read_input_tokens, "
            "input_tokens, output_tokens}, message_delta usage {output_tokens} only; thinking "
            'signature ""; tool_use starts without input.',
            key_order=CONTENT_FIRST_ORDER,
        ),
        "ollama": MessagesProfile(
            "ollama",
            "Ollama v0.33.0-rc2 (Anthropic API since 0.14.0): anthropic/anthropic.go ToMessagesResponse and "
            "StreamConverter. Go structs with omitempty: stop_reason/stop_sequence omitted when "
            "empty, thinking without signature, no ping; message_start input_tokens may be an "
            "estimate that message_delta corrects; an answer without blocks has content null.",
            defaults=_keys(type="message", role="assistant"),
            omit_empty=frozenset({"stop_reason", "stop_sequence"}),
            empty_content=None,
        ),
    }
)
PROFILE_NAMES: tuple[str, ...] = tuple(PROFILES)


def detect(message: Mapping[str, Any]) -> MessagesProfile:
    """The profile a ``message_start.message`` reveals by its keys (their order is the server's).

    vLLM dumps it ``exclude_unset``: no ``type``. pydantic servers put ``content`` before ``model``:
    with null stop keys that is llama.cpp, without (``exclude_none``) SGLang. Go's omitempty drops
    the null stop keys from Ollama's, which keeps Anthropic's order. Anything else is generic.
    """
    if "type" not in message:
        return PROFILES["vllm"]
    keys = list(message)
    if "content" in message and "model" in message and keys.index("content") < keys.index("model"):
        return PROFILES["llamacpp"] if "stop_reason" in message else PROFILES["sglang"]
    if "stop_reason" not in message and "stop_sequence" not in message:
        return PROFILES["ollama"]
    return GENERIC


# --------------------------------------------------------------------------- assembly


class _Block:
    """One content block: its start as sent, plus what its deltas streamed."""

    __slots__ = ("start", "text", "thinking", "json", "signature", "citations", "input", "stopped")

    def __init__(self, start: dict[str, Any]) -> None:
        self.start = start
        self.text: Pieces | None = None
        self.thinking: Pieces | None = None
        self.json: Pieces | None = None
        self.signature: Any = _UNSET
        self.citations: list[Any] | None = None
        self.input: Any = _UNSET  # the parsed input once the block stopped
        self.stopped = False

    def parse_input(self) -> None:
        pieces = self.json
        if pieces is None or self.input is not _UNSET:
            return
        text = pieces.text() or ""
        if text:
            try:
                self.input = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                raise _malformed(
                    f"tool input is not valid JSON: {exc.msg} (at char {exc.pos} of {len(text)})"
                ) from None
            if not writable(self.input, _INPUT_DEPTH):
                raise _malformed("tool input nests too deep to be answered")
        self.json = None

    def answer(self, drop_none: bool) -> dict[str, Any]:
        block = dict(self.start)
        kind = block.get("type")
        if self.text is not None or (kind == "text" and "text" not in block):
            block["text"] = _joined(block.get("text"), self.text)
        if self.citations is not None:
            before = block.get("citations")
            block["citations"] = (list(before) if isinstance(before, list) else []) + self.citations
        if kind == "thinking":
            block["thinking"] = _joined(block.get("thinking"), self.thinking)
            if self.signature is not _UNSET:
                block["signature"] = self.signature
        if isinstance(kind, str) and kind.endswith(_TOOL_USE_SUFFIX):
            self.parse_input()
            if self.input is not _UNSET:
                block["input"] = self.input
            elif "input" not in block:
                block["input"] = {}
        if drop_none:
            block = {key: value for key, value in block.items() if value is not None}
        return block


def _joined(before: Any, pieces: Pieces | None) -> str:
    prefix = before if isinstance(before, str) else ""
    if pieces is None:
        return prefix
    return prefix + (pieces.text() or "")


_TEXT_PATH = ("delta", "text")
_INPUT_DEPTH = 3  # a tool input stands in the answer's ``content`` list, in its block


class MessagesAssembler:
    """Assembles one Messages stream; ``profile`` None means ``auto``. ``hints`` is unused: the
    answer needs nothing from the request."""

    # ``add_raw`` and ``add_run`` are the fast path's own bound methods (``core.fast_path``):
    # a text delta that repeats the last one but for its text is appended without parsing.
    __slots__ = (
        "_profile",
        "_message",
        "_usage",
        "_blocks",
        "_stop",
        "_started",
        "_finished",
        "_fast_path",
        "add_raw",
        "add_run",
    )

    def __init__(self, profile: MessagesProfile | None = None, hints: Mapping[str, Any] | None = None) -> None:
        self._profile = PROFILES["auto"] if profile is None else profile
        self._message = b"{}"  # message_start's message as JSON: a fraction of its parsed size
        self._usage: dict[str, Any] | None = None
        self._blocks: dict[int, _Block] = {}
        self._stop: dict[str, Any] = {}  # message_delta.delta keys
        self._started = False
        self._finished = False
        self._fast_path = fast_path = TextFastPath()
        self.add_raw = fast_path.add_raw
        self.add_run = fast_path.add_run

    @property
    def profile(self) -> MessagesProfile:
        """The profile in use (``auto`` until ``message_start`` resolved it)."""
        return self._profile

    @property
    def finished(self) -> bool:
        """``message_stop`` arrived."""
        return self._finished

    @property
    def output_started(self) -> bool:
        """A content block opened (the first-token mark: servers open one with its first token)."""
        return bool(self._blocks)

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._usage

    def add(self, chunk: dict[str, Any]) -> None:
        if self._finished:
            return
        kind = chunk.get("type")
        if kind == "content_block_delta":  # the hot path: one per token
            index = chunk.get("index")
            block = self._blocks.get(index) if type(index) is int else None
            delta = chunk.get("delta")
            if block is None or type(delta) is not dict:
                raise _malformed(
                    "content_block_delta without a dict delta"
                    if block
                    else f"delta for unstarted block {_index_of(index)}"
                )
            delta_type = delta.get("type")
            if delta_type == "text_delta":
                text = delta.get("text")
                if type(text) is not str:
                    raise _malformed("text_delta.text is not a string")
                pieces = block.text
                if pieces is None:
                    if block.start.get("type") != "text":
                        return
                    pieces = block.text = Pieces()
                pieces.append(text)
                if len(pieces) >= COMPACT_EVERY:
                    pieces.compact()
                fast_path = self._fast_path
                if fast_path.payload is not None:
                    # Folded again with another text, this event only appends that text here.
                    fast_path.learn_text(chunk, _TEXT_PATH, text, pieces)
            else:
                self._other_delta(block, delta_type, delta)
        elif kind == "content_block_start":
            self._start_block(chunk)
        elif kind == "content_block_stop":
            index = chunk.get("index")
            block = self._blocks.get(index) if type(index) is int else None
            if block is None:
                raise _malformed(f"stop of unstarted block {_index_of(index)}")
            block.stopped = True
            block.parse_input()
        elif kind == "message_start":
            self._start_message(chunk)
        elif kind == "message_delta":
            self._message_delta(chunk)
        elif kind == "message_stop":
            if not self._started:
                raise _malformed("message_stop without message_start")
            self._finished = True
            self._fast_path.forget()  # later events are ignored, not appended
        elif kind == "error":
            error = upstream_error(chunk)
            assert error is not None
            raise error
        # ping and unknown event types carry nothing the answer needs

    def _other_delta(self, block: _Block, delta_type: Any, delta: dict[str, Any]) -> None:
        block_type = block.start.get("type")
        if delta_type == "input_json_delta":
            partial = delta.get("partial_json")
            if type(partial) is not str:
                raise _malformed("input_json_delta.partial_json is not a string")
            if not (isinstance(block_type, str) and block_type.endswith(_TOOL_USE_SUFFIX)):
                return
            if block.input is not _UNSET:
                raise _malformed("input_json_delta after its block stopped")
            if block.json is None:
                block.json = Pieces()
            block.json.add(partial)
        elif delta_type == "thinking_delta":
            thinking = delta.get("thinking")
            if type(thinking) is not str:
                raise _malformed("thinking_delta.thinking is not a string")
            if block_type == "thinking":
                if block.thinking is None:
                    block.thinking = Pieces()
                block.thinking.add(thinking)
        elif delta_type == "signature_delta":
            signature = delta.get("signature")
            if type(signature) is not str:
                raise _malformed("signature_delta.signature is not a string")
            if block_type == "thinking":
                block.signature = signature
        elif delta_type == "citations_delta":
            if block_type == "text":
                if block.citations is None:
                    block.citations = []
                block.citations.append(delta.get("citation"))
        # unknown delta types carry nothing the answer needs

    def _start_block(self, chunk: dict[str, Any]) -> None:
        if not self._started:
            raise _malformed("content_block_start before message_start")
        index = chunk.get("index")
        start = chunk.get("content_block")
        if type(index) is not int or index < 0:
            raise _malformed(f"content block index {_index_of(index)} is not a non-negative integer")
        if type(start) is not dict:
            raise _malformed("content_block is not an object")
        if index in self._blocks:
            raise _malformed(f"content block {index} started twice")
        if len(self._blocks) >= MAX_BLOCKS:
            raise _limit(f"upstream answer has more than {MAX_BLOCKS} content blocks")
        self._blocks[index] = _Block(start)

    def _start_message(self, chunk: dict[str, Any]) -> None:
        if self._started:
            raise _malformed("message_start twice")
        message = chunk.get("message")
        if type(message) is not dict:
            raise _malformed("message_start.message is not an object")
        usage = message.get("usage")
        if usage is not None and type(usage) is not dict:
            raise _malformed("message_start usage is not an object")
        self._started = True
        try:  # copied: orjson's own buffer keeps a few KiB of spare capacity
            self._message = bytes(memoryview(orjson.dumps(message)))
        except orjson.JSONEncodeError:  # orjson reads 1024 levels but writes 254
            raise _malformed("message_start.message nests too deep to be answered") from None
        self._usage = dict(usage) if usage else None
        content = message.get("content")
        if isinstance(content, list):  # a prefilled snapshot: its blocks hold the first indices
            for index, block in enumerate(content):
                if type(block) is dict:
                    self._blocks[index] = _Block(block)
        if self._profile.detect:
            self._profile = detect(message)

    def _message_delta(self, chunk: dict[str, Any]) -> None:
        if not self._started:
            raise _malformed("message_delta before message_start")
        delta = chunk.get("delta")
        usage = chunk.get("usage")
        if delta is not None and type(delta) is not dict:
            raise _malformed("message_delta.delta is not an object")
        if usage is not None and type(usage) is not dict:
            raise _malformed("message_delta.usage is not an object")
        if delta:
            stop = self._stop
            for key, value in delta.items():
                if value is not None or key not in stop:
                    stop[key] = value
        if usage:
            merged = self._usage
            if merged is None:
                merged = self._usage = {}
            for key, value in usage.items():
                if value is not None:
                    merged[key] = value

    def result(self) -> dict[str, Any]:
        profile = self._profile if not self._profile.detect else GENERIC
        drop_none = profile.drop_none
        values: dict[str, Any] = orjson.loads(self._message)
        for key, value in self._stop.items():
            if value is not None or values.get(key) is None:
                values[key] = value
        if self._usage is not None:
            usage = self._usage
            values["usage"] = {k: v for k, v in usage.items() if v is not None} if drop_none else dict(usage)
        else:
            values.pop("usage", None)
        blocks = self._blocks
        content: list[dict[str, Any]] | None = [blocks[index].answer(drop_none) for index in sorted(blocks)]
        if not content:
            empty = profile.empty_content
            content = None if empty is None else [dict(block) for block in empty]
        values["content"] = content
        for key, empty in profile.defaults.items():
            if key not in values:
                values[key] = [] if type(empty) is list else empty
        answer = {key: values.pop(key) for key in profile.key_order if key in values}
        answer.update(values)
        if drop_none:
            answer = {key: value for key, value in answer.items() if value is not None}
        for key in profile.omit_empty:
            if answer.get(key, 0) in (None, ""):
                del answer[key]
        return answer
