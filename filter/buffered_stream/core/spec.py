"""One API, as the pipeline and the adapter see it: a ``SchemaSpec``.

Everything that differs between APIs (chat completions, legacy completions, the Responses API,
Anthropic Messages) is a field here, so a new API is one module plus one entry in
``buffered_stream.apis``, and neither the converter nor the adapter change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import orjson

from .assembler import Assembler
from .errors import BAD_UPSTREAM, UPSTREAM_ERROR, ConversionError
from .request import Rewrite, Skip, fits

AUTO = "auto"


def never_an_end_payload(payload: bytes) -> bool:
    """For APIs whose stream ends with a typed event (their assembler's ``finished`` says so)."""
    return False


def only_when_finished(answer: Mapping[str, Any]) -> bool:
    """For APIs whose answer is complete only once the assembler saw the stream's terminal event."""
    return False


@dataclass(frozen=True, slots=True)
class SchemaSpec:
    """What the core and the adapter need to know about one API."""

    name: str
    # Request paths served, exactly (query string and trailing slash removed); a path also matches
    # under a mount prefix (``/openai`` + ``/v1/chat/completions``): see ``buffered_stream.apis.spec_for_path``.
    paths: tuple[str, ...]
    # Request body and the route's model globs -> the body to send upstream instead, or why not.
    plan_request: Callable[..., Rewrite | Skip]  # (body, models, *, stream_interval=0)
    # (this API's profile object or None for auto-detection, the Rewrite's hints) -> a fresh assembler.
    make_assembler: Callable[[Any, Mapping[str, Any] | None], Assembler]
    # Backend name -> this API's profile object.
    profiles: Mapping[str, Any]
    # A parsed chunk that reports an error instead of data -> that error; None for a data chunk.
    # Called for every parsed chunk: keep it to a key lookup or two.
    upstream_error: Callable[[dict[str, Any]], ConversionError | None]
    # The payload of an ``event: error`` (or ``error:`` line) -> the error to answer with.
    error_event: Callable[[bytes], ConversionError]
    # The error answer's body, in this API's own shape.
    error_body: Callable[[ConversionError], bytes]
    # The answer's usage -> {"input_tokens", "output_tokens", "total_tokens"} (non-int values dropped by callers).
    usage_tokens: Callable[[Mapping[str, Any]], Mapping[str, Any]]
    # A payload that is not JSON and ends the stream (``[DONE]``); asked of no other payload.
    is_end_payload: Callable[[bytes], bool] = never_an_end_payload
    # After the end payload, may an answer whose assembler is not ``finished`` still be sent? (The
    # OpenAI family: yes when it has choices; APIs with a terminal event: never.)
    answer_complete: Callable[[Mapping[str, Any]], bool] = only_when_finished
    # Route profile names whose server honours a per-request ``stream_interval`` on this API; for
    # them ``plan_request`` also takes ``stream_interval=N`` (tokens per upstream chunk).
    stream_interval_profiles: frozenset[str] = frozenset()

    def profile(self, name: str) -> Any | None:
        """This API's profile of a route's profile name; None (auto-detect) for ``auto`` and for a
        backend this API has no profile of, so one route setting serves every API."""
        return None if name == AUTO else self.profiles.get(name)

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
        return self.make_assembler(self.profile(profile), hints)

    @classmethod
    def from_module(
        cls, name: str, module: ModuleType, make_assembler: Callable[..., Assembler] | None = None
    ) -> SchemaSpec:
        """The spec of an API module exposing ``PATHS``, ``PROFILES``, ``plan_request``,
        ``upstream_error``, ``error_body``, ``usage_tokens`` and optionally ``make_assembler`` (or
        pass it: a class taking ``(profile, hints)`` fits), ``error_event`` (default: the parsed
        payload through ``upstream_error``), ``is_end_payload`` (default: none) and
        ``answer_complete`` (default: only a ``finished`` assembler's answer) and
        ``STREAM_INTERVAL_PROFILES`` (default: none)."""
        upstream_error = module.upstream_error
        return cls(
            name=name,
            paths=tuple(module.PATHS),
            plan_request=module.plan_request,
            make_assembler=make_assembler or module.make_assembler,
            profiles=module.PROFILES,
            upstream_error=upstream_error,
            error_event=getattr(module, "error_event", None) or _error_event_via(upstream_error),
            error_body=module.error_body,
            usage_tokens=module.usage_tokens,
            is_end_payload=getattr(module, "is_end_payload", never_an_end_payload),
            answer_complete=getattr(module, "answer_complete", only_when_finished),
            stream_interval_profiles=frozenset(getattr(module, "STREAM_INTERVAL_PROFILES", ())),
        )


def _error_event_via(
    upstream_error: Callable[[dict[str, Any]], ConversionError | None],
) -> Callable[[bytes], ConversionError]:
    """An ``event: error`` is fatal whatever it holds: the API's own reading of it when it parses
    as one of its error chunks, else a plain upstream error (never quoting the payload)."""

    def error_event(payload: bytes) -> ConversionError:
        try:
            parsed = orjson.loads(payload)
        except orjson.JSONDecodeError:
            parsed = None
        error = upstream_error(parsed) if isinstance(parsed, dict) else None
        return error or ConversionError(UPSTREAM_ERROR, BAD_UPSTREAM, "upstream sent an error event")

    return error_event
