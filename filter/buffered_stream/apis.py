"""The APIs the service converts, by name and by request path: the wiring above ``core`` and
``schemas`` (core never imports this module; ``tests/test_layers.py`` keeps it so).

Adding an API is one more line in ``APIS`` (its package's ``API``, an ``core.api.Api``); the
adapter and the settings find it here. A route's ``profile`` names a backend: ``PROFILE_NAMES`` is
every name some API knows, and an API with no profile of that backend auto-detects (``Api.profile``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .core.api import AUTO, Api
from .core.assembler import Assembler
from .core.request import Rewrite, Skip
from .schemas import chat, completions, messages, responses

APIS: tuple[Api[Any], ...] = (
    chat.API,
    completions.API,
    responses.API,
    messages.API,
)

CHAT = "chat"
COMPLETIONS = "completions"
SCHEMAS: Mapping[str, Api[Any]] = MappingProxyType({spec.name: spec for spec in APIS})
PROFILE_NAMES: tuple[str, ...] = (AUTO, *dict.fromkeys(name for spec in APIS for name in spec.profiles))
# Profiles for which some API sends the route's ``upstream_stream_interval`` (``Api.plan``).
STREAM_INTERVAL_PROFILES: tuple[str, ...] = tuple(
    name for name in PROFILE_NAMES if any(name in spec.stream_interval_profiles for spec in APIS)
)


class PathIndex:
    """Request path -> the API that serves it.

    The query string and a trailing slash are removed; then the path must be one of an API's
    ``paths`` exactly, or one under a mount prefix (``/openai/v1/chat/completions``): its last
    segments equal a spec path, the longest match winning (``/v1/chat/completions`` is chat, not
    ``/completions``). So ``/v1/messages/count_tokens`` never matches ``/v1/messages``, and
    ``/v1/completionsx`` matches nothing.
    """

    __slots__ = ("_by_path", "_max_segments")

    def __init__(self, specs: tuple[Api[Any], ...]) -> None:
        self._by_path = {path: spec for spec in specs for path in spec.paths}
        if len(self._by_path) != sum(len(spec.paths) for spec in specs):
            raise ValueError("two APIs claim the same path")
        if any(not path.startswith("/") or path.endswith("/") for path in self._by_path):
            raise ValueError("an API path must start with '/' and not end with one")
        self._max_segments = max(path.count("/") for path in self._by_path)

    def find(self, path: str) -> Api[Any] | None:
        path = path.split("?", 1)[0].rstrip("/")
        by_path = self._by_path
        spec = by_path.get(path)
        if spec is not None:
            return spec
        tails = []  # the path's last 1, 2, ... segments, up to the longest API path
        start = len(path)
        for _ in range(self._max_segments):
            start = path.rfind("/", 0, start)
            if start <= 0:
                break
            tails.append(path[start:])
        for tail in reversed(tails):
            spec = by_path.get(tail)
            if spec is not None:
                return spec
        return None


_PATHS = PathIndex(APIS)


def api_named(schema: str) -> Api[Any]:
    try:
        return SCHEMAS[schema]
    except KeyError:
        raise ValueError(f"unknown schema {schema!r}; valid schemas: {', '.join(SCHEMAS)}") from None


def api_for_path(path: str) -> Api[Any] | None:
    """The API a request path is for, or None (see ``PathIndex``)."""
    return _PATHS.find(path)


def schema_for_path(path: str) -> str | None:
    """The name of the API a request path is for (see ``api_for_path``), or None."""
    spec = api_for_path(path)
    return spec.name if spec is not None else None


def plan_request(
    schema: str,
    body: bytes,
    models: tuple[str, ...] = (),
    max_request_bytes: int | None = None,
    *,
    profile: str = AUTO,
    stream_interval: int = 0,
) -> Rewrite | Skip:
    """``schema``'s plan for a request body (see ``Api.plan``; None: no size limit)."""
    return api_named(schema).plan(body, models, max_request_bytes, profile=profile, stream_interval=stream_interval)


def get_profile(name: str, schema: str = CHAT) -> Any:
    """``schema``'s profile of a route profile name (its ``auto`` for ``auto`` and for a backend
    it has no profile of); ValueError for a name no API knows."""
    if name not in PROFILE_NAMES:
        raise ValueError(f"unknown profile {name!r}; valid profiles: {', '.join(PROFILE_NAMES)}")
    return api_named(schema).profile(name)


def make_assembler(schema: str, profile: str = AUTO, hints: Mapping[str, Any] | None = None) -> Assembler:
    """A fresh assembler for ``schema`` shaped like ``profile``'s native answers.

    ``hints`` (the plan's, or the client's request body) let the answer follow choices only the
    request reveals, such as vLLM's ``content: ""`` beside calls forced by ``tool_choice``.
    """
    get_profile(profile, schema)
    return api_named(schema).assembler(profile, hints)
