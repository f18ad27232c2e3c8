"""Incremental, bounded Server-Sent Events decoder working on bytes.

Rules (WHATWG "event stream" parsing, plus what LLM servers actually send):

- One UTF-8 BOM at the very start of the body is dropped, even split across chunks; a BOM anywhere
  else stays (a second one is part of the first field's name, which then matches no field).
- Lines end with CR, LF or CRLF, including a CR at the end of one chunk and the LF at the start of
  the next. After normalising line ends to LF, an event ends at a blank line, i.e. at ``b"\\n\\n"``.
- ``:`` starts a comment (keep-alives). Otherwise a line splits at its first ``:`` into field and
  value, and ONE leading space of the value is dropped (TGI sends ``data:{...}``); a line without
  ``:`` is a field with an empty value (``data`` alone adds an empty data line).
- ``data`` lines of one event are joined with ``\\n``; an event without data lines is not dispatched;
  ``event`` names the event, until the next blank line; ``id``, ``retry`` and unknown (or
  differently cased) fields carry nothing an answer needs and are dropped, whatever their value.
- Two non-standard lines become pseudo-events so that the pipeline can fail on them: llama.cpp's old
  ``error: {json}`` field (named ``ERROR_EVENT``, like ``event: error``) and a bare JSON line
  starting with ``{`` (``BARE_JSON_EVENT``; Ollama writes its error object that way).
- ``close()`` dispatches an event that has no trailing blank line (llama.cpp's final
  ``data: [DONE]``).

Data stays bytes: orjson parses bytes directly and validates UTF-8 itself, so a multibyte
character split across chunks needs no special care. Input is scanned with ``bytes`` methods only
(no per-byte Python loop), and bytes are held back only until an event boundary arrives, so the
total work stays linear however the body is chunked.
"""

from __future__ import annotations

from itertools import repeat
from operator import is_

from .errors import LIMIT, ConversionError

Event = tuple[str, bytes]

ERROR_EVENT = "error"
BARE_JSON_EVENT = "bare-json"
# Anthropic's keep-alive, ``event: ping`` + ``data: {"type": "ping"}``, which proxies (LiteLLM's
# ``anthropic_sse_ping_interval_seconds``) also write: never content, on any API (the converter
# drops it; the other pings, comments and events without data, never leave the decoder).
PING_EVENT = "ping"

_LF = 0x0A
_CR = 0x0D
_COLON = 0x3A
_OPEN_BRACE = 0x7B
_BOM = b"\xef\xbb\xbf"
_removeprefix = bytes.removeprefix
_startswith = bytes.startswith


