"""The one small interface every API's assembler implements.

An API (chat completions, legacy completions, Responses, Anthropic Messages) turns the
decoded JSON payloads of a stream into the single answer that API's non-stream call returns.
The pipeline (``convert.StreamConverter``) owns SSE decoding, size limits, and, through the API's
``SchemaSpec``, upstream error detection and the end payload, so an assembler only ever sees
well-formed, non-error chunks. An API whose stream ends with a typed event (no end payload) says
the answer is complete through ``finished``.

An assembler may also offer ``add_run(body, pos, max_payload) -> (end, events)``: given a whole
LF-only body (buffered mode) at an event boundary, fold in the run of events from ``pos`` it can
prove without parsing and say where that run ends; the pipeline takes the rest event by event.

Every impossible value is a ``ConversionError(MALFORMED)``, never another exception: ``writable``
and ``shown`` below check the values an assembler keeps whole from the stream.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson


class Assembler(Protocol):
    def add_raw(self, payload: bytes) -> bool:
        """Fold one unparsed data payload in when its effect is proven without parsing it (the
        fast path for the thousands of chunks that differ only in their token); False: parse it."""

    def add(self, chunk: dict[str, Any]) -> None:
        """Fold one stream chunk in; raise ``ConversionError(MALFORMED)`` on an impossible shape."""

    @property
    def finished(self) -> bool:
        """True once the answer is complete (for choice-based APIs: at least one choice was seen and
        every seen choice has a finish reason)."""

    @property
    def usage(self) -> dict[str, Any] | None:
        """The usage the server reported (never summed or invented), or None."""

    @property
    def output_started(self) -> bool:
        """Whether the stream carried any of the answer's output yet (text, reasoning, a tool call,
        an output item or content block), not only its preamble (a role chunk, ``message_start``,
        ``response.created``). Cheap while false (it is asked after each chunk until true)."""

    def result(self) -> dict[str, Any]:
        """The native non-stream answer, ready for ``orjson.dumps``."""


# -- values kept from the stream ---------------------------------------------------------------------
# orjson reads JSON nested up to 1024 levels but writes at most 254, and Python's ``str``/``==`` of a
# value recurse once per level: a value from the stream may be valid JSON and still be impossible
# to answer with, or to show. What an assembler keeps whole is checked where it is kept.


def writable(value: Any, depth: int = 0) -> bool:
    """Whether ``value``, standing ``depth`` arrays or objects deep in an answer (or an error body),
    can be written as JSON (orjson's nesting limit). Costs one serialization: for values kept whole
    once (a snapshot, an error object, a parsed tool input), not for every chunk."""
    for _ in range(depth):
        value = [value]
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return False
    return True


def shown(value: Any) -> str:
    """``str(value)`` of any parsed JSON value (an upstream error's message), without the
    ``RecursionError`` of one nested too deep to show."""
    if type(value) is str:
        return value
    try:
        return str(value)
    except RecursionError:
        return f"(a JSON {'object' if type(value) is dict else 'array'} nested too deep to show)"
