"""Replays a Responses API stream through the real pipeline (``StreamConverter`` with the Responses
spec), for the Responses tests and bench."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from buffered_stream.core.convert import StreamConverter
from buffered_stream.core.request import Rewrite
from buffered_stream.schemas.responses.request import NAME, plan_request

from .apis import api_of


def hints_of(request: dict[str, Any] | None) -> dict[str, Any]:
    if request is None:
        return {}
    plan = plan_request(orjson.dumps(request), ())
    assert isinstance(plan, Rewrite), plan
    return plan.hints


def replay(pieces: Iterable[bytes], profile: str = "auto", request: dict[str, Any] | None = None) -> dict[str, Any]:
    """The answer for a body fed in ``pieces``, or the ``ConversionError`` the pipeline raises."""
    converter = StreamConverter(api_of(NAME), profile, hints=hints_of(request))
    for piece in pieces:
        converter.feed(piece)
    return orjson.loads(converter.finish())
