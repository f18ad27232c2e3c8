"""The fast path any assembler can use: payloads that repeat the last text event but for its
text are appended without parsing (see ``template``), the bulk of a long answer.

The converter offers every payload to ``add_raw`` first (and a whole buffered body to ``add_run``);
when it declines, the payload is parsed and folded by the assembler, which then calls
``learn_text`` if folding that event in again with another text would only append the text.
"""

from __future__ import annotations

from typing import Any

import orjson

from .pieces import COMPACT_EVERY, Pieces
from .template import TextTemplate

# Templates that never matched before the stream may stop offering new ones (OpenAI's chunks
# carry random padding; a template would never match).
_TEMPLATE_LEARN_TRIES = 4


class TextFastPath:
    """The current template and what it takes to learn the next one."""

    __slots__ = ("_template", "_template_hits", "_learn_tries", "payload")

    def __init__(self) -> None:
        self._template: TextTemplate | None = None
        self._template_hits = 0
        self._learn_tries = _TEMPLATE_LEARN_TRIES
        self.payload: bytes | None = None  # the raw form of the chunk parsed next, to learn from

    def add_raw(self, payload: bytes) -> bool:
        """Fold in a payload without parsing it if it repeats the last text chunk but for its
        text; False: parse it, fold it and ``learn`` from it."""
        template = self._template
        if template is not None:
            middle = template.text_of(payload)
            if middle is not None:
                try:  # parses only if the middle is the inside of one JSON string, as in the template
                    piece = orjson.loads(b'"' + middle + b'"')
                except orjson.JSONDecodeError:
                    return False  # the parser will say what is wrong
                pieces = template.pieces
                pieces.append(piece)
                if len(pieces) >= COMPACT_EVERY:
                    pieces.compact()
                self._template_hits += 1
                return True
            if not self._template_hits:
                self._learn_tries -= 1  # a template that never matched: the stream varies more
            self._template = None
        if self._learn_tries > 0:
            self.payload = payload
        return False

    def add_run(self, body: bytes, pos: int, max_payload: int) -> tuple[int, int]:
        """Fold in, without parsing, the events of a whole LF-only ``body`` from ``pos`` (an event
        boundary) that repeat the last text chunk but for their text: ``(end, events)``."""
        template = self._template
        if template is None:
            return pos, 0
        end, count = template.run_in(body, pos, max_payload)
        self._template_hits += count
        return end, count

    def forget(self) -> None:
        """Drop the template: the states it appends to may no longer be where its text goes."""
        self._template = None

    def learn_text(
        self, chunk: dict[str, Any], path: tuple[str | int, ...], piece: str, pieces: Pieces, counter: str | None = None
    ) -> None:
        """Make ``chunk`` (just folded, parsed from the pending payload) the template: its one text
        ``piece`` at ``path`` went to ``pieces``. The caller has proved that folding the chunk in
        again with another text, and with any value of its top-level integer ``counter``, would
        change nothing else (any API, not only chat)."""
        payload = self.payload
        self.payload = None
        if payload is not None:
            self._template = TextTemplate.learn(payload, chunk, path, piece, pieces, counter)
            self._template_hits = 0
