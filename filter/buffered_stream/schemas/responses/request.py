"""The Responses API's request rewrite: ``"stream": true`` written into a request that asks for no
stream, unless it is a ``background`` one."""

from __future__ import annotations

from typing import Any

from ...core.request import Rewrite, Skip, load_non_stream_request, model_of, stream_body

NAME = "responses"  # the API's name (``ResponsesApi.name``), which its rewrites carry
BACKGROUND = Skip("background")


def plan_request(body: bytes, models: tuple[str, ...] = ()) -> Rewrite | Skip:
    """Convert a Responses request that asks for no stream; leave everything else alone.

    Only ``"stream": true`` is written (every server puts usage in the terminal object, so no
    ``stream_options``). ``background: true`` is a queued response polled later: not ours. The
    hints carry the request's ``tools`` when one nests tools (Ollama's non-stream answer echoes
    them, its stream does not).
    """
    request = load_non_stream_request(body, models)
    if isinstance(request, Skip):
        return request
    background = request.get("background")
    if background is not None and background is not False:
        return BACKGROUND
    rewritten = stream_body(body, parsed=request)  # the client's bytes with only ``stream`` edited
    if isinstance(rewritten, Skip):
        return rewritten
    tools = request.get("tools")
    hints: dict[str, Any] = {}
    if isinstance(tools, list) and any(isinstance(tool, dict) and "tools" in tool for tool in tools):
        hints["tools"] = tools
    return Rewrite(
        body=rewritten,
        schema=NAME,
        model=model_of(request),
        hints=hints,
    )
