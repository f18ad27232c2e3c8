"""Legacy ``/v1/completions``: fold ``text_completion`` stream events into one answer.

Per choice ``index``: ``text`` concatenated; ``logprobs`` null unless a chunk had non-null, then
its four parallel lists (``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``)
concatenated, offsets kept as sent (vLLM streams absolute offsets: rebasing would corrupt them);
``finish_reason`` the last non-empty one (TGI sends ``""`` for "not finished"); other choice keys
(vLLM ``stop_reason``, ``prompt_logprobs``) last non-null, null if only null. The top level follows
the chat rules (``Envelope``). A single event holding a whole answer, as vLLM's beam search sends,
therefore comes out unchanged.
"""

from __future__ import annotations

from typing import Any

from .chat import MAX_CHOICES, Envelope, copy_logprobs, malformed, merge_last, merge_logprobs, too_many
from .pieces import Pieces
from .profiles import Profile


class _Choice:
    __slots__ = ("text", "logprobs", "finish_reason", "extras")

    def __init__(self) -> None:
        self.text = Pieces()
        self.logprobs: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.extras: dict[str, Any] = {}


class CompletionsAssembler:
    """Legacy completions assembler; ``profile`` None means auto-detect at the end."""

    __slots__ = ("_profile", "_envelope", "_choices", "_unfinished")

    def __init__(self, profile: Profile | None = None) -> None:
        self._profile = profile
        self._envelope = Envelope()
        self._choices: dict[int, _Choice] = {}
        self._unfinished = 0

    @property
    def finished(self) -> bool:
        return bool(self._choices) and self._unfinished == 0

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._envelope.usage

    def add_raw(self, payload: bytes) -> bool:
        return False  # no unparsed fast path (yet): every payload is parsed

    def add(self, chunk: dict[str, Any]) -> None:
        for choice in self._envelope.read(chunk):
            if type(choice) is not dict:
                raise malformed("a choice is not an object")
            index = choice.get("index", 0)
            if type(index) is not int:
                raise malformed("a choice 'index' is not an integer")
            state = self._choices.get(index)
            if state is None:
                state = self._new_choice(index)
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
                        if state.finish_reason is None:
                            self._unfinished -= 1
                        state.finish_reason = value
                elif key == "logprobs":
                    if value is not None:
                        state.logprobs = merge_logprobs(state.logprobs, value)
                elif key != "index":
                    merge_last(state.extras, key, value)

    def _new_choice(self, index: int) -> _Choice:
        if len(self._choices) >= MAX_CHOICES:
            raise too_many("choices", MAX_CHOICES)
        state = self._choices[index] = _Choice()
        self._unfinished += 1
        return state

    def result(self) -> dict[str, Any]:
        profile = self._profile
        if profile is None:
            profile = self._envelope.detect({key for state in self._choices.values() for key in state.extras})
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
            for key, empty in profile.completion_choice_keys.items():
                choice.setdefault(key, empty)
            choices.append(choice)
        return self._envelope.answer(profile, "text_completion", choices, profile.completion_top_keys)
