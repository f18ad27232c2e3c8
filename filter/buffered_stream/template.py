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
"""

from __future__ import annotations

from typing import Any

import orjson

from .pieces import Pieces

# Bytes a JSON string cannot hold verbatim: a text without them is found as it is in the bytes.
_NOT_VERBATIM = bytes(range(0x20)) + b'"\\'
_PROBE = "\x7fprobe\x7f"


class TextTemplate:
    """``prefix`` + plain middle + ``suffix`` is the learned chunk with the middle as its text."""

    __slots__ = ("prefix", "suffix", "size", "pieces")

    def __init__(self, prefix: bytes, suffix: bytes, pieces: Pieces) -> None:
        self.prefix = prefix
        self.suffix = suffix
        self.size = len(prefix) + len(suffix)
        self.pieces = pieces  # where the text of a matching payload is appended

    @classmethod
    def learn(
        cls, payload: bytes, chunk: dict[str, Any], path: tuple[str | int, ...], piece: str, pieces: Pieces
    ) -> TextTemplate | None:
        """The template of ``payload``, parsed as ``chunk``, whose text at ``path`` is ``piece``
        (appended to ``pieces``); None when the text has escapes or its place is not proven."""
        raw = piece.encode()
        if len(raw.translate(None, _NOT_VERBATIM)) != len(raw) or piece == _PROBE:
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
        try:
            probed = orjson.loads(prefix + _PROBE.encode() + suffix)
            found = _swap(probed, path, piece)
        except (orjson.JSONDecodeError, LookupError, TypeError):
            return None
        if found != _PROBE or probed != chunk:
            return None
        return cls(prefix, suffix, pieces)


def _swap(obj: Any, path: tuple[str | int, ...], value: Any) -> Any:
    """Put ``value`` at ``path`` in ``obj``; return what was there."""
    for step in path[:-1]:
        obj = obj[step]
    found = obj[path[-1]]
    obj[path[-1]] = value
    return found
