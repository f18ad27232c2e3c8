"""The one small interface every API's assembler implements.

An API (chat completions, legacy completions, Responses, Anthropic Messages) turns the
decoded JSON payloads of a stream into the single answer that API's non-stream call returns.
The pipeline (``convert.StreamConverter``) owns SSE decoding, size limits, and, through the API's
``api.Api``, upstream error detection and the end payload, so an assembler only ever sees
well-formed, non-error chunks. An API whose stream ends with a typed event (no end payload) says
the answer is complete through ``finished``.

The fast path is the core's (``fast_path``): an assembler only says where a chunk's text went
(``text_target``), and the core learns the template, matches payloads and whole-body runs against
it and appends their texts to the same pieces.

Every impossible value is a ``ConversionError(MALFORMED)``, never another exception: ``writable``
and ``shown`` below check the values an assembler keeps whole from the stream.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from .pieces import Pieces

# Where a folded chunk's one text went: its path in the chunk, the text, the pieces it was appended
# to, and the chunk's top-level integer counter that folding ignores (or None).
TextTarget = tuple[tuple[str | int, ...], str, Pieces, str | None]


class Assembler(Protocol):
    def add(self, chunk: dict[str, Any]) -> None:
        """Fold one stream chunk in; raise ``ConversionError(MALFORMED)`` on an impossible shape."""

    def text_target(self, chunk: dict[str, Any]) -> TextTarget | None:
        """Asked right after ``add(chunk)`` when the core may learn a template from ``chunk``:
        where its one text went, if folding the chunk in again with another text (and any value
        of the counter) would change nothing but append that text to those pieces; else None
        (always None: no fast path for this API)."""

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
