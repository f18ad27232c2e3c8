"""OpenAI Responses API (``POST /v1/responses``): one ``response`` object from its event stream.

A Responses stream ends with a terminal event (``response.completed``, ``response.incomplete``)
whose ``response`` is the whole answer; like the OpenAI SDK, the answer is that object (or, where it
lacks its ``output``, the output the events built), shaped like the backend's *non-stream* builder
where the two builders differ. ``profiles`` (each backend's differences, ``AUTO`` and ``detect``),
``request`` (the rewrite: ``"stream": true``, ``background`` requests left alone), ``errors`` (the
in-stream error events and objects, the error body, usage names), ``assembler`` (the events into
the answer, and where a text delta's text went for the core's fast path) and ``reshape`` (the
answer into a profile's non-stream shape). No end payload: the terminal event ends the stream
(a ``[DONE]`` some proxies add after it is taken as the end too).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...core.api import Api
from ...core.request import Rewrite, Skip
from .assembler import MAX_ITEMS, MAX_PARTS, ResponsesAssembler
from .errors import error_body, error_event, upstream_error, usage_tokens
from .profiles import AUTO, GENERIC, PROFILES, ResponsesProfile, detect
from .request import BACKGROUND, NAME, plan_request

__all__ = [
    "API",
    "ResponsesApi",
    "ResponsesAssembler",
    "ResponsesProfile",
    "AUTO",
    "GENERIC",
    "PROFILES",
    "BACKGROUND",
    "MAX_ITEMS",
    "MAX_PARTS",
    "detect",
    "plan_request",
    "upstream_error",
    "error_event",
    "error_body",
    "usage_tokens",
]


class ResponsesApi(Api[ResponsesProfile]):
    """The OpenAI Responses API."""

    name = NAME
    paths = ("/v1/responses",)
    profiles = PROFILES
    auto = AUTO

    def plan_request(self, body: bytes, models: tuple[str, ...], stream_interval: int = 0) -> Rewrite | Skip:
        return plan_request(body, models)  # no server takes a ``stream_interval`` here

    def new_assembler(self, profile: ResponsesProfile, hints: Mapping[str, Any] | None) -> ResponsesAssembler:
        return ResponsesAssembler(profile, hints)

    upstream_error = staticmethod(upstream_error)
    error_body = staticmethod(error_body)
    usage_tokens = staticmethod(usage_tokens)
    error_event = staticmethod(error_event)

    @staticmethod
    def is_end_payload(payload: bytes) -> bool:
        """A ``[DONE]`` line some proxies add after the terminal event."""
        return payload.strip() == b"[DONE]"


API = ResponsesApi()
