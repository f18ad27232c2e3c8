"""The conformance corpora and the one harness every corpus test replays them with.

``tests/corpus/<api>/`` holds one API's cases, the folder named as ``buffered_stream.apis.SCHEMAS``
names the API (``chat``, ``completions``, ``responses``, ``messages``). A case is three files:
``NAME.sse`` (the body the server streams), ``NAME.meta.json`` (what the case is and where it comes
from, its profile and request, and either the error to expect or the values a comparison must skip)
and ``NAME.json`` (the server's own ``stream: false`` answer; an error case has none).

``check`` runs a case through the real pipeline (``StreamConverter`` with the API's spec) in every
chunk list a chunking gives and compares each outcome with the native answer, or the expected error,
by its API's ``Rules``. The chunkings (``whole``, ``every_split``, ``byte_by_byte``) and the one-list
splits (``events``, ``at_event_ends``, ``fixed_size``, ``cut_at``) serve every test that feeds a body
in pieces. A new API's corpus is one more folder, its name in ``APIS`` and its ``Rules`` in ``RULES``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from buffered_stream.apis import api_named
from buffered_stream.core.convert import StreamConverter
from buffered_stream.core.errors import ConversionError

TESTS = Path(__file__).resolve().parents[1]
CORPUS = TESTS / "corpus"
APIS = ("chat", "completions", "responses", "messages")


# --------------------------------------------------------------------------- finding and loading


def folder(api: str) -> Path:
    if api not in APIS:
        raise ValueError(f"no corpus for {api!r}; corpora: {', '.join(APIS)}")
    return CORPUS / api


def case_names(api: str) -> list[str]:
    return sorted(path.name[: -len(".meta.json")] for path in folder(api).glob("*.meta.json"))


@dataclass(frozen=True)
class Case:
    api: str
    name: str
    meta: dict[str, Any]
    body: bytes  # the stream
    native: dict[str, Any] | None  # the server's own answer; None for an error case

    @property
    def id(self) -> str:
        return f"{self.api}/{self.name}"

    @property
    def profile(self) -> str:
        return str(self.meta["profile"])

    @property
    def error(self) -> dict[str, Any] | None:
        """The error to expect (``status``, ``kind``, optionally the upstream ``code`` or the error
        answer's ``body``), or None."""
        return self.meta.get("error")


def load(api: str, name: str) -> Case:
    directory = folder(api)
    meta = orjson.loads((directory / f"{name}.meta.json").read_bytes())
    assert meta.get("schema", api) == api, f"{api}/{name} says schema {meta['schema']!r}"
    native_path = directory / f"{name}.json"
    native = orjson.loads(native_path.read_bytes()) if native_path.exists() else None
    return Case(api, name, meta, (directory / f"{name}.sse").read_bytes(), native)


def cases(*apis: str, where: Callable[[Case], bool] | None = None) -> list[Case]:
    """Every case of ``apis``, in that order, each API's by name; ``where``: only those it accepts."""
    found = [load(api, name) for api in apis for name in case_names(api)]
    return [case for case in found if where is None or where(case)]


def each_case(*apis: str, where: Callable[[Case], bool] | None = None) -> pytest.MarkDecorator:
    """Parametrizes a test's ``case`` over ``cases(*apis, where=where)``, ids ``api/name``."""
    chosen = cases(*apis, where=where)
    return pytest.mark.parametrize("case", chosen, ids=[case.id for case in chosen])


def answering(case: Case) -> bool:
    return case.error is None


# --------------------------------------------------------------------------- chunkings

Chunking = Callable[[bytes], Iterable[list[bytes]]]  # a body -> the chunk lists to feed it as


def whole(body: bytes) -> list[list[bytes]]:
    return [[body]]


def every_split(body: bytes) -> list[list[bytes]]:
    """The body cut in two at every byte: chunk boundaries must never change the answer."""
    return [[body[:cut], body[cut:]] for cut in range(len(body) + 1)]


def byte_by_byte(body: bytes) -> list[list[bytes]]:
    return [[body[i : i + 1] for i in range(len(body))]]


def every_chunking(body: bytes) -> list[list[bytes]]:
    """Whole, every two-piece split and byte by byte: every chunking a corpus case is checked in."""
    return [*whole(body), *every_split(body), *byte_by_byte(body)]


CHUNKINGS: dict[str, Chunking] = {"whole": whole, "every-split": every_split, "byte-by-byte": byte_by_byte}
each_chunking = pytest.mark.parametrize("chunking", list(CHUNKINGS.values()), ids=list(CHUNKINGS))

# One chunk list for a body.


def events(body: bytes) -> list[bytes]:
    """One event per chunk, each with its blank line; blank events are dropped (no body given here
    uses CR line ends)."""
    return [event + b"\n\n" for event in body.split(b"\n\n") if event.strip()]


def at_event_ends(body: bytes) -> list[bytes]:
    """The body cut after every blank line: one event per chunk, every byte kept."""
    return re.split(rb"(?<=\n\n)", body)


def fixed_size(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


Text = TypeVar("Text", str, bytes)


def cut_at(text: Text, cuts: Sequence[int]) -> list[Text]:
    """``text`` cut at the sorted offsets ``cuts`` (repeats give empty pieces)."""
    return [text[start:end] for start, end in zip([0, *cuts], [*cuts, len(text)])]


# --------------------------------------------------------------------------- comparison rules

# Tool call ids drawn per request: OpenAI-style servers (call_ + 24 hex), llama.cpp (32 alphanumerics).
GENERATED_TOOL_CALL_ID = re.compile(r"call_[0-9a-f]{24}|[A-Za-z0-9]{32}")
IGNORED = "<ignored>"
RANDOM = "RANDOM"


def without_ignored_keys(meta: Mapping[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """Chat and completions: the top-level keys in ``ignore`` removed (present or not), and the
    dotted ``generated`` paths, which must hold a generated tool call id, set to one mark."""
    answer = orjson.loads(orjson.dumps(answer))
    for key in meta.get("ignore", ()):
        answer.pop(key, None)
    for path in meta.get("generated", ()):
        *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
        holder = answer
        for part in parents:
            holder = holder[part]
        if holder.get(last) != "GENERATED":
            assert GENERATED_TOOL_CALL_ID.fullmatch(holder[last]), path
            holder[last] = "GENERATED"
    return answer


def with_ignored_paths_blanked(meta: Mapping[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """Responses: the values at the dotted ``ignore`` paths (``*``: every list element) blanked
    where they are; their keys stay, so a missing or extra key still fails."""
    answer = copy.deepcopy(answer)
    for path in meta.get("ignore", ()):
        _blank(answer, path.split("."))
    return answer


def _blank(holder: Any, parts: list[str]) -> None:
    head, rest = parts[0], parts[1:]
    if head == "*":
        for child in holder if isinstance(holder, list) else ():
            _blank(child, rest)
    elif isinstance(holder, dict) and head in holder:
        if rest:
            _blank(holder[head], rest)
        else:
            holder[head] = IGNORED


def with_random_paths_marked(meta: Mapping[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """Messages: the values at the dotted ``ignore`` paths (numbers index lists) replaced by one
    mark; each path must be there."""
    answer = orjson.loads(orjson.dumps(answer))
    for path in meta.get("ignore", ()):
        *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
        holder = answer
        for part in parents:
            holder = holder[part]
        assert last in holder, path
        holder[last] = RANDOM
    return answer


def the_request(case: Case) -> Mapping[str, Any] | None:
    """The client's request body as the case records it (the chat family's assemblers read it)."""
    return case.meta.get("request")


def the_plan_hints(case: Case) -> Mapping[str, Any]:
    """The hints the API's request plan takes from the case's request ({} without one)."""
    request = case.meta.get("request")
    if request is None:
        return {}
    plan = api_named(case.api).plan_request(orjson.dumps(request), ())
    hints = getattr(plan, "hints", None)
    assert hints is not None, plan  # a Rewrite, not a Skip
    return hints


def no_request(case: Case) -> None:
    return None


@dataclass(frozen=True)
class Rules:
    """How one API's corpus is compared with its native answers."""

    # (meta, answer) -> the answer as compared; applied to the assembled and the native one alike.
    comparable: Callable[[Mapping[str, Any], dict[str, Any]], dict[str, Any]]
    # What the converter is given as ``request``.
    request: Callable[[Case], Mapping[str, Any] | None]
    # Also the same key order (the same bytes once serialised), not only the same keys and values.
    key_order: bool = False


RULES: dict[str, Rules] = {
    "chat": Rules(without_ignored_keys, the_request),
    "completions": Rules(without_ignored_keys, the_request),
    "responses": Rules(with_ignored_paths_blanked, the_plan_hints),
    "messages": Rules(with_random_paths_marked, no_request, key_order=True),
}


# --------------------------------------------------------------------------- running and checking


def convert(case: Case, pieces: Iterable[bytes], profile: str | None = None) -> dict[str, Any]:
    """The pipeline's answer to the case's stream fed in ``pieces`` (``profile``: other than the
    case's), or the ``ConversionError`` it raises."""
    converter = StreamConverter(
        api_named(case.api), case.profile if profile is None else profile, hints=RULES[case.api].request(case)
    )
    for piece in pieces:
        converter.feed(piece)
    return orjson.loads(converter.finish())


def comparable(case: Case, answer: dict[str, Any]) -> dict[str, Any]:
    return RULES[case.api].comparable(case.meta, answer)


def check_error(case: Case, error: ConversionError) -> None:
    expected = case.error
    assert expected is not None
    assert (error.status, error.kind) == (expected["status"], expected["kind"])
    if "code" in expected:
        assert error.upstream_error is not None and error.upstream_error["code"] == expected["code"]
    if "body" in expected:
        assert orjson.loads(api_named(case.api).error_body(error)) == expected["body"]


def check(case: Case, chunking: Chunking) -> None:
    """Every chunk list of ``chunking`` gives the native answer (by the API's rules) or the
    expected error."""
    rules = RULES[case.api]
    for pieces in chunking(case.body):
        if case.error is not None:
            with pytest.raises(ConversionError) as caught:
                convert(case, pieces)
            check_error(case, caught.value)
        else:
            assert case.native is not None
            answer, native = (
                rules.comparable(case.meta, convert(case, pieces)),
                rules.comparable(case.meta, case.native),
            )
            assert answer == native
            if rules.key_order:
                assert orjson.dumps(answer) == orjson.dumps(native), "same keys, different key order"
