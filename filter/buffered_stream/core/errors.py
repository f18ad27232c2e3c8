"""Errors of the conversion, as values with an HTTP status hint.

Every failure the core can detect is a ``ConversionError``: the adapter turns it into one error
answer in the API's own shape (``Api.error_body``) and a metrics outcome (``kind``), and never
needs to know which part of the core raised it. Keeping the upstream's own error object lets the client see exactly what the
backend said.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

# Outcome kinds, also used as metric labels.
UPSTREAM_ERROR = "upstream_error"  # the backend reported an error inside the stream
TRUNCATED = "truncated"  # the stream ended before the answer was complete
MALFORMED = "malformed"  # bytes that are not valid SSE / JSON / UTF-8
LIMIT = "limit"  # a configured size limit was exceeded


def http_status_in(obj: Mapping[str, Any]) -> int | None:
    """An error object's ``code`` or ``http_status_code`` when it is an HTTP error status (an int or
    a three-digit string): upstream errors keep the status they say."""
    for key in ("code", "http_status_code"):
        value = obj.get(key)
        if isinstance(value, str) and len(value) == 3 and value.isascii() and value.isdigit():
            value = int(value)
        if type(value) is int and 400 <= value <= 599:
            return value
    return None


class ConversionError(Exception):
    """The stream cannot become a correct answer; carries what the client should get."""

    __slots__ = ("kind", "status", "message", "code", "upstream_error")

    def __init__(
        self,
        kind: str,
        status: int,
        message: str,
        *,
        code: str | int | None = None,
        upstream_error: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.message = message
        self.code = code
        self.upstream_error = upstream_error

    def body(self) -> bytes:
        """The default error body, ``{"error": {...}}`` (the OpenAI family's shape, which is also what
        the service answers before it knows the API); the upstream's own error object wins."""
        if self.upstream_error is not None:
            return orjson.dumps({"error": self.upstream_error})
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.kind,
                    "param": None,
                    "code": self.code if self.code is not None else self.kind,
                }
            }
        )

    def __repr__(self) -> str:
        return f"ConversionError({self.kind!r}, {self.status}, {self.message!r})"


# The status of a stream that cannot become an answer: the gateway got a bad answer upstream. An
# upstream error keeps the status it says (``http_status_in``).
BAD_UPSTREAM = 502


def malformed(message: str) -> ConversionError:
    """Bytes or values that are not what the API's stream allows (the message never quotes them)."""
    return ConversionError(MALFORMED, BAD_UPSTREAM, message)


def truncated(message: str = "upstream stream ended before the answer was complete") -> ConversionError:
    return ConversionError(TRUNCATED, BAD_UPSTREAM, message)


def limit(message: str, *, code: str | None = None) -> ConversionError:
    """A configured or built-in bound exceeded; ``code`` names which for clients."""
    return ConversionError(LIMIT, BAD_UPSTREAM, message, code=code)


def too_many(what: str, bound: int, code: str | None = None) -> ConversionError:
    """More than ``bound`` of ``what`` (choices, tool calls, output items...) in one answer."""
    return limit(f"upstream stream has more than {bound} {what}", code=code or "too_many_" + what.replace(" ", "_"))


def upstream_reported(status: int, excerpt: str, upstream: dict[str, Any]) -> ConversionError:
    """An error the upstream reported in its stream: answered with its own ``status`` and error
    object (``upstream``, as the API's error body carries it); ``excerpt`` is its message, cut short."""
    return ConversionError(
        UPSTREAM_ERROR, status, f"upstream reported an error in the stream: {excerpt}", upstream_error=upstream
    )
