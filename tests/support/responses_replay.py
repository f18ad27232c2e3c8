"""Replays a Responses API stream the way the pipeline will: SSE decoding, error events, parsing,
in-stream error detection, then the assembler (shared by the Responses tests and bench)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from buffered_stream.errors import MALFORMED, TRUNCATED, ConversionError
from buffered_stream.openai_responses import (
    ResponsesAssembler,
    error_event,
    get_profile,
    is_end_payload,
    plan_request,
    upstream_error,
)
from buffered_stream.request import Rewrite
from buffered_stream.sse import BARE_JSON_EVENT, ERROR_EVENT, SseDecoder


def hints_of(request: dict[str, Any] | None) -> dict[str, Any]:
    if request is None:
        return {}
    plan = plan_request(orjson.dumps(request), ())
    assert isinstance(plan, Rewrite), plan
    return plan.hints


def replay(pieces: Iterable[bytes], profile: str = "auto", request: dict[str, Any] | None = None) -> dict[str, Any]:
    """The answer for a body fed in ``pieces``, or the ``ConversionError`` the pipeline would raise."""
    assembler = ResponsesAssembler(get_profile(profile), hints_of(request))
    decoder = SseDecoder(1 << 20, 2 << 20)
    for piece in pieces:
        if _consume(assembler, decoder.feed(piece)):
            return assembler.result()
    _consume(assembler, decoder.close(), at_end=True)
    if not assembler.finished:
        raise ConversionError(TRUNCATED, 502, "upstream stream ended before the answer was complete")
    return assembler.result()


def _consume(assembler: ResponsesAssembler, events: list[tuple[str, bytes]], at_end: bool = False) -> bool:
    """Fold events in; True once the stream says it ended (``[DONE]``)."""
    for name, payload in events:
        if name == ERROR_EVENT:
            raise error_event(payload)
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            if is_end_payload(payload):
                return True
            if at_end:
                raise ConversionError(TRUNCATED, 502, "upstream stream ended inside an event") from None
            raise ConversionError(MALFORMED, 502, "upstream SSE event is not valid JSON") from None
        if type(chunk) is not dict:
            raise ConversionError(MALFORMED, 502, "upstream SSE event is not a JSON object")
        error = upstream_error(chunk)
        if error is not None:
            raise error
        if name == BARE_JSON_EVENT:
            raise ConversionError(MALFORMED, 502, "upstream sent a JSON line without a data: field")
        assembler.add(chunk)
    return False
