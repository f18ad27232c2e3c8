"""The fast path of every API: payloads that repeat the last text event but for its text are
appended without parsing (see ``template``), the bulk of a long answer.

The converter owns it: it offers every payload to ``add_raw`` first (and a whole buffered body to
``add_run``); when it declines, the template is dropped and the payload is parsed and folded by the
assembler, and then ``learn`` asks the assembler where that event's text went
(``Assembler.text_target``): if folding the event in again with another text would only append the
text, the event becomes the template. An API only says where its text lives; it never touches the
template.
"""

from __future__ import annotations

from typing import Any

import orjson

from .assembler import TextTarget
from .pieces import COMPACT_EVERY
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
                    self._template = None  # the parser will say what is wrong, or what else it does
                    return False
                pieces = template.pieces
                pieces.append(piece)
                if len(pieces) >= COMPACT_EVERY:
                    pieces.compact()
                self._template_hits += 1
                return True
            if not self._template_hits:
                self._learn_tries -= 1  # a template that never matched: the stream varies more
            self._template = None
        self.payload = payload if self._learn_tries > 0 else None
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

    def learn(self, chunk: dict[str, Any], target: TextTarget | None) -> None:
        """Make ``chunk`` (just folded, parsed from the pending ``payload``) the template if the
        assembler found its one text at ``target``: ``(path, text, pieces, counter)``, proved to
        change nothing else if folded in again with another text (and any value of the top-level
        integer ``counter``)."""
        payload = self.payload
        self.payload = None
        if target is not None and payload is not None:
            path, piece, pieces, counter = target
            self._template = TextTemplate.learn(payload, chunk, path, piece, pieces, counter)
            self._template_hits = 0
