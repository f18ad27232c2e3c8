"""The pipeline from upstream stream bytes to the one non-stream answer.

``StreamConverter`` owns everything that is the same for every API: SSE decoding, JSON parsing,
size limits and the completeness check at end of body. What differs, the end-of-stream payload,
in-stream errors and the assembler, comes from the API's ``SchemaSpec``. The assembler only sees
well-formed, non-error chunks.
Messages never quote payloads (they can hold completion text): only positions and sizes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from .assembler import Assembler
from .errors import ConversionError, limit, malformed, truncated
from .spec import AUTO, SchemaSpec
from .sse import BARE_JSON_EVENT, ERROR_EVENT, PING_EVENT, SseDecoder

# Room for field names and comments around an event of the maximal size.
_FRAMING_SLACK_BYTES = 64 << 10
# A whole buffered body is decoded a window at a time, so the decoder's transient copies (lines,
# payloads, parsed chunks) stay bounded by the window instead of growing with the body.
_WINDOW_BYTES = 16 << 10
# A feed this large holds many events: worth matching runs of them against the assembler's template.
_WHOLE_BODY_MIN_BYTES = 512
_LF = 0x0A
# Windows this small hold one event: such an event is taken on its own, without the decoder.
_ONE_EVENT_BYTES = 512


class StreamConverter:
    """Feed the upstream body in any chunking, then ``finish()`` for the answer's bytes."""

    __slots__ = (
        "_spec",
        "_assembler",
        "_decoder",
        "_max_body",
        "_max_event",
        "_body_bytes",
        "_events",
        "_done",
        "_add_run",
        "_window",
    )

    def __init__(
        self,
        spec: SchemaSpec,
        profile: str = AUTO,
        *,
        max_event_bytes: int = 1 << 20,
        max_body_bytes: int = 16 << 20,
        request: Mapping[str, Any] | None = None,
        assembler: Assembler | None = None,
        whole_body: bool = True,
    ) -> None:
        """``spec``: the API (``buffered_stream.apis.spec_named`` finds one by name); ``profile``:
        the route's profile name; ``request`` is the client's request body (or the plan's hints),
        for answer details only it reveals;
        ``assembler`` replaces the schema's own (tests of the pipeline alone); ``whole_body``
        False takes every event one by one even where a run of them could be matched at once
        (tests compare both ways)."""
        self._spec = spec
        if assembler is None:
            assembler = spec.assembler(profile, request)
        self._assembler = assembler
        self._decoder = SseDecoder(max_event_bytes, max_event_bytes + _FRAMING_SLACK_BYTES)
        self._max_body = max_body_bytes
        self._max_event = max_event_bytes
        # The assembler's whole-body fast path (see ``_feed_whole``), where it has one.
        self._add_run = getattr(assembler, "add_run", None) if whole_body else None
        self._window = 1  # bytes the decoder takes next between runs (see ``_feed_whole``)
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
        """Consume the next body chunk; bytes after the end payload are ignored."""
        if self._done:
            return
        self._body_bytes += len(data)
        if self._body_bytes > self._max_body:
            raise limit(f"upstream answer exceeds max_body_bytes={self._max_body}", code="response_too_large")
        if self._add_run is not None and len(data) >= _WHOLE_BODY_MIN_BYTES and b"\r" not in data:
            self._feed_whole(data)
            return
        if (
            data.endswith(b"\n\n")
            and data.startswith(b"data: ")
            and data.find(b"\n") == len(data) - 2
            and b"\r" not in data
            and len(data) <= self._max_event
            and self._decoder.at_event_start
        ):
            # One whole one-line event per feed, the common shape of a streamed body (one upstream
            # chunk per token): exactly what the decoder would return, without its general scan;
            # most of them are taken by the fast path at once.
            self._take(data[6:-2])
            return
        if len(data) <= _WINDOW_BYTES:
            self._consume(self._decoder.feed(data))
            return
        for start in range(0, len(data), _WINDOW_BYTES):
            self._consume(self._decoder.feed(data[start : start + _WINDOW_BYTES]))
            if self._done:
                return

    def _feed_whole(self, data: bytes) -> None:
        """Many events at once (buffered mode): at each event boundary the assembler takes the run
        of events it can prove without parsing (``add_run``); the rest goes through the decoder a
        window ending at an event boundary at a time, the window doubling while no run is found
        (and staying doubled across feeds).
        Every event is taken exactly as the per-event path would take it, only faster."""
        decoder, add_run, max_event = self._decoder, self._add_run, self._max_event
        assert add_run is not None  # ``feed`` comes here only where the assembler has runs
        pos, size, total = 0, self._window, len(data)
        while pos < total:
            if decoder.at_event_start:
                end, count = add_run(data, pos, max_event)
                if count:
                    self._events += count
                    pos, size = end, 1
                    continue
                if size < _ONE_EVENT_BYTES and data.startswith(b"data: ", pos):
                    # One one-line event (a role, finish or usage chunk between runs): what the
                    # decoder would return for it, without a pass through the decoder.
                    end = data.find(b"\n", pos)
                    if 0 <= end < total - 1 and data[end + 1] == _LF and end - pos - 6 <= max_event:
                        self._take(data[pos + 6 : end])
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
        self._window = size  # a stream whose runs never start stays at full windows from feed to feed

    def finish(self) -> bytes:
        """End of body: the answer as JSON bytes, or ``ConversionError`` if it is incomplete."""
        if not self._done:
            self._consume(self._decoder.close(), at_end=True)
        assembler = self._assembler
        if not self._done and not assembler.finished:
            raise truncated()
        answer = assembler.result()
        if not assembler.finished and not self._spec.answer_complete(answer):
            raise truncated()
        try:
            return orjson.dumps(answer)
        except orjson.JSONEncodeError:  # orjson reads 1,024 levels of nesting but writes 254
            raise malformed("upstream answer nests too deep to be written as JSON") from None

    def _take(self, payload: bytes) -> None:
        """The payload of one whole one-line ``data:`` event (not at end of body), as the decoder
        would have returned it: the fast path first, else parsed and folded."""
        if self._assembler.add_raw(payload):
            self._events += 1
        else:
            self._consume((("", payload),), offered=True)

    def _consume(self, events: Iterable[tuple[str, bytes]], at_end: bool = False, offered: bool = False) -> None:
        """The hot loop: per ordinary chunk one parse, the spec's error check and the assembler call.

        ``at_end``: these are the unterminated event flushed at end of body; JSON that does not
        parse there means the body was cut inside it. ``offered``: the fast path already declined
        these (unnamed) payloads.
        """
        add = self._assembler.add
        add_raw = self._assembler.add_raw
        spec = self._spec
        upstream_error = spec.upstream_error
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
                    raise spec.error_event(payload)
                if payload[:1] == b"[" and spec.is_end_payload(payload):  # ``[DONE]``: no JSON error to raise
                    self._done = True
                    return
                try:
                    chunk = loads(payload)
                except orjson.JSONDecodeError as exc:
                    if spec.is_end_payload(payload):
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
        finally:
            self._events = count


def _malformed(event_number: int, what: str) -> ConversionError:
    return malformed(f"upstream SSE event #{event_number} {what}")
