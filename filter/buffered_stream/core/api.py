"""One API, as the converter and the adapter see it: a subclass of ``Api``.

Everything that differs between APIs (chat completions, legacy completions, the Responses API,
Anthropic Messages) is a member here, so a new API is one package implementing ``Api`` plus one
line in ``buffered_stream.apis``, and neither the converter nor the adapter change. Each API
package reads alike: ``<Name>Api(Api[<Name>Profile])`` with the members below, in this order.

Profiles are typed: ``profiles`` maps a backend name to this API's profile of it, and ``auto`` is
the profile that detects the backend from the stream (its ``detect`` is true). A route's profile
name that this API has no profile of also means ``auto``, so one route setting serves every API.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import orjson

from .assembler import Assembler
from .errors import BAD_UPSTREAM, UPSTREAM_ERROR, ConversionError
from .request import Rewrite, Skip, fits

AUTO = "auto"


class Profile(Protocol):
    """What the core reads of any API's profile: its name and whether it detects the backend."""

    @property
    def name(self) -> str: ...

    @property
    def detect(self) -> bool: ...


ProfileT = TypeVar("ProfileT", bound=Profile)


class Api(ABC, Generic[ProfileT]):
    """What the core and the adapter need to know about one API.

    Subclasses set the class attributes and implement the abstract methods; the hooks the
    converter calls per chunk (``upstream_error``, ``is_end_payload``) should be a key lookup or two.
    """

    # The API's name in settings, metrics and logs.
    name: ClassVar[str]
    # Request paths served, exactly (query string and trailing slash removed); a path also matches
    # under a mount prefix (``/openai`` + ``/v1/chat/completions``): see ``buffered_stream.apis``.
    paths: ClassVar[tuple[str, ...]]
    # Backend name -> this API's profile of it (never ``auto``: that is ``auto`` below).
    profiles: Mapping[str, ProfileT]
    # The profile that detects the backend from the stream.
    auto: ProfileT
    # Route profile names whose server honours a per-request ``stream_interval`` on this API; for
    # them ``plan_request`` also gets ``stream_interval=N`` (tokens per upstream chunk).
    stream_interval_profiles: ClassVar[frozenset[str]] = frozenset()

    # -- what each API implements ---------------------------------------------------------------

    @abstractmethod
    def plan_request(self, body: bytes, models: tuple[str, ...], stream_interval: int = 0) -> Rewrite | Skip:
        """The client's request body and the route's model globs -> the body to send upstream
        instead (with the hints its answer needs), or why not."""

    @abstractmethod
    def new_assembler(self, profile: ProfileT, hints: Mapping[str, Any] | None) -> Assembler:
        """A fresh assembler shaped like ``profile``'s native answers; ``hints`` are the plan's
        (request values only the answer's details depend on), or None."""

    @abstractmethod
    def upstream_error(self, chunk: dict[str, Any]) -> ConversionError | None:
        """A parsed chunk that reports an error instead of data -> that error; None for a data
        chunk. Called for every parsed chunk."""

    @abstractmethod
    def error_body(self, error: ConversionError) -> bytes:
        """The error answer's body, in this API's own shape."""

    @abstractmethod
    def usage_tokens(self, usage: Mapping[str, Any]) -> Mapping[str, Any]:
        """The answer's usage -> ``{"input_tokens", "output_tokens", "total_tokens"}`` (values as
        sent: callers keep the integers)."""

    # -- defaults an API may override -----------------------------------------------------------

    def error_event(self, payload: bytes) -> ConversionError:
        """The payload of an ``event: error`` (or ``error:`` line) -> the error to answer with.

        Fatal whatever it holds: the API's own reading of it when it parses as one of its error
        chunks, else a plain upstream error (never quoting the payload)."""
        try:
            parsed = orjson.loads(payload)
        except orjson.JSONDecodeError:
            parsed = None
        error = self.upstream_error(parsed) if isinstance(parsed, dict) else None
        return error or ConversionError(UPSTREAM_ERROR, BAD_UPSTREAM, "upstream sent an error event")

    def is_end_payload(self, payload: bytes) -> bool:
        """A payload that is not JSON and ends the stream (``[DONE]``); asked of no other payload.
        None by default: the stream ends with a typed event (the assembler's ``finished``)."""
        return False

    def answer_complete(self, answer: Mapping[str, Any]) -> bool:
        """After the end payload, may an answer whose assembler is not ``finished`` still be sent?
        (The OpenAI family: yes when it has choices.) Never by default."""
        return False

    # -- the same for every API -----------------------------------------------------------------

    def profile(self, name: str) -> ProfileT:
        """This API's profile of a route's profile name: ``auto`` for ``auto`` and for a backend
        this API has no profile of."""
        return self.profiles.get(name, self.auto)

    def plan(
        self,
        body: bytes,
        models: tuple[str, ...] = (),
        max_request_bytes: int | None = None,
        *,
        profile: str = AUTO,
        stream_interval: int = 0,
    ) -> Rewrite | Skip:
        """``plan_request``, but a rewrite whose body would exceed ``max_request_bytes`` (the route's
        request limit: Envoy's request buffer) is ``Skip("request_too_large")``: the request goes
        upstream untouched instead of growing into a 413. None: no limit. ``stream_interval`` (the
        route's tokens per upstream chunk, 0: off) is written only where ``profile`` is one of this
        API's ``stream_interval_profiles``: a server that does not honour it never sees it."""
        if stream_interval and profile in self.stream_interval_profiles:
            return fits(self.plan_request(body, models, stream_interval=stream_interval), max_request_bytes)
        return fits(self.plan_request(body, models), max_request_bytes)

    def assembler(self, profile: str = AUTO, hints: Mapping[str, Any] | None = None) -> Assembler:
        """A fresh assembler for a route's profile name."""
        return self.new_assembler(self.profile(profile), hints)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
