"""Chunks that repeat the last one byte for byte, but for one piece of text, need no parsing.

A long answer is thousands of chunks that differ only in their token. Once a parsed chunk is known
to add nothing but one piece of text, its bytes before and after that text become a template. A
later payload with the same prefix and suffix, and a middle that parses as the inside of one JSON
string, is that very chunk with another piece: its whole effect is one ``append``. This is exact
because

* ``learn`` proves the template: the prefix, a probe and the suffix must parse to the chunk itself
  with the probe as that one text, and a string's inside is read the same wherever it stands;
* the assembler offers only chunks that, folded in again, change nothing but that text (every
  other rule keeps a first value, a last equal one, or a null).

OpenAI ends every chunk with ``"obfuscation":"<random>"``, which no answer keeps: a template can
leave that last string open too (``padded``), any verbatim ASCII text being as good as another.
Likewise an event counter the assembler ignores (the Responses API's ``sequence_number``, after the
text in vLLM's, SGLang's and Ollama's events) may stand in the suffix as any JSON integer that
orjson reads the same way (``counted``: 1 to 18 digits, no leading zero).

A whole body (buffered mode) is matched a run at a time (``run_in``): the body splits at
``"\n\ndata: "`` (or ``"\n\nevent: <name>\ndata: "`` where every event is named, as in Messages),
each payload must be ``prefix + middle + suffix``, and one ``orjson.loads`` of the middles as a JSON
array decodes them all. The run is exactly what the SSE decoder and ``text_of`` would have found
event by event because a valid middle holds no raw LF (so every event boundary is a split point),
the prefix and suffix hold none either, and a name other than ``error``, ``bare-json`` and
``ping`` (which the converter gives a meaning, so no run holds them) changes nothing.
Where the install found a C compiler, ``_runs.c`` does the same checks in one walk over the bytes
(no copy per event; middles that are plain ASCII need no decoding at all); it takes exactly the
events the Python code takes, which the tests check both ways on any body.
"""

from __future__ import annotations

from itertools import repeat
from operator import is_
from typing import Any

import orjson

from .pieces import COMPACT_EVERY, Pieces
from .sse import BARE_JSON_EVENT, ERROR_EVENT, PING_EVENT

# Bytes a JSON string cannot hold verbatim: a text without them is found as it is in the bytes.
_NOT_VERBATIM = bytes(range(0x20)) + b'"\\'
_PADDING_END = b'"}'
_PADDING_KEY = b'"obfuscation":"'
_PROBE = "\x7fprobe\x7f"
_PROBE_COUNT = 987654321
_DIGITS = b"0123456789"
_DIGITS_AFTER = tuple(bytes([digit]) for digit in _DIGITS) + (b".", b"e", b"E")  # the number goes on
_MAX_COUNT_DIGITS = 18  # below 2**63: any such integer parses, as it would in the whole event
_DATA_FIELDS = (b"data: ", b"data:")  # TGI writes no space
# Event names a run may carry: plain tokens (``content_block_delta``, ``response.output_text.delta``).
_NAME_BYTES = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"
_SPECIAL_NAMES = (
    ERROR_EVENT.encode(),
    BARE_JSON_EVENT.encode(),
    PING_EVENT.encode(),
)  # names the converter gives a meaning
_MAX_EVENT_LINE = 128
_FIRST_RUN_BYTES = 4 << 10  # a run may be short: match a little first
_MAX_RUN_BYTES = 16 << 10
_NATIVE_RUN_BYTES = 64 << 10  # events the native matcher takes per call: bounds the texts' copies

try:  # the native run matcher, built at install where a C compiler is found (setup.py)
    from . import _runs  # type: ignore[attr-defined,unused-ignore]
except ImportError:  # pragma: no cover - the pure-Python path below does the same
    _runs = None
NATIVE_RUNS = _runs is not None


