"""The request side of the conversion: is this request ours, and what do we send upstream instead.

Pure functions over bytes. A request is converted only when we are sure the stream carries
everything the non-stream answer would: anything else is sent upstream untouched and the backend
decides, so the service can never make a request fail that would have worked without it. Each API
plans its own rewrite (``Api.plan_request``); the checks every API shares are here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import orjson

from .json_edit import JsonEditError, edit_object, scan_object, set_member


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
# The rewritten body would not fit the route's request limit (``max_request_bytes``, the Envoy
# request buffer): sent untouched, so the rewrite never turns a request that fits into a 413.
REQUEST_TOO_LARGE = Skip("request_too_large")


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


def stream_body(
    body: bytes,
    stream_options: Callable[[bytes | None], bytes] | None = None,
    members: Mapping[str, bytes] | None = None,
    parsed: Mapping[str, Any] | None = None,
) -> bytes | Skip:
    """The client's body byte for byte, but with one top-level ``"stream": true`` (in place of the
    first ``stream`` member's value, else appended; every other ``stream`` member removed) and, when
    ``stream_options`` is given, likewise one ``stream_options`` member whose value is
    ``stream_options(raw value of the client's last one, or None)``; likewise one member per entry
    of ``members`` (raw JSON values, such as ``stream_interval``). Nested keys are not touched, and
    the body is scanned once whatever is edited.

    Asked only of a body that parsed as an object, so the scan cannot fail; if it did, the request
    is left alone (``NOT_JSON``) rather than failed. ``parsed`` (that object) allows a small body's
    common shapes to be edited without the scan (``_edited_in_place``).
    """
    if parsed is not None and len(body) <= _IN_PLACE_MAX_BYTES:
        edited = _edited_in_place(body, parsed, stream_options is not None, members)
        if edited is not None:
            return edited
    try:
        layout = scan_object(body)
        changes = {"stream": b"true"}
        if stream_options is not None:
            found = layout.find("stream_options")
            changes["stream_options"] = stream_options(
                body[found[-1].value_start : found[-1].value_end] if found else None
            )
        if members:
            changes.update(members)
        return edit_object(body, changes, layout)
    except JsonEditError:
        return NOT_JSON


# Bodies up to this size may take ``_edited_in_place``: its proof is one more parse of the body.
_IN_PLACE_MAX_BYTES = 64 << 10
_STREAM_KEY = re.compile(rb'"stream"[ \t\n\r]*+:[ \t\n\r]*+(?:true|false|null)')
_RAW = {True: b"true", False: b"false", None: b"null"}
_WHITESPACE = b" \t\n\r"


def _edited_in_place(
    body: bytes, parsed: Mapping[str, Any], stream_options: bool, members: Mapping[str, bytes] | None
) -> bytes | None:
    """The common request (``stream`` absent or a literal, no ``stream_options`` or ``members`` key
    of its own) edited without scanning its members: the literal replaced where the one raw
    ``"stream":`` is, the other members written before the closing brace. It is proved, not
    assumed: the edited body must parse to the client's object with exactly those members changed
    (a ``"stream"`` elsewhere, an escaped spelling or a duplicate fail the proof). None: use the scan."""
    added = [(b"stream_options", b'{"include_usage":true}')] if stream_options else []
    added += [(key.encode(), value) for key, value in (members or {}).items()]
    # Without a \u escape a key can be spelled only one way, so where the parsed object lacks a key
    # the body has no such top-level member at all, and where it has ``stream``, one ``"stream"`` in
    # the whole body is that member (the proof below cannot see duplicates: orjson keeps the last).
    if b"\\u" in body or any(key.decode() in parsed for key, _ in added):
        return None
    head, tail = body, b""
    if "stream" in parsed:
        found = list(_STREAM_KEY.finditer(body))
        if len(found) != 1 or body.count(b'"stream"') != 1:
            return None
        literal = found[0]
        if not body[literal.start() : literal.end()].endswith(_RAW.get(parsed["stream"], b"?")):
            return None
        value_start = literal.end() - len(_RAW[parsed["stream"]])
        head, tail = body[:value_start] + b"true", body[literal.end() :]
    else:
        added.insert(0, (b"stream", b"true"))
    edited = head + tail
    if added:
        close = edited.rstrip(_WHITESPACE)
        if not close.endswith(b"}"):
            return None
        # After the last member's value (as the scan writes it), or inside the braces of an empty object.
        at = len(close[:-1].rstrip(_WHITESPACE)) if parsed else len(close) - 1
        extra = b",".join(b'"%s":%s' % pair for pair in added)
        edited = edited[:at] + (b"," if parsed else b"") + extra + edited[at:]
    expected = dict(parsed)
    expected["stream"] = True
    for key, value in added:
        expected[key.decode()] = orjson.loads(value)
    try:
        if orjson.loads(edited) != expected:
            return None
    except orjson.JSONDecodeError:
        return None
    return edited


def with_include_usage(options: bytes | None) -> bytes:
    """The client's ``stream_options`` object with ``"include_usage": true`` (its other bytes kept);
    ``{"include_usage":true}`` when it sent none or something other than an object."""
    if options is not None and options[:1] == b"{":
        return set_member(options, "include_usage", b"true")
    return b'{"include_usage":true}'


def fits(plan: Rewrite | Skip, max_request_bytes: int | None) -> Rewrite | Skip:
    """``plan``, or ``REQUEST_TOO_LARGE`` for a rewrite whose body exceeds ``max_request_bytes``."""
    if isinstance(plan, Rewrite) and max_request_bytes is not None and len(plan.body) > max_request_bytes:
        return REQUEST_TOO_LARGE
    return plan
