"""Legacy ``/v1/completions``: ``text_completion`` events folded into one ``text_completion``.

``profiles`` (each backend's native answer shape, and ``AUTO``) and ``assembler`` (the fold, the
answer, and where a chunk's text went for the core's fast path). The request rewrite, ``[DONE]``,
in-stream errors, error bodies and usage are the OpenAI family's (``openai_conventions``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..openai_conventions import OpenAIFamilyApi
from .assembler import CompletionsAssembler
from .profiles import AUTO, PROFILES, CompletionsProfile

__all__ = ["API", "CompletionsApi", "CompletionsAssembler", "CompletionsProfile", "AUTO", "PROFILES"]


class CompletionsApi(OpenAIFamilyApi[CompletionsProfile]):
    """Legacy completions."""

    name = "completions"
    paths = ("/v1/completions", "/completions")
    profiles = PROFILES
    auto = AUTO

    def new_assembler(self, profile: CompletionsProfile, hints: Mapping[str, Any] | None) -> CompletionsAssembler:
        return CompletionsAssembler(profile, hints)


API = CompletionsApi()
