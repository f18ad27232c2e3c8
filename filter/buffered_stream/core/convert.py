"""The pipeline from upstream stream bytes to the one non-stream answer.

``StreamConverter`` owns everything that is the same for every API: SSE decoding, JSON parsing,
size limits and the completeness check at end of body. What differs, the end-of-stream payload,
in-stream errors and the assembler, comes from the API (``api.Api``). The assembler only sees
well-formed, non-error chunks.
Messages never quote payloads (they can hold completion text): only positions and sizes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from .api import AUTO, Api
from .assembler import Assembler
from .errors import ConversionError, limit, malformed, truncated
from .fast_path import TextFastPath
from .sse import BARE_JSON_EVENT, ERROR_EVENT, PING_EVENT, SseDecoder

# Room for field names and comments around an event of the maximal size.
_FRAMING_SLACK_BYTES = 64 << 10
# A whole buffered body is decoded a window at a time, so the decoder's transient copies (lines,
# payloads, parsed chunks) stay bounded by the window instead of growing with the body.
_WINDOW_BYTES = 16 << 10
# A feed this large holds many events: worth matching runs of them against the assembler's template.
_WHOLE_BODY_MIN_BYTES = 512


class StreamConverter:
    """Feed the upstream body in any chunking, then ``finish()`` for the answer's bytes."""

    __slots__ = (
        "_api",
        "_assembler",
        "_decoder",
        "_fast_path",
        "_add_raw",
        "_add_run",
        "_text_target",
        "_max_body",
        "_max_event",
        "_body_bytes",
        "_events",
        "_done",
        "_window",
    )

    def __init__(
        self,
        api: Api[Any],
        profile: str = AUTO,
        *,
        max_event_bytes: int = 1 << 20,
        max_body_bytes: int = 16 << 20,
        hints: Mapping[str, Any] | None = None,
        assembler: Assembler | None = None,
        fast_path: bool = True,
        whole_body: bool = True,
    ) -> None:
        """``api``: the API (``buffered_stream.apis.api_named`` finds one by name); ``profile``:
        the route's profile name; ``hints`` are the request plan's (or the client's request body),
        for answer details only the request reveals; ``assembler`` replaces the API's own (tests of the
        pipeline alone). ``fast_path`` False parses every payload, ``whole_body`` False takes every
        event one by one even where a run of them could be matched at once (tests compare the
        answers all ways)."""
        self._api = api
        if assembler is None:
            assembler = api.assembler(profile, hints)
        self._assembler = assembler
        self._decoder = SseDecoder(max_event_bytes, max_event_bytes + _FRAMING_SLACK_BYTES)
        self._fast_path = TextFastPath() if fast_path else None
        self._add_raw = self._fast_path.add_raw if self._fast_path is not None else _parse_it
        self._add_run = self._fast_path.add_run if self._fast_path is not None and whole_body else None
        self._text_target = assembler.text_target
        self._max_body = max_body_bytes
        self._max_event = max_event_bytes
        self._window = 1  # bytes the decoder takes next between runs of a large feed (see ``feed``)
        self._body_bytes = 0
        self._events = 0
        self._done = False

    @property
    def done(self) -> bool:
        """The upstream sent its end payload (``[DONE]``)."""
        return self._done

    @property
    def events(self) -> int:
        """SSE events decoded so far (up to and including the end payload)."""
        return self._events

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._assembler.usage

    @property
    def output_started(self) -> bool:
        """The stream carried some of the answer (text, reasoning, a tool call, an output item or
        content block: the assembler's ``output_started``), not only its preamble. Meant to be asked
        once per upstream chunk until true: the time to first token is taken there."""
        return self._assembler.output_started

    def feed(self, data: bytes) -> None:
        """Consume the next body chunk (any size, cut anywhere); bytes after the end payload are
        ignored.

        One walk over the chunk: at each event boundary, first the run of events the fast path can
        prove without parsing (``add_run``, for a large chunk: a whole buffered body), then a
        one-line ``data:`` event taken on its own (the common shape of a streamed body, one
        upstream chunk per token), else the decoder takes a window ending at an event boundary, the
        window doubling while no run is found (and staying doubled across large feeds). Every event
        is taken exactly as the decoder alone would return it, only faster; a chunk with a CR
        (CRLF or CR framing) goes to the decoder alone."""
        if self._done:
            return
        total = len(data)
        self._body_bytes += total
        if self._body_bytes > self._max_body:
            raise limit(f"upstream answer exceeds max_body_bytes={self._max_body}", code="response_too_large")
        decoder, max_event, add_raw = self._decoder, self._max_event, self._add_raw
        shortcuts = b"\r" not in data
        large = total >= _WHOLE_BODY_MIN_BYTES
        add_run = self._add_run if large and shortcuts else None
        pos, size = 0, self._window if large else 1
        while pos < total:
            if shortcuts and decoder.at_event_start:
                if add_run is not None:
                    end, count = add_run(data, pos, max_event)
                    if count:
                        self._events += count
                        pos, size = end, 1
                        continue
                # While the window is this small it holds one event: it is taken on its own.
                if size < 512 and data.startswith(b"data: ", pos):
                    # One one-line event: what the decoder would return for it, without a pass
                    # through the decoder; the fast path first, else parsed and folded.
                    end = data.find(b"\n", pos)
                    if 0 <= end < total - 1 and data[end + 1] == 10 and end - pos - 6 <= max_event:  # LF
                        payload = data[pos + 6 : end]
                        if add_raw(payload):
                            self._events += 1
                        else:
                            self._consume((("", payload),), offered=True)
                            if self._done:
                                return
                        pos, size = end + 2, size * 2
                        continue
            cut = data.find(b"\n\n", pos + size - 1, pos + _WINDOW_BYTES)
            cut = min(pos + _WINDOW_BYTES, total) if cut < 0 else cut + 2
            self._consume(decoder.feed(data[pos:cut]))
            if self._done:
                return
            pos, size = cut, min(size * 2, _WINDOW_BYTES)
        if large:
            self._window = size  # a stream whose runs never start stays at full windows from feed to feed

    def finish(self) -> bytes:
        """End of body: the answer as JSON bytes, or ``ConversionError`` if it is incomplete."""
        if not self._done:
            self._consume(self._decoder.close(), at_end=True)
        assembler = self._assembler
        if not self._done and not assembler.finished:
            raise truncated()
        answer = assembler.result()
        if not assembler.finished and not self._api.answer_complete(answer):
            raise truncated()
        try:
            return orjson.dumps(answer)
        except orjson.JSONEncodeError:  # orjson reads 1,024 levels of nesting but writes 254
            raise malformed("upstream answer nests too deep to be written as JSON") from None

    def _consume(self, events: Iterable[tuple[str, bytes]], at_end: bool = False, offered: bool = False) -> None:
        """The hot loop: per ordinary chunk one parse, the spec's error check and the assembler call.

        ``at_end``: these are the unterminated event flushed at end of body; JSON that does not
        parse there means the body was cut inside it. ``offered``: the fast path already declined
        these (unnamed) payloads.
        """
        add = self._assembler.add
        add_raw = self._add_raw
        fast_path = self._fast_path
        text_target = self._text_target
        api = self._api
        upstream_error = api.upstream_error
        loads = orjson.loads
        count = self._events
        try:
            for name, payload in events:
                count += 1
                if name == PING_EVENT:  # a keep-alive whatever its data (Anthropic's, and proxies')
                    continue
                # A name decides nothing but an error or a bare JSON line: any other event is
                # offered to the fast path like an unnamed one (Messages name every event).
                if not offered and name != ERROR_EVENT and name != BARE_JSON_EVENT and add_raw(payload):
                    continue
                if name and name == ERROR_EVENT:
                    raise api.error_event(payload)
                if payload[:1] == b"[" and api.is_end_payload(payload):  # ``[DONE]``: no JSON error to raise
                    self._done = True
                    return
                try:
                    chunk = loads(payload)
                except orjson.JSONDecodeError as exc:
                    if api.is_end_payload(payload):
                        self._done = True
                        return
                    if not payload.strip():  # an empty data line is a keep-alive
                        continue
                    if at_end:
                        raise truncated("upstream stream ended inside an event") from None
                    raise _malformed(
                        count, f"is not valid JSON: {exc.msg} (at byte {exc.pos} of {len(payload)})"
                    ) from None
                if type(chunk) is not dict:
                    raise _malformed(count, f"is JSON {type(chunk).__name__}, not an object")
                error = upstream_error(chunk)
                if error is not None:
                    raise error
                if name and name == BARE_JSON_EVENT:
                    raise _malformed(count, "is a JSON line without a data: field")
                add(chunk)
                if fast_path is not None and fast_path.payload is not None:  # declined just now: learn
                    fast_path.learn(chunk, text_target(chunk))
        finally:
            self._events = count


def _parse_it(payload: bytes) -> bool:
    """``add_raw`` without a fast path: every payload is parsed."""
    return False


def _malformed(event_number: int, what: str) -> ConversionError:
    return malformed(f"upstream SSE event #{event_number} {what}")