class TextTemplate:
    """``prefix`` + a string's inside + ``suffix`` (+ verbatim ASCII + ``"}`` when ``padded``; + an
    integer + ``tail`` when ``tail`` is not None) is the learned chunk with that string as its text."""

    __slots__ = ("prefix", "suffix", "padded", "tail", "size", "pieces", "runs")

    def __init__(self, prefix: bytes, suffix: bytes, padded: bool, pieces: Pieces, tail: bytes | None = None) -> None:
        self.prefix = prefix
        self.suffix = suffix
        self.padded = padded
        self.tail = tail  # a counted template: what follows the counter
        self.size = (
            len(prefix)
            + len(suffix)
            + (len(_PADDING_END) if padded else 0)
            + (len(tail) + 1 if tail is not None else 0)
        )
        self.pieces = pieces  # where the text of a matching payload is appended
        # Whole-body runs split at LFs and take no padding (see ``run_in``).
        self.runs = not padded and b"\n" not in prefix + suffix + (tail or b"")

    def text_of(self, payload: bytes) -> bytes | None:
        """The bytes in the text's place if ``payload`` has this template's shape, else None.
        (Whether they are the inside of a JSON string is for the caller to check.)"""
        prefix, suffix = self.prefix, self.suffix
        if len(payload) < self.size or not payload.startswith(prefix):
            return None
        tail = self.tail
        if tail is not None:
            if not payload.endswith(tail):
                return None
            stem = payload[: len(payload) - len(tail)]
            head = stem.rstrip(_DIGITS)  # the suffix ends with a colon: digits are the counter's
            digits = len(stem) - len(head)
            if (
                not 0 < digits <= _MAX_COUNT_DIGITS
                or (digits > 1 and stem[len(head)] == 0x30)  # JSON has no leading zeros
                or len(head) < len(prefix) + len(suffix)
                or not head.endswith(suffix)
            ):
                return None
            return payload[len(prefix) : len(head) - len(suffix)]
        if not self.padded:
            return payload[len(prefix) : len(payload) - len(suffix)] if payload.endswith(suffix) else None
        end = payload.rfind(suffix, len(prefix))
        start, stop = end + len(suffix), len(payload) - len(_PADDING_END)
        if end < 0 or start > stop or not payload.endswith(_PADDING_END):
            return None
        padding = payload[start:stop]  # so payload == prefix + text + suffix + padding + '"}'
        return payload[len(prefix) : end] if padding.isascii() and _verbatim(padding) else None

    def run_in(self, body: bytes, pos: int, max_payload: int) -> tuple[int, int]:
        """Append the texts of the events that start at ``pos`` of an LF-only ``body`` (an event
        boundary) and are this chunk with another text: ``(end, count)``, ``(pos, 0)`` when none
        is. The last event a run finds is left to the per-event path, as is any middle that needs
        a closer look. Copies stay bounded: the body is matched a window at a time."""
        if not self.runs:
            return pos, 0
        prefix, suffix = self.prefix, self.suffix
        field = _field_at(body, pos, prefix)
        if field is None:
            return pos, 0
        max_middle = max_payload - len(prefix) - len(suffix)
        if _runs is not None:
            return self._native_run(body, pos, field, max_middle)
        if self.tail is not None:
            return pos, 0  # counted runs are matched natively only; each event still takes text_of
        return self._run(body, pos, field, max_middle)

    def _native_run(self, body: bytes, pos: int, field: bytes, max_middle: int) -> tuple[int, int]:
        """``run_in`` by the native matcher (``_runs.c``): the same events, proved the same way, in
        one walk over the bytes; a window at a time, so the texts' transient copies stay bounded."""
        run, prefix, suffix, tail, pieces = _runs.run, self.prefix, self.suffix, self.tail, self.pieces
        start, count = pos, 0
        while True:
            end, taken, texts = run(body, start, start + _NATIVE_RUN_BYTES, field, prefix, suffix, max_middle, tail)
            if not taken:
                return start, count
            if type(texts) is bytes:  # escapes or UTF-8: orjson decodes, and rejects what is no string
                try:
                    texts = "".join(orjson.loads(texts))
                except orjson.JSONDecodeError:
                    if tail is not None:
                        # No Python run to find the event at fault: from here on each event takes
                        # ``text_of``, and that event fails the conversion where it stands.
                        self.runs = False
                        return start, count
                    end, taken = self._run(body, start, field, max_middle)  # finds the event at fault
                    return end, count + taken
            pieces.append(texts)
            if len(pieces) >= COMPACT_EVERY:
                pieces.compact()
            start, count = end, count + taken

    def _run(self, body: bytes, pos: int, field: bytes, max_middle: int) -> tuple[int, int]:
        """``run_in`` in Python."""
        prefix, suffix = self.prefix, self.suffix
        # Split at each event's start (a short separator: CPython searches long ones slowly),
        # then strip the template's prefix and suffix from every payload with C-level maps.
        separator = b"\n\n" + field
        pieces = self.pieces
        start, size, count = pos, _FIRST_RUN_BYTES, 0
        while True:
            stop = start + size
            region = body[start + len(field) : stop]
            payloads = region.split(separator)
            last = payloads.pop()  # cut anywhere or followed by something else: the next round's (or no one's)
            middles = _middles(payloads, prefix, suffix)
            # No middle can be too long when the whole region is not.
            texts = _decode_middles(middles, max_middle if len(region) > max_middle else None)
            if texts:
                pieces.append("".join(texts))
                if len(pieces) >= COMPACT_EVERY:
                    pieces.compact()
                count += len(texts)
            if len(texts) < len(payloads) or not texts:
                return start + len(texts) * (len(field) + 2) + sum(map(len, payloads[: len(texts)])), count
            start += len(region) - len(last)  # where the event of the last payload starts
            if stop >= len(body):
                return start, count
            size = _MAX_RUN_BYTES

    @classmethod
    def learn(
        cls,
        payload: bytes,
        chunk: dict[str, Any],
        path: tuple[str | int, ...],
        piece: str,
        pieces: Pieces,
        counter: str | None = None,
    ) -> TextTemplate | None:
        """The template of ``payload``, parsed as ``chunk``, whose text at ``path`` is ``piece``
        (appended to ``pieces``); None when the text is empty (a role or finish chunk: what follows
        differs in more than its text), has escapes or its place is not proven. ``counter``: a
        top-level integer key whose value the assembler ignores, left open when it follows the text."""
        raw = piece.encode()
        if not raw or not _verbatim(raw) or piece == _PROBE:
            return None
        key = str(path[-1]).encode()
        for opening in (b'"' + key + b'":"', b'"' + key + b'": "'):
            start = payload.find(opening + raw + b'"')
            if start >= 0:
                break
        else:
            return None
        start += len(opening)
        prefix, suffix = payload[:start], payload[start + len(raw) :]
        padding = chunk.get("obfuscation")
        padded = False
        if type(padding) is str and padding.isascii() and _verbatim(padding.encode()):
            padded = suffix.endswith(_PADDING_KEY + padding.encode() + _PADDING_END)
            if padded:
                suffix = suffix[: len(suffix) - len(padding) - len(_PADDING_END)]
        tail = None
        count = chunk.get(counter) if counter is not None and not padded else None
        if counter is not None and type(count) is int and 0 <= count < 10**_MAX_COUNT_DIGITS:
            needle = b'"' + counter.encode() + b'":' + str(count).encode()
            at = suffix.find(needle)
            end = at + len(needle)
            if at >= 0 and suffix.find(needle, at + 1) < 0 and suffix[end : end + 1] not in _DIGITS_AFTER:
                suffix, tail = suffix[: end - len(str(count))], suffix[end:]
        probe = _PROBE.encode()
        opened = (probe + _PADDING_END if padded else b"") + (
            str(_PROBE_COUNT).encode() + tail if tail is not None else b""
        )
        try:
            probed = orjson.loads(prefix + probe + suffix + opened)
            found = _swap(probed, path, piece)
            found_padding = _swap(probed, ("obfuscation",), padding) if padded else _PROBE
            found_count = _swap(probed, (counter,), count) if tail is not None and counter is not None else _PROBE_COUNT
            if found != _PROBE or found_padding != _PROBE or found_count != _PROBE_COUNT or probed != chunk:
                return None
        except (
            orjson.JSONDecodeError,
            LookupError,
            TypeError,
            RecursionError,
        ):  # ``!=`` of a deeply nested chunk recurses
            return None
        return cls(prefix, suffix, padded, pieces, tail)


