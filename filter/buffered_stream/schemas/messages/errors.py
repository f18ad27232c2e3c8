"""Messages errors: an in-stream ``error`` event read with Anthropic's statuses, the error answer in
Anthropic's shape, the usage for metrics, and the messages of a malformed stream (which never quote
its values: they can hold completion text).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import orjson

from ...core.assembler import shown, writable
from ...core.errors import BAD_UPSTREAM, ConversionError, malformed, upstream_reported

# Anthropic's documented error types and their HTTP statuses; anything else is a bad gateway.
ERROR_STATUS: Mapping[str, int] = MappingProxyType(
    {
        "invalid_request_error": 400,
        "authentication_error": 401,
        "permission_error": 403,
        "not_found_error": 404,
        "request_too_large": 413,
        "rate_limit_error": 429,
        "api_error": 500,
        "timeout_error": 504,
        "overloaded_error": 529,
    }
)
UNKNOWN_ERROR_STATUS = BAD_UPSTREAM
_MESSAGE_EXCERPT_CHARS = 100


def upstream_error(chunk: dict[str, Any]) -> ConversionError | None:
    """The failure an in-stream ``{"type": "error", "error": {...}}`` reports, else None.

    The same payload arrives as ``event: error``; a bare ``{"error": ...}`` without a ``type`` (a
    proxy between us and the server) counts too. The status follows the error's type.
    """
    kind = chunk.get("type")
    if kind != "error" and not (kind is None and chunk.get("error")):
        return None
    error = chunk.get("error")
    status = UNKNOWN_ERROR_STATUS
    if isinstance(error, dict):
        upstream = error
        error_type = error.get("type")
        if isinstance(error_type, str):
            status = ERROR_STATUS.get(error_type, UNKNOWN_ERROR_STATUS)
    else:  # no error object to pass on: one in Anthropic's shape, with a bad-gateway status
        upstream = {"type": "api_error", "message": shown(error) if error else "upstream sent an error event"}
    message = shown(upstream.get("message") or "no message")[:_MESSAGE_EXCERPT_CHARS]
    if not writable(upstream, 1):  # nested too deep for the error body ``{"error": ...}``: the gist only
        error_type, text = upstream.get("type"), upstream.get("message")
        upstream = {
            "type": error_type if isinstance(error_type, str) else "api_error",
            "message": text if type(text) is str else message,
        }
    return upstream_reported(status, message, upstream)


def error_body(error: ConversionError) -> bytes:
    """Anthropic's error answer: the upstream's own error object when there is one, else ours."""
    if error.upstream_error is not None:
        return orjson.dumps({"type": "error", "error": error.upstream_error})
    return orjson.dumps({"type": "error", "error": {"type": "api_error", "message": error.message}})


def usage_tokens(usage: Mapping[str, Any] | None) -> dict[str, int]:
    """Input, output and total tokens of a Messages usage, for metrics; only what was reported.

    ``input_tokens`` counts cache reads and writes too (Anthropic reports them apart), so it means
    what an OpenAI ``prompt_tokens`` means.
    """
    if not usage:
        return {}
    counts: dict[str, int] = {}
    inputs = [
        value
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        if type(value := usage.get(key)) is int
    ]
    if inputs:
        counts["input_tokens"] = sum(inputs)
    output = usage.get("output_tokens")
    if type(output) is int:
        counts["output_tokens"] = output
        if "input_tokens" in counts:
            counts["total_tokens"] = counts["input_tokens"] + output
    return counts


def malformed_event(what: str) -> ConversionError:
    """A stream event the assembler cannot fold: ``what`` says what is wrong, never its values."""
    return malformed(f"upstream stream event is malformed: {what}")


def index_of(index: Any) -> str:
    """A block ``index`` for an error message: the number, or only the type of anything else (a
    string there could be completion text, which messages never quote)."""
    return str(index) if type(index) is int else f"of type {type(index).__name__}"
