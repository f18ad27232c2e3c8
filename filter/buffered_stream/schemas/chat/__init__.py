"""``/v1/chat/completions``: ``chat.completion.chunk`` events folded into one ``chat.completion``.

``profiles`` (each backend's native answer shape, and ``AUTO``), ``fold`` (each parsed chunk into
per-choice states: the field-by-field rules), ``render`` (the states into the profile's answer) and
``assembler`` (the two together, and where a chunk's text went for the core's fast path). The
request rewrite, ``[DONE]``, in-stream errors, error bodies and usage are the OpenAI family's
(``openai_conventions``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..openai_conventions import OpenAIFamilyApi
from .assembler import ChatAssembler
from .profiles import AUTO, PROFILES, ChatProfile

__all__ = ["API", "ChatApi", "ChatAssembler", "ChatProfile", "AUTO", "PROFILES"]


class ChatApi(OpenAIFamilyApi[ChatProfile]):
    """Chat completions."""

    name = "chat"
    paths = ("/v1/chat/completions", "/chat/completions")
    profiles = PROFILES
    auto = AUTO

    def new_assembler(self, profile: ChatProfile, hints: Mapping[str, Any] | None) -> ChatAssembler:
        return ChatAssembler(profile, hints)


API = ChatApi()
