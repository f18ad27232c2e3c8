"""The Messages event stream folded into the one ``message`` answer, shaped by a ``MessagesProfile``.

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

``text_target`` tells the core's fast path where a ``text_delta``'s text went, so later deltas of
the same block that differ only in their text are appended without parsing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ...core.assembler import TextTarget, writable
from ...core.errors import limit
from ...core.pieces import COMPACT_EVERY, Pieces
from .errors import index_of, malformed_event, upstream_error
from .profiles import GENERIC, MessagesProfile, detect

MAX_BLOCKS = 4096

_TOOL_USE_SUFFIX = "tool_use"  # tool_use, server_tool_use, mcp_tool_use: their input streams as JSON
_UNSET = object()
_TEXT_PATH = ("delta", "text")
_INPUT_DEPTH = 3  # a tool input stands in the answer's ``content`` list, in its block


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
                raise malformed_event(
                    f"tool input is not valid JSON: {exc.msg} (at char {exc.pos} of {len(text)})"
                ) from None
            if not writable(self.input, _INPUT_DEPTH):
                raise malformed_event("tool input nests too deep to be answered")
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


class MessagesAssembler:
    """Assembles one Messages stream shaped like ``profile`` (``AUTO``: resolved at
    ``message_start``). ``hints`` is unused: the answer needs nothing from the request."""

    __slots__ = ("_profile", "_message", "_usage", "_blocks", "_stop", "_started", "_finished")

    def __init__(self, profile: MessagesProfile, hints: Mapping[str, Any] | None = None) -> None:
        self._profile = profile
        self._message = b"{}"  # message_start's message as JSON: a fraction of its parsed size
        self._usage: dict[str, Any] | None = None
        self._blocks: dict[int, _Block] = {}
        self._stop: dict[str, Any] = {}  # message_delta.delta keys
        self._started = False
        self._finished = False

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
                raise malformed_event(
                    "content_block_delta without a dict delta"
                    if block
                    else f"delta for unstarted block {index_of(index)}"
                )
            delta_type = delta.get("type")
            if delta_type == "text_delta":
                text = delta.get("text")
                if type(text) is not str:
                    raise malformed_event("text_delta.text is not a string")
                pieces = block.text
                if pieces is None:
                    if block.start.get("type") != "text":
                        return
                    pieces = block.text = Pieces()
                pieces.append(text)
                if len(pieces) >= COMPACT_EVERY:
                    pieces.compact()
            else:
                self._other_delta(block, delta_type, delta)
        elif kind == "content_block_start":
            self._start_block(chunk)
        elif kind == "content_block_stop":
            index = chunk.get("index")
            block = self._blocks.get(index) if type(index) is int else None
            if block is None:
                raise malformed_event(f"stop of unstarted block {index_of(index)}")
            block.stopped = True
            block.parse_input()
        elif kind == "message_start":
            self._start_message(chunk)
        elif kind == "message_delta":
            self._message_delta(chunk)
        elif kind == "message_stop":
            if not self._started:
                raise malformed_event("message_stop without message_start")
            self._finished = True  # later events are ignored (``text_target`` offers no more)
        elif kind == "error":
            error = upstream_error(chunk)
            assert error is not None
            raise error
        # ping and unknown event types carry nothing the answer needs

    def text_target(self, chunk: dict[str, Any]) -> TextTarget | None:
        """Where the text of ``chunk`` (just folded) went: for a ``text_delta`` of a text block,
        that block's text pieces (folded in again with another text, the event would only append
        that text there); else None, and always None once ``message_stop`` came (later events are
        ignored, not appended)."""
        if self._finished or chunk.get("type") != "content_block_delta":
            return None
        delta = chunk["delta"]  # ``add`` proved: a dict, for a started block at an int index
        if delta.get("type") != "text_delta":
            return None
        pieces = self._blocks[chunk["index"]].text  # None: not a text block, the text was dropped
        return None if pieces is None else (_TEXT_PATH, delta["text"], pieces, None)

    def _other_delta(self, block: _Block, delta_type: Any, delta: dict[str, Any]) -> None:
        block_type = block.start.get("type")
        if delta_type == "input_json_delta":
            partial = delta.get("partial_json")
            if type(partial) is not str:
                raise malformed_event("input_json_delta.partial_json is not a string")
            if not (isinstance(block_type, str) and block_type.endswith(_TOOL_USE_SUFFIX)):
                return
            if block.input is not _UNSET:
                raise malformed_event("input_json_delta after its block stopped")
            if block.json is None:
                block.json = Pieces()
            block.json.add(partial)
        elif delta_type == "thinking_delta":
            thinking = delta.get("thinking")
            if type(thinking) is not str:
                raise malformed_event("thinking_delta.thinking is not a string")
            if block_type == "thinking":
                if block.thinking is None:
                    block.thinking = Pieces()
                block.thinking.add(thinking)
        elif delta_type == "signature_delta":
            signature = delta.get("signature")
            if type(signature) is not str:
                raise malformed_event("signature_delta.signature is not a string")
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
            raise malformed_event("content_block_start before message_start")
        index = chunk.get("index")
        start = chunk.get("content_block")
        if type(index) is not int or index < 0:
            raise malformed_event(f"content block index {index_of(index)} is not a non-negative integer")
        if type(start) is not dict:
            raise malformed_event("content_block is not an object")
        if index in self._blocks:
            raise malformed_event(f"content block {index} started twice")
        if len(self._blocks) >= MAX_BLOCKS:
            raise limit(f"upstream answer has more than {MAX_BLOCKS} content blocks")
        self._blocks[index] = _Block(start)

    def _start_message(self, chunk: dict[str, Any]) -> None:
        if self._started:
            raise malformed_event("message_start twice")
        message = chunk.get("message")
        if type(message) is not dict:
            raise malformed_event("message_start.message is not an object")
        usage = message.get("usage")
        if usage is not None and type(usage) is not dict:
            raise malformed_event("message_start usage is not an object")
        self._started = True
        try:  # copied: orjson's own buffer keeps a few KiB of spare capacity
            self._message = bytes(memoryview(orjson.dumps(message)))
        except orjson.JSONEncodeError:  # orjson reads 1024 levels but writes 254
            raise malformed_event("message_start.message nests too deep to be answered") from None
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
            raise malformed_event("message_delta before message_start")
        delta = chunk.get("delta")
        usage = chunk.get("usage")
        if delta is not None and type(delta) is not dict:
            raise malformed_event("message_delta.delta is not an object")
        if usage is not None and type(usage) is not dict:
            raise malformed_event("message_delta.usage is not an object")
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
