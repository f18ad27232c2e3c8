"""Anthropic Messages (``POST /v1/messages``): the event stream folded into the one ``message`` answer.

``profiles`` (each server's native answer shape, ``AUTO`` and ``detect``, which tells them apart by
``message_start``), ``request`` (the rewrite: ``"stream": true`` and nothing else), ``errors``
(in-stream ``error`` events with Anthropic's statuses, the error answer in Anthropic's shape, usage
for metrics) and ``assembler`` (the fold of each event, the answer, and where a text delta went for
the core's fast path). The stream ends with ``message_stop`` (the assembler's ``finished``); vLLM
adds an OpenAI-style ``data: [DONE]`` after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...core.api import Api
from ...core.request import Rewrite, Skip
from .assembler import MAX_BLOCKS, MessagesAssembler
from .errors import error_body, upstream_error, usage_tokens
from .profiles import AUTO, GENERIC, PROFILES, MessagesProfile, detect
from .request import NAME, plan_request

__all__ = [
    "API",
    "MessagesApi",
    "MessagesAssembler",
    "MessagesProfile",
    "AUTO",
    "GENERIC",
    "PROFILES",
    "MAX_BLOCKS",
    "detect",
    "plan_request",
    "upstream_error",
    "error_body",
    "usage_tokens",
]


class MessagesApi(Api[MessagesProfile]):
    """Anthropic Messages."""

    name = NAME
    paths = ("/v1/messages",)
    profiles = PROFILES
    auto = AUTO

    def plan_request(self, body: bytes, models: tuple[str, ...], stream_interval: int = 0) -> Rewrite | Skip:
        return plan_request(body, models)

    def new_assembler(self, profile: MessagesProfile, hints: Mapping[str, Any] | None) -> MessagesAssembler:
        return MessagesAssembler(profile, hints)

    upstream_error = staticmethod(upstream_error)
    error_body = staticmethod(error_body)
    usage_tokens = staticmethod(usage_tokens)

    @staticmethod
    def is_end_payload(payload: bytes) -> bool:
        """vLLM ends its Messages stream with an OpenAI-style ``data: [DONE]`` after ``message_stop``;
        without ``message_stop`` the answer is still incomplete (truncated)."""
        return payload.strip() == b"[DONE]"


API = MessagesApi()
