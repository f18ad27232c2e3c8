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
"""

from __future__ import annotations

from typing import Any

import orjson

from .pieces import Pieces

# Bytes a JSON string cannot hold verbatim: a text without them is found as it is in the bytes.
_NOT_VERBATIM = bytes(range(0x20)) + b'"\\'
_PADDING_END = b'"}'
_PADDING_KEY = b'"obfuscation":"'
_PROBE = "\x7fprobe\x7f"


class TextTemplate:
    """``prefix`` + a string's inside + ``suffix`` (+ verbatim ASCII + ``"}`` when ``padded``) is
    the learned chunk with that string as its text."""

    __slots__ = ("prefix", "suffix", "padded", "size", "pieces")

    def __init__(self, prefix: bytes, suffix: bytes, padded: bool, pieces: Pieces) -> None:
        self.prefix = prefix
        self.suffix = suffix
        self.padded = padded
        self.size = len(prefix) + len(suffix) + (len(_PADDING_END) if padded else 0)
        self.pieces = pieces  # where the text of a matching payload is appended

    def text_of(self, payload: bytes) -> bytes | None:
        """The bytes in the text's place if ``payload`` has this template's shape, else None.
        (Whether they are the inside of a JSON string is for the caller to check.)"""
        prefix, suffix = self.prefix, self.suffix
        if len(payload) < self.size or not payload.startswith(prefix):
            return None
        if not self.padded:
            return payload[len(prefix) : len(payload) - len(suffix)] if payload.endswith(suffix) else None
        end = payload.rfind(suffix, len(prefix))
        start, stop = end + len(suffix), len(payload) - len(_PADDING_END)
        if end < 0 or start > stop or not payload.endswith(_PADDING_END):
            return None
        padding = payload[start:stop]  # so payload == prefix + text + suffix + padding + '"}'
        return payload[len(prefix) : end] if padding.isascii() and _verbatim(padding) else None

    @classmethod
    def learn(
        cls, payload: bytes, chunk: dict[str, Any], path: tuple[str | int, ...], piece: str, pieces: Pieces
    ) -> TextTemplate | None:
        """The template of ``payload``, parsed as ``chunk``, whose text at ``path`` is ``piece``
        (appended to ``pieces``); None when the text has escapes or its place is not proven."""
        raw = piece.encode()
        if not _verbatim(raw) or piece == _PROBE:
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
        padded = type(padding) is str and padding.isascii() and _verbatim(padding.encode())
        padded = padded and suffix.endswith(_PADDING_KEY + padding.encode() + _PADDING_END)
        if padded:
            suffix = suffix[: len(suffix) - len(padding) - len(_PADDING_END)]
        probe = _PROBE.encode()
        try:
            probed = orjson.loads(prefix + probe + suffix + (probe + _PADDING_END if padded else b""))
            found = _swap(probed, path, piece)
            found_padding = _swap(probed, ("obfuscation",), padding) if padded else _PROBE
        except (orjson.JSONDecodeError, LookupError, TypeError):
            return None
        if found != _PROBE or found_padding != _PROBE or probed != chunk:
            return None
        return cls(prefix, suffix, padded, pieces)


def _verbatim(raw: bytes) -> bool:
    return len(raw.translate(None, _NOT_VERBATIM)) == len(raw)


def _swap(obj: Any, path: tuple[str | int, ...], value: Any) -> Any:
    """Put ``value`` at ``path`` in ``obj``; return what was there."""
    for step in path[:-1]:
        obj = obj[step]
    found = obj[path[-1]]
    obj[path[-1]] = value
    return found
