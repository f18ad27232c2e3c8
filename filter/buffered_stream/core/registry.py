"""The API schemas the core can assemble, by name.

A schema is just a factory of its assembler; Anthropic Messages or the Responses API become one
more entry here, with their own module, without touching the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from .assembler import Assembler
from ..schemas.chat import ChatAssembler
from ..schemas.completions import CompletionsAssembler
from ..schemas.profiles import Profile, get_profile


def _chat(profile: Profile | None, request: Mapping[str, Any] | None) -> Assembler:
    return ChatAssembler(profile, request)


def _completions(profile: Profile | None, request: Mapping[str, Any] | None) -> Assembler:
    return CompletionsAssembler(profile)


SCHEMAS: Mapping[str, Callable[[Profile | None, Mapping[str, Any] | None], Assembler]] = MappingProxyType(
    {"chat": _chat, "completions": _completions}
)


def make_assembler(schema: str, profile: str = "auto", request: Mapping[str, Any] | None = None) -> Assembler:
    """A fresh assembler for ``schema`` shaped like ``profile``'s native answers.

    ``request`` (the client's request body, optional) lets the answer follow choices only the
    request reveals, such as vLLM's ``content: ""`` beside calls forced by ``tool_choice``.
    """
    try:
        factory = SCHEMAS[schema]
    except KeyError:
        raise ValueError(f"unknown schema {schema!r}; valid schemas: {', '.join(SCHEMAS)}") from None
    return factory(get_profile(profile), request)
