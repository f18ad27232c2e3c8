"""Chat completions, the fast path: payloads that repeat the last text chunk but for its text are
folded in without parsing (see ``core.template``), the bulk of a long answer.

The converter offers every payload to ``add_raw`` first; when it declines, the payload is parsed,
folded (``chat_fold``) and then offered to ``learn``, which makes it the template when folding it in
again would only append its one text (``core.fast_path`` does the rest, for every API).
"""

from __future__ import annotations

from typing import Any

from ..core.fast_path import TextFastPath
from ..core.pieces import Pieces
from .chat_fold import ChoiceState, arguments_piece
from .openai_base import Choices


def _unchanged_by_refolding(state: ChoiceState, key: str, value: Any) -> bool:
    """A role (Ollama and TGI repeat it; the first is kept), or a null for a key already seen:
    vLLM 0.11.1-0.15 send ``reasoning_content: null`` and SGLang ``role``/``reasoning_content:
    null`` on every delta."""
    if key == "role":
        return type(value) is str or value is None
    return value is None and key in state.texts


class ChatFastPath(TextFastPath):
    """The fast path, with what makes a chat chunk a template."""

    __slots__ = ()

    def learn(self, chunk: dict[str, Any], choices: Choices) -> None:
        """Make ``chunk`` (just folded, parsed from ``payload``) the template if folding it in
        again would only append its one text."""
        found = _only_text(chunk, choices)
        if found is None:
            self.payload = None
        else:
            self.learn_text(chunk, *found)


def _only_text(chunk: dict[str, Any], choices: Choices) -> tuple[tuple[str | int, ...], str, Pieces] | None:
    """Where the one text of ``chunk`` sits, the text and the pieces it went to, if folding the
    chunk in again would change nothing but append that text; else None."""
    chunk_choices = chunk.get("choices")
    if type(chunk_choices) is not list or len(chunk_choices) != 1 or chunk_choices[0].get("logprobs") is not None:
        return None
    choice = chunk_choices[0]
    delta = choice.get("delta")
    if type(delta) is not dict:
        return None
    state: ChoiceState = choices[choice.get("index", 0)]
    if len(delta) > 1:  # keys that folding again leaves as they are stay in the template
        delta = {key: value for key, value in delta.items() if not _unchanged_by_refolding(state, key, value)}
    if len(delta) != 1:
        return None
    ((key, value),) = delta.items()
    if type(value) is str and key != "role":
        # An empty text (a role or finish chunk) makes no template: what follows differs in more.
        return (("choices", 0, "delta", key), value, state.texts[key]) if value else None
    if key == "tool_calls" and type(value) is list and len(value) == 1 and (found := arguments_piece(state, value[0])):
        pieces, piece = found
        return ("choices", 0, "delta", "tool_calls", 0, "function", "arguments"), piece, pieces
    return None
