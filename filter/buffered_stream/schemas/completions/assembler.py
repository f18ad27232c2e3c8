"""Legacy ``/v1/completions``: fold ``text_completion`` stream events into one answer.

Per choice ``index``: ``text`` concatenated; ``logprobs`` null unless a chunk had non-null, then
its four parallel lists (``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``)
concatenated, offsets kept as sent (vLLM streams absolute offsets: rebasing would corrupt them);
``finish_reason`` the last non-empty one (TGI sends ``""`` for "not finished"); other choice keys
(vLLM ``stop_reason``, ``prompt_logprobs``) last non-null, null if only null. The top level follows
the shared OpenAI rules (``openai_base.Envelope``). A single event holding a whole answer, as
vLLM's beam search sends, therefore comes out unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...core.assembler import TextTarget
from ...core.pieces import Pieces
from ..openai_base import ChoiceAssembler, copy_logprobs, malformed, merge_last, merge_logprobs
from ..vllm_releases import BEFORE_PROMPT_TOKEN_IDS, CURRENT
from .profiles import AUTO, PROFILES, CompletionsProfile

_TEXT_PATH = ("choices", 0, "text")


class _Choice:
    __slots__ = ("text", "logprobs", "finish_reason", "extras")

    def __init__(self) -> None:
        self.text = Pieces()
        self.logprobs: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.extras: dict[str, Any] = {}


class CompletionsAssembler(ChoiceAssembler):
    """Legacy completions assembler; the ``auto`` profile detects the backend at the end."""

    __slots__ = ()

    def __init__(self, profile: CompletionsProfile = AUTO, hints: Mapping[str, Any] | None = None) -> None:
        super().__init__(profile, _Choice)

    def text_target(self, chunk: dict[str, Any]) -> TextTarget | None:
        """Where the text of ``chunk`` (just folded) went, if folding it in again would change
        nothing but append that text: one choice with a text, no logprobs and no finish reason
        (its other keys keep the last value, the same again; the top level keeps first or last)."""
        choices = chunk.get("choices")
        if type(choices) is not list or len(choices) != 1:
            return None
        choice = choices[0]
        text = choice.get("text")
        if type(text) is not str or not text or choice.get("logprobs") is not None or choice.get("finish_reason"):
            return None
        state = self._choices.get(choice.get("index", 0))
        return None if state is None else (_TEXT_PATH, text, state.text, None)

    @property
    def output_started(self) -> bool:
        """Some choice carried text (the first-token mark)."""
        return any(state.text.text() for state in self._choices.values())

    def add(self, chunk: dict[str, Any]) -> None:
        state_of = self._choices.state_of
        for choice in self._envelope.read(chunk):
            state = state_of(choice)
            for key, value in choice.items():
                if key == "text":
                    if value is not None:
                        if type(value) is not str:
                            raise malformed("'text' is not a string")
                        state.text.add(value)
                elif key == "finish_reason":
                    if value:
                        if type(value) is not str:
                            raise malformed("'finish_reason' is not a string")
                        self._choices.finish(state, value)
                elif key == "logprobs":
                    if value is not None:
                        state.logprobs = merge_logprobs(state.logprobs, value)
                elif key != "index":
                    merge_last(state.extras, key, value)

    def result(self) -> dict[str, Any]:
        profile = self._profile
        if profile.detect:
            profile = PROFILES[self._detected_completions_backend()]
        choices = []
        for index in sorted(self._choices):
            state = self._choices[index]
            choice = {
                "index": index,
                "text": state.text.text() or "",
                "logprobs": copy_logprobs(state.logprobs),
                "finish_reason": state.finish_reason,
                **state.extras,
            }
            for key, empty in profile.choice_keys.items():
                choice.setdefault(key, empty)
            choices.append(choice)
        return self._envelope.answer(profile, "text_completion", choices)

    def _detected_completions_backend(self) -> str:
        """``auto``: the backend; for vLLM, its stream tells only whether it is older than 0.10.2
        (no ``prompt_token_ids`` on the choices): the rest of its lines stream alike."""
        backend = self._detected_backend()
        if backend != "vllm":
            return backend
        if any("prompt_token_ids" in state.extras for state in self._choices.values()):
            return CURRENT
        return BEFORE_PROMPT_TOKEN_IDS
