"""Chat completions, the fast path: payloads that repeat the last text chunk but for its text are
folded in without parsing (see ``core.template``), the bulk of a long answer.

The converter offers every payload to ``add_raw`` first; when it declines, the payload is parsed,
folded (``chat_fold``) and then offered to ``learn``, which makes it the template when folding it in
again would only append its one text.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..core.pieces import COMPACT_EVERY, Pieces
from ..core.template import TextTemplate
from .chat_fold import ChoiceState, arguments_piece
from .openai_base import Choices

# Templates that never matched before the stream may stop offering new ones (OpenAI's chunks
# carry random padding; a template would never match).
_TEMPLATE_LEARN_TRIES = 4


def _unchanged_by_refolding(state: ChoiceState, key: str, value: Any) -> bool:
    """A role (Ollama and TGI repeat it; the first is kept), or a null for a key already seen:
    vLLM 0.11.1-0.15 send ``reasoning_content: null`` and SGLang ``role``/``reasoning_content:
    null`` on every delta."""
    if key == "role":
        return type(value) is str or value is None
    return value is None and key in state.texts


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

    def learn(self, chunk: dict[str, Any], choices: Choices) -> None:
        """Make ``chunk`` (just folded, parsed from ``payload``) the template if folding it in
        again would only append its one text."""
        payload = self.payload
        self.payload = None
        chunk_choices = chunk.get("choices")
        if type(chunk_choices) is not list or len(chunk_choices) != 1 or chunk_choices[0].get("logprobs") is not None:
            return
        choice = chunk_choices[0]
        delta = choice.get("delta")
        if type(delta) is not dict:
            return
        state: ChoiceState = choices[choice.get("index", 0)]
        if len(delta) > 1:  # keys that folding again leaves as they are stay in the template
            delta = {key: value for key, value in delta.items() if not _unchanged_by_refolding(state, key, value)}
        if len(delta) != 1:
            return
        ((key, value),) = delta.items()
        found: tuple[Pieces, str] | None
        if type(value) is str and key != "role":
            path: tuple[str | int, ...] = ("choices", 0, "delta", key)
            found = state.texts[key], value
        elif key == "tool_calls" and type(value) is list and len(value) == 1 and (found := arguments_piece(state, value[0])):
            path = ("choices", 0, "delta", "tool_calls", 0, "function", "arguments")
        else:
            return
        pieces, piece = found
        self._template = TextTemplate.learn(payload, chunk, path, piece, pieces)
        self._template_hits = 0