def _field_at(body: bytes, pos: int, prefix: bytes) -> bytes | None:
    """What stands before the payload of the event at ``pos`` when it is ``data: `` + ``prefix``...,
    optionally after an ``event:`` line (Messages and Responses name every event): then every event
    of the run must carry that very line. None when the event has another shape, or a name that
    means something to the converter (``error``)."""
    if body.startswith(b"event:", pos):
        end = body.find(b"\n", pos, pos + _MAX_EVENT_LINE)
        name = body[pos + 6 : end].removeprefix(b" ")
        if end < 0 or not name or name.translate(None, _NAME_BYTES) or name in _SPECIAL_NAMES:
            return None
        line = body[pos : end + 1]
    else:
        line = b""
    for data in _DATA_FIELDS:
        if body.startswith(prefix, pos + len(line) + len(data)) and body.startswith(data, pos + len(line)):
            return line + data
    return None


def _middles(payloads: list[bytes], prefix: bytes, suffix: bytes) -> list[bytes]:
    """What stands between ``prefix`` and ``suffix`` in the leading payloads that have both
    (``removeprefix`` and ``removesuffix`` return the very same object when there is nothing to
    remove)."""
    stripped = list(map(bytes.removeprefix, payloads, repeat(prefix)))
    if any(map(is_, stripped, payloads)):
        stripped = stripped[: list(map(is_, stripped, payloads)).index(True)]
    middles = list(map(bytes.removesuffix, stripped, repeat(suffix)))
    if any(map(is_, middles, stripped)):
        middles = middles[: list(map(is_, middles, stripped)).index(True)]
    return middles


def _decode_middles(middles: list[bytes], max_middle: int | None) -> list[str]:
    """The texts of the leading middles that are each the inside of one JSON string (and short
    enough for an event), decoded at once when the array's framing cannot be fooled: no middle
    holds a quote or ends with a backslash."""
    if not middles:
        return []
    joined = b'","'.join(middles)
    if (
        (max_middle is None or max(map(len, middles)) <= max_middle)
        and joined.count(b'"') == 2 * (len(middles) - 1)
        and b'\\"' not in joined
        and not joined.endswith(b"\\")
    ):
        try:
            texts: list[str] = orjson.loads(b'["' + joined + b'"]')
            return texts
        except orjson.JSONDecodeError:
            pass
    texts = []
    loads = orjson.loads
    for middle in middles:
        if max_middle is not None and len(middle) > max_middle:
            break
        try:
            texts.append(loads(b'"' + middle + b'"'))
        except orjson.JSONDecodeError:
            break
    return texts


def _verbatim(raw: bytes) -> bool:
    return len(raw.translate(None, _NOT_VERBATIM)) == len(raw)


def _swap(obj: Any, path: tuple[str | int, ...], value: Any) -> Any:
    """Put ``value`` at ``path`` in ``obj``; return what was there."""
    for step in path[:-1]:
        obj = obj[step]
    found = obj[path[-1]]
    obj[path[-1]] = value
    return found
