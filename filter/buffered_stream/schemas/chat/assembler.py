"""Chat completions, the assembler: ``fold`` (each parsed chunk into per-choice states, where the
field-by-field rules live) and ``render`` (the states into the backend's own answer shape, per
``profiles``), plus ``text_target``: where a chunk's one text went, for the core's fast path.

``hints`` (from the request) matter only for ``tool_choice``: a forced call makes vLLM answer
``content: ""``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...core.assembler import TextTarget
from ..openai_base import Choices
from .fold import ChatFold, ChoiceState, arguments_piece
from .profiles import AUTO, PROFILES, REASONING_KEYS, ChatProfile, vllm_line
from .render import render_chat

_TOOL_ARGUMENTS_PATH = ("choices", 0, "delta", "tool_calls", 0, "function", "arguments")


class ChatAssembler(ChatFold):
    """Chat completions assembler; the ``auto`` profile detects the backend at the end."""

    __slots__ = ("_forced_tool_choice",)

    def __init__(self, profile: ChatProfile = AUTO, hints: Mapping[str, Any] | None = None) -> None:
        super().__init__(profile)
        tool_choice = hints.get("tool_choice") if hints else None
        self._forced_tool_choice = tool_choice == "required" or isinstance(tool_choice, dict)  # or named

    add = ChatFold.fold

    def text_target(self, chunk: dict[str, Any]) -> TextTarget | None:
        """Where the one text of ``chunk`` (just folded) went, if folding it in again would change
        nothing but append that text; else None."""
        return _only_text(chunk, self._choices)

    @property
    def output_started(self) -> bool:
        """Some choice carried output: text (content, refusal, reasoning), a tool or function call,
        annotations or audio. Asked after each upstream chunk until it is true (the first-token mark)."""
        for state in self._choices.values():
            if state.calls or state.function_call is not None or state.annotations or state.audio_data:
                return True
            for pieces in state.texts.values():
                if pieces.text():
                    return True
            if state.audio_transcript.text():
                return True
        return False

    def result(self) -> dict[str, Any]:
        profile = self._profile
        if profile.detect:
            profile = PROFILES[self._detected_chat_backend()]
        assert isinstance(profile, ChatProfile)  # a chat fold is built with a chat profile
        return render_chat(profile, self._envelope, self._choices, self._forced_tool_choice)

    def _detected_chat_backend(self) -> str:
        """``auto``: the backend, and for vLLM the release line its stream shows."""
        backend = self._detected_backend()
        if backend != "vllm":
            return backend
        reasoning_keys: dict[str, bool] = {}
        for state in self._choices.values():
            for key in REASONING_KEYS:
                pieces = state.texts.get(key)
                if pieces is not None:
                    reasoning_keys[key] = reasoning_keys.get(key, False) or bool(pieces.text())
        return vllm_line("prompt_token_ids" in self._envelope.top_extras, reasoning_keys)


def _unchanged_by_refolding(state: ChoiceState, key: str, value: Any) -> bool:
    """A role (Ollama and TGI repeat it; the first is kept), or a null for a key already seen:
    vLLM 0.11.1-0.15 send ``reasoning_content: null`` and SGLang ``role``/``reasoning_content:
    null`` on every delta."""
    if key == "role":
        return type(value) is str or value is None
    return value is None and key in state.texts


def _only_text(chunk: dict[str, Any], choices: Choices) -> TextTarget | None:
    """Where the one text of ``chunk`` sits, the text and the pieces it went to (no counter), if
    folding the chunk in again would change nothing but append that text; else None."""
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
        return (("choices", 0, "delta", key), value, state.texts[key], None) if value else None
    if key == "tool_calls" and type(value) is list and len(value) == 1 and (found := arguments_piece(state, value[0])):
        pieces, piece = found
        return _TOOL_ARGUMENTS_PATH, piece, pieces, None
    return None
