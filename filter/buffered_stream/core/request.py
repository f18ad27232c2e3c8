"""The request side of the conversion: is this request ours, and what do we send upstream instead.

Pure functions over bytes. A request is converted only when we are sure the stream carries
everything the non-stream answer would: anything else is sent upstream untouched and the backend
decides, so the service can never make a request fail that would have worked without it. Each API
plans its own rewrite (``SchemaSpec.plan_request``); the checks every API shares are here.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Rewrite:
    """Send ``body`` upstream instead; the answer is assembled with ``schema``'s rules."""

    body: bytes
    schema: str
    model: str | None
    hints: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Skip:
    """Leave the request alone; ``reason`` is a short metric-friendly word."""

    reason: str


NOT_JSON = Skip("not_json")
NOT_OBJECT = Skip("not_object")
STREAM_REQUESTED = Skip("stream_requested")
MODEL_NOT_ENABLED = Skip("model_not_enabled")
UNSTREAMABLE = Skip("unstreamable")


def load_non_stream_request(body: bytes, models: tuple[str, ...]) -> dict[str, Any] | Skip:
    """The parsed request when it is a JSON object asking for no stream (``stream`` absent, false
    or null) of an enabled model, else why not.

    ``models`` is an allow-list of glob patterns matched against the request's ``model``;
    empty means every model.
    """
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return NOT_JSON
    if not isinstance(request, dict):
        return NOT_OBJECT
    stream = request.get("stream")
    if stream is not None and stream is not False:
        return STREAM_REQUESTED
    model = request.get("model")
    if models and not (isinstance(model, str) and any(fnmatchcase(model, p) for p in models)):
        return MODEL_NOT_ENABLED
    return request


def model_of(request: dict[str, Any]) -> str | None:
    model = request.get("model")
    return model if isinstance(model, str) else None
