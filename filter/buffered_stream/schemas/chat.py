"""``/v1/chat/completions``: fold ``chat.completion.chunk`` events into one ``chat.completion``.

The assembler is three parts: ``chat_fold`` (each parsed chunk into per-choice states, where the
field-by-field rules live), ``chat_fast_path`` (payloads that repeat the last text chunk but for its
text, folded in without parsing) and ``chat_render`` (the states into the backend's own answer
shape, per ``chat_profiles``). The top level follows ``openai_base.Envelope``; requests, ``[DONE]``,
in-stream errors, error bodies and usage follow ``openai_conventions``.

``request`` (the client's body) matters only for ``tool_choice``: a forced call makes vLLM answer
``content: ""``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core.request import Rewrite, Skip
from .chat_fast_path import ChatFastPath
from .chat_fold import ChatFold
from .chat_profiles import PROFILES, REASONING_KEYS, ChatProfile, vllm_line
from .chat_render import render_chat
from .openai_conventions import (
    STREAM_INTERVAL_PROFILES,
    answer_complete,
    error_body,
    error_event,
    is_end_payload,
    plan_openai_request,
    upstream_error,
    usage_tokens,
)

__all__ = [
    "ChatAssembler",
    "PROFILES",
    "NAME",
    "PATHS",
    "make_assembler",
    "plan_request",
    "answer_complete",
    "upstream_error",
    "error_event",
    "error_body",
    "usage_tokens",
    "is_end_payload",
    "STREAM_INTERVAL_PROFILES",
]


class ChatAssembler(ChatFold):
    """Chat completions assembler; ``profile`` None means auto-detect at the end."""

    # ``add_raw`` is the fast path's own bound method: the hottest call pays no hop through here.
    __slots__ = ("_forced_tool_choice", "_fast_path", "add_raw", "add_run")

    def __init__(self, profile: ChatProfile | None = None, request: Mapping[str, Any] | None = None) -> None:
        super().__init__(profile)
        tool_choice = request.get("tool_choice") if request else None
        self._forced_tool_choice = tool_choice == "required" or isinstance(tool_choice, dict)  # or named
        self._fast_path = fast_path = ChatFastPath()
        self.add_raw = fast_path.add_raw
        self.add_run = fast_path.add_run

    def add(self, chunk: dict[str, Any]) -> None:
        self.fold(chunk)
        fast_path = self._fast_path
        if fast_path.payload is not None:
            fast_path.learn(chunk, self._choices)

    def _tool_call_opened(self) -> None:
        self._fast_path.forget()

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
        if profile is None:
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


# -- the API's hooks (see ``core.spec.SchemaSpec``) -------------------------------------------------

NAME = "chat"
PATHS = ("/v1/chat/completions", "/chat/completions")
make_assembler = ChatAssembler


def plan_request(body: bytes, models: tuple[str, ...], stream_interval: int = 0) -> Rewrite | Skip:
    return plan_openai_request(NAME, body, models, stream_interval)
