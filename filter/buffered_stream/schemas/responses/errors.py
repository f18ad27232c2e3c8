"""The Responses API's errors and usage: the error events and objects its servers send in the
stream (``upstream_error``, ``error_event``), the error body and the usage token names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ...core.assembler import shown, writable
from ...core.errors import BAD_UPSTREAM, ConversionError, http_status_in, upstream_reported

# Event types the error check reads.
TEXT_DELTA = "response.output_text.delta"
FAILED = "response.failed"
ERROR = "error"

_MESSAGE_EXCERPT_CHARS = 100


def upstream_error(chunk: dict[str, Any]) -> ConversionError | None:
    """The error a parsed event reports, or None for a data event (one or two key lookups).

    ``{"type": "error", "code", "message", "param", ...}`` (or its nested ``error`` object),
    ``response.failed`` (its ``response.error``), vLLM's flat ``{"object": "error", ...}`` and
    ``{"error": {...}}``. Status: the upstream's HTTP status when it gives one (a 3-digit ``code``
    or ``http_status_code``), else 502.
    """
    kind = chunk.get("type")
    if kind == TEXT_DELTA:  # the bulk of every stream
        return None
    if type(kind) is str and kind.startswith("response."):
        if kind != FAILED:
            return None
        response = chunk.get("response")
        error = response.get("error") if isinstance(response, dict) else None
        if not isinstance(error, dict):
            error = {"message": "upstream response failed", "code": None}
        return _error_from(error)
    if kind == ERROR:
        nested = chunk.get("error")
        if isinstance(nested, dict):
            return _error_from(nested, chunk)
        return _error_from({key: value for key, value in chunk.items() if key not in ("type", "sequence_number")})
    error = chunk.get("error")
    if isinstance(error, dict):
        return _error_from(error, chunk)
    if error:  # {"error": "text"}
        return _error_from({"message": shown(error)}, chunk)
    if chunk.get("object") == "error":
        return _error_from({key: value for key, value in chunk.items() if key != "object"})
    return None


def error_event(payload: bytes) -> ConversionError:
    """An ``event: error`` (or llama.cpp ``error:`` line) is fatal whatever it holds: its own
    error object when it parses as one (llama.cpp sends the bare ``{code, message, type}``)."""
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        return _error_from({"message": "upstream sent an error event"})
    return upstream_error(parsed) or _error_from(parsed)


def error_body(error: ConversionError) -> bytes:
    """The Responses API answers errors in the OpenAI shape, ``{"error": {...}}``."""
    return error.body()


def _error_from(error: Mapping[str, Any], outer: Mapping[str, Any] | None = None) -> ConversionError:
    """One OpenAI-style error object (``message, type, param, code`` and the upstream's extras)."""
    upstream_type = error.get("type")
    upstream = {
        "message": shown(error.get("message") or "no message"),
        "type": upstream_type if isinstance(upstream_type, str) and upstream_type != ERROR else "upstream_error",
        "param": error.get("param"),
        "code": error.get("code"),
        **{key: value for key, value in error.items() if key not in ("message", "type", "param", "code")},
    }
    status = http_status_in(error) or (http_status_in(outer) if outer else None) or BAD_UPSTREAM
    if not writable(upstream, 1):  # nested too deep for the error body ``{"error": ...}``: the gist only
        upstream = {"message": upstream["message"], "type": upstream["type"], "param": None, "code": None}
    return upstream_reported(status, upstream["message"][:_MESSAGE_EXCERPT_CHARS], upstream)


def usage_tokens(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Token counts under one set of names, whichever the answer uses (SGLang keeps chat names)."""
    input_tokens = usage.get("input_tokens", usage.get("prompt_tokens"))
    output_tokens = usage.get("output_tokens", usage.get("completion_tokens"))
    return {"input_tokens": input_tokens, "output_tokens": output_tokens, "total_tokens": usage.get("total_tokens")}
