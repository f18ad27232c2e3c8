"""The pipeline from upstream stream bytes to the one non-stream answer.

``StreamConverter`` owns everything that is the same for every API schema: SSE decoding, JSON
parsing, ``[DONE]``, the many shapes of in-stream upstream errors, size limits and the
completeness check at end of body. The schema's assembler only sees well-formed, non-error chunks.
Messages never quote payloads (they can hold completion text): only positions and sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .assembler import Assembler
from .errors import LIMIT, MALFORMED, TRUNCATED, UPSTREAM_ERROR, ConversionError
from .registry import make_assembler
from .sse import BARE_JSON_EVENT, ERROR_EVENT, SseDecoder

# Room for field names and comments around an event of the maximal size.
_FRAMING_SLACK_BYTES = 64 << 10
# A whole buffered body is decoded a window at a time, so the decoder's transient copies (lines,
# payloads, parsed chunks) stay bounded by the window instead of growing with the body.
_WINDOW_BYTES = 16 << 10
_DEFAULT_ERROR_STATUS = 502
_MESSAGE_EXCERPT_CHARS = 100


class StreamConverter:
    """Feed the upstream body in any chunking, then ``finish()`` for the answer's bytes."""

    __slots__ = ("_assembler", "_decoder", "_max_body", "_body_bytes", "_events", "_done")

    def __init__(
        self,
        schema: str,
        profile: str = "auto",
        *,
        max_event_bytes: int = 1 << 20,
        max_body_bytes: int = 16 << 20,
        request: Mapping[str, Any] | None = None,
        assembler: Assembler | None = None,
    ) -> None:
        """``request`` is the client's request body, for answer details only it reveals;
        ``assembler`` replaces the schema's own (tests of the pipeline alone)."""
        if assembler is None:
            assembler = make_assembler(schema, profile, request)
        self._assembler = assembler
        self._decoder = SseDecoder(max_event_bytes, max_event_bytes + _FRAMING_SLACK_BYTES)
        self._max_body = max_body_bytes
        self._body_bytes = 0
        self._events = 0
        self._done = False

    @property
    def done(self) -> bool:
        """The upstream sent ``[DONE]``."""
        return self._done

    @property
    def events(self) -> int:
        """SSE events decoded so far (up to and including ``[DONE]``)."""
        return self._events

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._assembler.usage

    def feed(self, data: bytes) -> None:
        """Consume the next body chunk; bytes after ``[DONE]`` are ignored."""
        if self._done:
            return
        self._body_bytes += len(data)
        if self._body_bytes > self._max_body:
            raise ConversionError(
                LIMIT,
                502,
                f"upstream answer exceeds max_body_bytes={self._max_body}",
                code="response_too_large",
            )
        if len(data) <= _WINDOW_BYTES:
            self._consume(self._decoder.feed(data))
            return
        for start in range(0, len(data), _WINDOW_BYTES):
            self._consume(self._decoder.feed(data[start : start + _WINDOW_BYTES]))
            if self._done:
                return

    def finish(self) -> bytes:
        """End of body: the answer as JSON bytes, or ``ConversionError`` if it is incomplete."""
        if not self._done:
            self._consume(self._decoder.close(), at_end=True)
        assembler = self._assembler
        if not self._done and not assembler.finished:
            raise ConversionError(
                TRUNCATED, 502, "upstream stream ended before the answer was complete"
            )
        answer = assembler.result()
        if not assembler.finished and not answer.get("choices"):
            raise ConversionError(TRUNCATED, 502, "upstream stream ended without any choice")
        return orjson.dumps(answer)

    def _consume(self, events: list[tuple[str, bytes]], at_end: bool = False) -> None:
        """The hot loop: per ordinary chunk one parse, two key lookups and the assembler call.

        ``at_end``: these are the unterminated event flushed at end of body; JSON that does not
        parse there means the body was cut inside it.
        """
        add = self._assembler.add
        add_raw = self._assembler.add_raw
        loads = orjson.loads
        count = self._events
        try:
            for name, payload in events:
                count += 1
                if not name and add_raw(payload):
                    continue
                if name and name == ERROR_EVENT:
                    raise _error_event(payload)
                try:
                    chunk = loads(payload)
                except orjson.JSONDecodeError as exc:
                    stripped = payload.strip()
                    if stripped == b"[DONE]":
                        self._done = True
                        return
                    if not stripped:  # an empty data line is a keep-alive
                        continue
                    if at_end:
                        raise ConversionError(TRUNCATED, 502, "upstream stream ended inside an event") from None
                    raise _malformed(
                        count, f"is not valid JSON: {exc.msg} (at byte {exc.pos} of {len(payload)})"
                    ) from None
                if type(chunk) is not dict:
                    raise _malformed(count, f"is JSON {type(chunk).__name__}, not an object")
                if chunk.get("error") or chunk.get("object") == "error":
                    raise _upstream_error(chunk)
                if name and name == BARE_JSON_EVENT:
                    raise _malformed(count, "is a JSON line without a data: field")
                add(chunk)
        finally:
            self._events = count


def _malformed(event_number: int, what: str) -> ConversionError:
    return ConversionError(MALFORMED, 502, f"upstream SSE event #{event_number} {what}")


def _error_event(payload: bytes) -> ConversionError:
    """``event: error`` or llama.cpp's ``error:`` line: fatal whatever its payload."""
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        text = payload.decode("utf-8", "replace").strip()
        return _upstream_error({"error": text or "upstream sent an error event"})
    if isinstance(parsed, dict):
        if parsed.get("error") or parsed.get("object") == "error":
            return _upstream_error(parsed)
        # llama.cpp sends the error object itself: {"code": .., "message": .., "type": ..}
        return _upstream_error({"error": parsed})
    return _upstream_error({"error": str(parsed)})


def _upstream_error(chunk: dict[str, Any]) -> ConversionError:
    """One error answer for every in-stream shape, with the upstream's own error object."""
    error = chunk.get("error")
    if isinstance(error, dict):
        upstream = error
    elif error:  # TGI {"error": "...", "error_type": ...}, Ollama {"error": "..."}
        error_type = chunk.get("error_type")
        upstream = {
            "message": str(error),
            "type": error_type if isinstance(error_type, str) else "upstream_error",
            "param": None,
            "code": None,
        }
    else:  # vLLM's flat {"object": "error", "message": ..., "type": ..., "param": ..., "code": ...}
        upstream = {key: chunk.get(key) for key in ("message", "type", "param", "code")}
    status = _http_status(upstream) or _http_status(chunk) or _DEFAULT_ERROR_STATUS
    message = str(upstream.get("message") or "no message")[:_MESSAGE_EXCERPT_CHARS]
    return ConversionError(
        UPSTREAM_ERROR,
        status,
        f"upstream reported an error in the stream: {message}",
        upstream_error=upstream,
    )


def _http_status(obj: dict[str, Any]) -> int | None:
    """``code`` or ``http_status_code`` when it is an HTTP error status (int or digit string)."""
    for key in ("code", "http_status_code"):
        value = obj.get(key)
        if isinstance(value, str) and len(value) == 3 and value.isascii() and value.isdigit():
            value = int(value)
        if type(value) is int and 400 <= value <= 599:
            return value
    return None
