"""The Messages request rewrite: a ``stream`` false/absent request becomes a streamed one."""

from __future__ import annotations

from ...core.request import Rewrite, Skip, load_non_stream_request, model_of, stream_body

NAME = "messages"  # the API's name (``MessagesApi.name``), which its rewrites carry


def plan_request(body: bytes, models: tuple[str, ...] = ()) -> Rewrite | Skip:
    """Convert a ``stream`` false/absent request: the body gets ``"stream": true`` and nothing else.

    Anthropic has no ``stream_options``: usage always streams. ``models`` is an allow-list of glob
    patterns for the request's ``model`` (empty: every model). The answer needs nothing from the
    request, so ``hints`` is empty.
    """
    request = load_non_stream_request(body, models)
    if isinstance(request, Skip):
        return request
    rewritten = stream_body(body, parsed=request)  # the client's bytes with only ``stream`` edited
    if isinstance(rewritten, Skip):
        return rewritten
    return Rewrite(body=rewritten, schema=NAME, model=model_of(request), hints={})
