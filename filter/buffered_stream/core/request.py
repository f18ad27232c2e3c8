"""The request side of the conversion: is this request ours, and what do we send upstream instead.

Pure functions over bytes. A request is converted only when we are sure the stream carries
everything the non-stream answer would: anything else is sent upstream untouched and the backend
decides, so the service can never make a request fail that would have worked without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import orjson

CHAT = "chat"
COMPLETIONS = "completions"

# Request keys the assembly needs to reproduce the native answer exactly (kept, small, per request).
_ANSWER_HINT_KEYS = ("tool_choice",)
# Request keys whose answer a stream cannot carry (vLLM / SGLang extensions, OpenAI best_of).
_UNSTREAMABLE_KEYS = ("prompt_logprobs", "return_prompt_token_ids", "return_meta_info", "use_beam_search")


def schema_for_path(path: str) -> str | None:
    """The API schema of an OpenAI-compatible endpoint path (query string ignored), or None."""
    path = path.split("?", 1)[0].rstrip("/")
    if path.endswith("/chat/completions"):
        return CHAT
    if path.endswith("/completions"):
        return COMPLETIONS
    return None


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


def plan_request(schema: str, body: bytes, models: tuple[str, ...] = ()) -> Rewrite | Skip:
    """Decide whether to convert a request body of ``schema`` and build the rewritten body.

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
    if _asks_for_unstreamable(request):
        return UNSTREAMABLE
    options = request.get("stream_options")
    request["stream"] = True
    request["stream_options"] = {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
    return Rewrite(
        body=orjson.dumps(request),
        schema=schema,
        model=model if isinstance(model, str) else None,
        hints={key: request[key] for key in _ANSWER_HINT_KEYS if key in request},
    )


def _asks_for_unstreamable(request: dict[str, Any]) -> bool:
    for key in _UNSTREAMABLE_KEYS:
        value = request.get(key)
        if value is not None and value is not False:
            return True
    best_of = request.get("best_of")
    return isinstance(best_of, int) and best_of > 1 and best_of != request.get("n", 1)