class SseDecoder:
    """Turns body chunks into ``(event_name, data)`` pairs; ``event_name`` is ``""`` by default.

    ``max_event_bytes`` bounds one event's data; ``max_buffer_bytes`` bounds the bytes held while no
    event boundary has arrived yet (comments and field names count here, not in the event size).
    """

    __slots__ = ("_max_event", "_max_buffer", "_held", "_held_size", "_cr_pending", "_start")

    def __init__(self, max_event_bytes: int, max_buffer_bytes: int) -> None:
        self._max_event = max_event_bytes
        self._max_buffer = max_buffer_bytes
        self._held: list[bytes] = []  # LF-normalised input after the last boundary; no b"\n\n" inside
        self._held_size = 0
        self._cr_pending = False  # the last chunk ended with CR: an LF starting the next one is its pair
        self._start: bytes | None = b""  # the body so far while it may still begin with a BOM; then None

    @property
    def held_bytes(self) -> int:
        """Bytes received that are not yet part of a dispatched event (bounded by the limit)."""
        return self._held_size + len(self._start or b"")

    @property
    def at_event_start(self) -> bool:
        """Nothing is held: the next byte fed starts a new event (or a blank or comment line).
        False before the first bytes, which may be a BOM, so that no caller's shortcut skips them."""
        return not self._held and not self._cr_pending and self._start is None

    def feed(self, data: bytes) -> list[Event]:
        """Take the next chunk of the body; return the events it completed, in order."""
        start = self._start
        if start is not None:
            if start:
                data = start + data  # at most two bytes of a BOM held back
            if len(data) < 3 and _BOM.startswith(data):
                self._start = data  # it may still become a BOM: wait for more
                return []
            self._start = None
            if data.startswith(_BOM):
                data = data[3:]
        if self._cr_pending and data:
            self._cr_pending = False
            if data[0] == _LF:
                data = data[1:]
        if _CR in data:
            self._cr_pending = data[-1] == _CR
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        held = self._held
        end = data.rfind(b"\n\n")
        if end < 0 and not (data[:1] == b"\n" and held and held[-1][-1] == _LF):
            if data:
                self._hold(data)  # no event can have ended: keep it without scanning it again
            return []
        if held:
            held.append(data)
            data = b"".join(held)
            held.clear()
            end = data.rfind(b"\n\n")
        self._held_size = 0
        if end + 2 < len(data):
            self._hold(data[end + 2 :])
        lines = data[:end].split(b"\n")
        if len(lines) & 1 and not any(lines[1::2]):  # alternating one field line, blank line
            payloads = _one_line_data(lines[::2])
            if payloads is not None:
                if end > self._max_event:
                    self._check_size(max(map(len, payloads)))
                return list(zip(repeat(""), payloads))
        elif len(lines) % 3 == 2 and not any(lines[2::3]):  # event line, data line, blank line
            named = _named_events(lines)
            if named is not None:
                if end > self._max_event:
                    self._check_size(max(len(payload) for _, payload in named))
                return named
        events: list[Event] = []
        self._decode_lines(lines, events)
        return events

    def close(self) -> list[Event]:
        """End of body: dispatch what is held as if a blank line followed it."""
        events: list[Event] = []
        self._start = None  # a lone partial BOM is a line of an unknown field: nothing to dispatch
        if self._held:
            rest = b"".join(self._held)
            self._held.clear()
            self._held_size = 0
            self._decode_lines(rest.split(b"\n"), events)
        self._cr_pending = False
        return events

    def _hold(self, data: bytes) -> None:
        self._held.append(data)
        self._held_size += len(data)
        if self._held_size > self._max_buffer:
            raise ConversionError(
                LIMIT,
                502,
                f"upstream sent {self._held_size} bytes without completing an SSE event "
                f"(max_buffer_bytes={self._max_buffer})",
            )

    def _decode_lines(self, lines: list[bytes], events: list[Event]) -> None:
        """The general path: any mix of fields, comments and blank lines; the end dispatches."""
        name = ""
        data: list[bytes] = []
        for line in lines:
            if not line:
                if data:
                    events.append((name, self._joined(data)))
                    data = []
                name = ""
                continue
            first = line[0]
            if first == _COLON:
                continue
            if first == _OPEN_BRACE:
                self._check_size(len(line))
                events.append((BARE_JSON_EVENT, line))
                continue
            field, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if field == b"data":
                data.append(value)
            elif field == b"event":
                name = value.decode("utf-8", "replace")
            elif field == b"error":
                self._check_size(len(value))
                events.append((ERROR_EVENT, value))
        if data:
            events.append((name, self._joined(data)))

    def _joined(self, data: list[bytes]) -> bytes:
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        self._check_size(len(payload))
        return payload

    def _check_size(self, size: int) -> None:
        if size > self._max_event:
            raise self._event_too_large(size)

    def _event_too_large(self, size: int) -> ConversionError:
        return ConversionError(
            LIMIT,
            502,
            f"upstream SSE event of {size} bytes exceeds max_event_bytes={self._max_event}",
        )


def _named_events(lines: list[bytes]) -> list[Event] | None:
    """The events if every one is exactly ``event: NAME`` then ``data: X`` (Responses and Messages
    streams), else None; like ``_one_line_data``, C-level maps instead of a Python loop."""
    name_lines, data_lines = lines[0::3], lines[1::3]
    names = list(map(_removeprefix, name_lines, repeat(b"event: ")))
    payloads = list(map(_removeprefix, data_lines, repeat(b"data: ")))
    if any(map(is_, names, name_lines)) or any(map(is_, payloads, data_lines)):
        return None
    try:
        return list(zip(map(bytes.decode, names), payloads))
    except UnicodeDecodeError:  # the line loop decodes with replacement characters
        return None


def _one_line_data(lines: list[bytes]) -> list[bytes] | None:
    """The payloads if every line is ``data: X`` (or TGI's ``data:X``), else None.

    The fast path of the common stream shape: ``map`` over C functions instead of a Python loop;
    ``removeprefix`` returns the very same object when the prefix is missing.
    """
    payloads = list(map(_removeprefix, lines, repeat(b"data: ")))
    if any(map(is_, payloads, lines)):
        payloads = list(map(_removeprefix, lines, repeat(b"data:")))
        if any(map(is_, payloads, lines)) or any(map(_startswith, payloads, repeat(b" "))):
            return None
    return payloads
