"""Fault matrix, part 1: what a broken, hostile or oversized backend answer becomes for the client.

Real Envoy + service + scripted backend on loopback, one stack per mode for the whole module.
Every failure must reach the client as a clear OpenAI-style error (buffered mode) or as a cut-off
response (streamed mode, where the 200 is already committed): never as raw SSE, never as a partial
answer that looks complete. After each fault the service must still serve and hold no state.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

import orjson
import pytest

from buffered_stream.envoy_config import converting_routes, routes
from support.backend import Completion, Json, Sse
from support.net import http_request
from support.probes import cpu_seconds, raw_post, rss_bytes, wait_service_idle
from support.stack import Harness, Stack

pytestmark = pytest.mark.e2e

MiB = 1 << 20
MESSAGES = [{"role": "user", "content": "Say something."}]
# The "/small/" route's limits (route metadata), far below the defaults (16 MiB / 1 MiB).
SMALL_BODY_BYTES = 64 << 10
SMALL_EVENT_BYTES = 16 << 10


def add_small_route(config: dict[str, Any]) -> None:
    """A converting route at /small/v1/... with tight limits, otherwise like /v1/chat/completions."""
    small = copy.deepcopy(converting_routes(config)[0])
    small["name"] = "small"
    small["match"] = {"prefix": "/small/"}
    small["route"]["prefix_rewrite"] = "/"
    small["metadata"]["filter_metadata"]["buffered_stream"].update(
        max_body_bytes=SMALL_BODY_BYTES, max_event_bytes=SMALL_EVENT_BYTES
    )
    routes(config).insert(0, small)


@pytest.fixture(scope="module")
def stacks(module_harness: Harness) -> dict[str, Stack]:
    """One buffered and one streamed stack in front of the same backend."""
    return module_harness.stack_per_mode(customize=add_small_route)


@pytest.fixture
def buffered(stacks: dict[str, Stack]) -> Stack:
    return stacks["buffered"]


@pytest.fixture
def streamed(stacks: dict[str, Stack]) -> Stack:
    return stacks["streamed"]


def unique_model(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def chat(stack: Stack, model: str, path: str = "/v1/chat/completions", **extra: Any) -> Any:
    return http_request(f"{stack.url}{path}", "POST", {"model": model, "messages": MESSAGES, **extra})


def chunk(model: str, delta: dict[str, Any], *, index: int = 0, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }


def whole_stream(model: str, *middle: dict[str, Any] | bytes, finish: str = "stop") -> list[Any]:
    """A complete stream: role chunk, ``middle``, a finish chunk, [DONE]."""
    return [chunk(model, {"role": "assistant", "content": ""}), *middle, chunk(model, {}, finish=finish), "[DONE]"]


def assert_openai_error(result: Any, status: int) -> dict[str, Any]:
    """``result`` is a complete ``status`` reply whose body is ``{"error": {"message": ...}}``."""
    assert result.status == status, f"expected {status}, got {result.status}: {result.body[:500]!r}"
    assert result.headers["content-type"] == "application/json", result.headers
    error = result.json()["error"]
    assert isinstance(error["message"], str) and error["message"], error
    return error


def assert_cut_off_without_sse(result: Any, *secrets: str) -> None:
    """Streamed mode after the 200: a response that ends early and carries no stream bytes."""
    assert result.status == 200, result.raw[:500]
    assert not result.complete, f"a cut-off answer must not look complete: {result.raw[:500]!r}"
    assert b"data:" not in result.raw, f"raw SSE reached the client: {result.raw[:500]!r}"
    for secret in secrets:
        assert secret.encode() not in result.raw, f"partial answer {secret!r} reached the client"


def assert_still_serving(stack: Stack) -> None:
    """The next ordinary request converts, and the service holds no request any more."""
    model = unique_model("after-fault")
    stack.backend.on(Completion("still here"), model=model)
    result = chat(stack, model)
    assert result.status == 200, result.body
    assert result.json()["choices"][0]["message"]["content"] == "still here"
    wait_service_idle(stack.service)


# --- backend closes the connection mid-stream ---------------------------------------------


# Envoy sees the broken chunked body itself; a body that ends cleanly too early is the service's call.
CUT_SHORT = {
    "close": ("envoy_error", "upstream_reset_after_response_started{protocol_error}"),
    "end": ("truncated", "truncated"),
}


@pytest.mark.parametrize("then", CUT_SHORT)
def test_backend_stopping_mid_stream_gives_502_json(buffered: Stack, then: str) -> None:
    model = unique_model(f"cut-short-{then}")
    stream = whole_stream(model, chunk(model, {"content": "partial-words"}))[:2]
    buffered.backend.on(Sse(stream, then=then), model=model)
    result = chat(buffered, model)
    error = assert_openai_error(result, 502)
    assert (error["type"], error["code"]) == CUT_SHORT[then], error
    assert b"partial-words" not in result.body
    assert_still_serving(buffered)


def test_backend_closing_mid_stream_cuts_the_streamed_response_off(streamed: Stack) -> None:
    model = unique_model("close-streamed")
    # The delay lets the 200 reach the client first; the close then comes after the commit.
    stream = whole_stream(model, chunk(model, {"content": "partial-words"}))[:2]
    streamed.backend.on(Sse(stream, delay=[0.0, 0.3], then="close"), model=model)
    result = raw_post(f"{streamed.url}/v1/chat/completions", {"model": model, "messages": MESSAGES})
    assert_cut_off_without_sse(result, "partial-words")
    assert_still_serving(streamed)


# --- backend reports an error mid-stream --------------------------------------------------

ERROR_SHAPES = {
    # OpenAI-style error object in a data event
    "openai": (
        b'data: {"error": {"message": "context too long", "type": "BadRequestError", "code": 400}}\n\n',
        400,
        {"message": "context too long", "type": "BadRequestError", "code": 400},
    ),
    # vLLM's flat error object
    "vllm": (
        b'data: {"object": "error", "message": "overloaded", "type": "ServiceUnavailable", "param": null, "code": 503}\n\n',
        503,
        {"message": "overloaded", "type": "ServiceUnavailable", "param": None, "code": 503},
    ),
    # a named SSE error event, as several servers send
    "event-error": (
        b'event: error\ndata: {"error": {"message": "rate limited", "type": "rate_limit", "code": 429}}\n\n',
        429,
        {"message": "rate limited", "type": "rate_limit", "code": 429},
    ),
}


@pytest.mark.parametrize("shape", ERROR_SHAPES)
def test_error_event_mid_stream_gives_the_upstream_status_and_error(buffered: Stack, shape: str) -> None:
    event, status, upstream_error = ERROR_SHAPES[shape]
    model = unique_model(f"error-{shape}")
    stream = whole_stream(model, chunk(model, {"content": "partial-words"}))
    buffered.backend.on(Sse([*stream[:2], event], then="end"), model=model)
    result = chat(buffered, model)
    assert assert_openai_error(result, status) == upstream_error
    assert b"partial-words" not in result.body
    assert_still_serving(buffered)


# --- malformed streams --------------------------------------------------------------------

MALFORMED = {
    "truncated-json": (b'data: {"choices": [{"index": 0, "delta": {"content": "x"\n\n', "event #2 is not valid JSON"),
    "invalid-utf8": (
        b'data: {"choices": [{"index": 0, "delta": {"content": "\xff\xfe"}}]}\n\n',
        "event #2 is not valid JSON",
    ),
    "not-an-object": (b"data: [1, 2, 3]\n\n", "event #2 is JSON list, not an object"),
    "json-without-data-field": (b'{"choices": []}\n\n', "event #2 is a JSON line without a data: field"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_stream_gives_502_with_a_clear_message_and_the_service_keeps_serving(
    buffered: Stack, case: str
) -> None:
    event, wanted = MALFORMED[case]
    model = unique_model(f"malformed-{case}")
    stream = whole_stream(model)
    buffered.backend.on(Sse([stream[0], event, *stream[1:]]), model=model)
    error = assert_openai_error(chat(buffered, model), 502)
    assert wanted in error["message"], error
    assert error["type"] == "malformed", error
    buffered.service.process.assert_running()
    assert_still_serving(buffered)


def test_malformed_stream_in_streamed_mode_is_cut_off(streamed: Stack) -> None:
    model = unique_model("malformed-streamed")
    stream = whole_stream(model, chunk(model, {"content": "partial-words"}))
    event = MALFORMED["truncated-json"][0]
    streamed.backend.on(Sse([*stream[:2], event, *stream[2:]], delay=[0.0, 0.3]), model=model)
    result = raw_post(f"{streamed.url}/v1/chat/completions", {"model": model, "messages": MESSAGES})
    assert_cut_off_without_sse(result, "partial-words")
    assert_still_serving(streamed)


# --- answers over the route's limits ------------------------------------------------------


def many_tokens(count: int) -> tuple[str, ...]:
    return tuple(f" token{i}" for i in range(count))


@pytest.mark.parametrize("mode", ["buffered", "streamed"])
def test_answer_over_max_body_bytes_is_refused_with_bounded_memory(stacks: dict[str, Stack], mode: str) -> None:
    stack = stacks[mode]
    model = unique_model(f"too-big-{mode}")
    stack.backend.on(Completion(tokens=many_tokens(30_000)), model=model)  # about 6 MiB of SSE
    url = f"{stack.url}/small/v1/chat/completions"
    pid = stack.service.process.pid

    rss_before = rss_bytes(pid)
    for _ in range(3):
        result = raw_post(url, {"model": model, "messages": MESSAGES})
        if mode == "buffered":
            error = assert_openai_error(result, 502)
            assert error["code"] == "response_too_large", error
            assert f"max_body_bytes={SMALL_BODY_BYTES}" in error["message"], error
        else:
            assert_cut_off_without_sse(result, " token1 ")
    growth = rss_bytes(pid) - rss_before
    sse_bytes = len(stack.backend.requests[-1].response_body)
    if mode == "buffered":
        # Envoy hands over the whole body in one message (about 6 MiB here): the service refuses it
        # before decoding; what stays is allocator caching of those messages, not the answers.
        assert sse_bytes > 5 * MiB
        assert growth < 96 * MiB, f"service RSS grew {growth >> 20} MiB over 3 refused {sse_bytes}-byte answers"
    else:
        # The reset reaches the backend: it is cut off long before the whole answer is generated.
        assert sse_bytes < 2 * MiB, f"the backend sent {sse_bytes} bytes of a refused answer"
        assert growth < 16 * MiB, f"service RSS grew {growth >> 20} MiB over 3 refused streamed answers"
    assert_still_serving(stack)


def test_event_over_max_event_bytes_is_refused(buffered: Stack) -> None:
    model = unique_model("big-event")
    huge = chunk(model, {"content": "x" * (SMALL_EVENT_BYTES + 1)})
    buffered.backend.on(Sse(whole_stream(model, huge)), model=model)
    result = http_request(f"{buffered.url}/small/v1/chat/completions", "POST", {"model": model, "messages": MESSAGES})
    error = assert_openai_error(result, 502)
    assert f"max_event_bytes={SMALL_EVENT_BYTES}" in error["message"], error
    assert_still_serving(buffered)


# --- hostile shapes -----------------------------------------------------------------------


def nested(depth: int) -> bytes:
    """``{"d": {"d": ... "bottom" ...}}`` as JSON text (orjson itself refuses to write past 255)."""
    return b'{"d": ' * depth + b'"bottom"' + b"}" * depth


def with_nested(model: str, depth: int) -> bytes:
    """A content chunk carrying an extra field nested ``depth`` levels deep, as one SSE event."""
    text = orjson.dumps(chunk(model, {"content": "deep"}))
    return b"data: " + text[:-1] + b', "x_nested": ' + nested(depth) + b"}\n\n"


def tool_call_delta(index: int, name: str = "f", arguments: str = "{}") -> dict[str, Any]:
    return {
        "tool_calls": [
            {
                "index": index,
                "id": f"call_{index}",
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
        ]
    }


def hostile_streams(model: str) -> dict[str, list[Any]]:
    role = chunk(model, {"role": "assistant", "content": ""})
    return {
        "choice-index-1e9": [
            chunk(model, {"role": "assistant", "content": "far"}, index=10**9),
            chunk(model, {}, index=10**9, finish="stop"),
            "[DONE]",
        ],
        "tool-index-1e9": [role, chunk(model, tool_call_delta(10**9)), chunk(model, {}, finish="tool_calls"), "[DONE]"],
        "10k-tool-calls": [
            role,
            *(chunk(model, tool_call_delta(i, f"f{i}")) for i in range(10_000)),
            chunk(model, {}, finish="tool_calls"),
            "[DONE]",
        ],
        "100-deep-json": whole_stream(model, with_nested(model, 100)),
        "5000-deep-json": whole_stream(model, with_nested(model, 5000)),
        "10-mb-event": whole_stream(model, chunk(model, {"content": "x" * (10 * MiB)})),
    }


def check_hostile_answer(case: str, result: Any) -> None:
    """The answer each hostile shape must get: the correct completion, or a clear 502."""
    if case == "choice-index-1e9":
        assert result.status == 200, result.body[:500]
        (choice,) = result.json()["choices"]
        assert (choice["index"], choice["message"]["content"]) == (10**9, "far")
    elif case == "tool-index-1e9":
        assert result.status == 200, result.body[:500]
        (call,) = result.json()["choices"][0]["message"]["tool_calls"]
        assert (call["id"], call["function"]["name"]) == (f"call_{10**9}", "f")
    elif case == "10k-tool-calls":
        error = assert_openai_error(result, 502)
        assert (error["type"], error["code"]) == ("limit", "too_many_tool_calls"), error
    elif case == "100-deep-json":
        assert result.status == 200, result.body[:500]
        assert result.json()["choices"][0]["message"]["content"] == "deep"
    elif case == "5000-deep-json":
        error = assert_openai_error(result, 502)
        assert "event #2 is not valid JSON: depth limit exceeded" in error["message"], error
    elif case == "10-mb-event":
        error = assert_openai_error(result, 502)
        assert error["type"] == "limit" and "SSE event" in error["message"], error
    else:  # pragma: no cover - a new case without an expectation
        raise AssertionError(case)


@pytest.mark.parametrize("case", list(hostile_streams("m")))
def test_hostile_shapes_get_a_correct_answer_or_clear_error_with_bounded_cost(buffered: Stack, case: str) -> None:
    model = unique_model(case)
    buffered.backend.on(Sse(hostile_streams(model)[case]), model=model)
    pid = buffered.service.process.pid
    rss_before, cpu_before = rss_bytes(pid), cpu_seconds(pid)
    result = chat(buffered, model)
    rss_growth, cpu_used = rss_bytes(pid) - rss_before, cpu_seconds(pid) - cpu_before
    check_hostile_answer(case, result)
    sse_bytes = len(buffered.backend.requests[-1].response_body)
    assert cpu_used < 5.0, f"{case}: the service spent {cpu_used:.2f} s of CPU on one answer"
    assert rss_growth < 3 * sse_bytes + 32 * MiB, (
        f"{case}: service RSS grew {rss_growth} bytes for {sse_bytes} bytes of SSE"
    )
    assert_still_serving(buffered)


# --- request bodies the service must not touch --------------------------------------------


@pytest.mark.parametrize("body", [b"this is not json", b"[1, 2, 3]", b'"a string"', b'{"model": "m", '])
def test_request_that_is_not_a_json_object_reaches_the_backend_untouched(buffered: Stack, body: bytes) -> None:
    buffered.backend.reset()
    buffered.backend.on(Json({"error": {"message": "bad request body"}}, status=400), path="/v1/chat/completions")
    result = http_request(f"{buffered.url}/v1/chat/completions", "POST", body)
    (upstream,) = buffered.backend.requests
    assert upstream.body == body
    assert (result.status, result.body) == (400, upstream.response_body)
    wait_service_idle(buffered.service)


def test_request_over_envoys_buffer_limit_gets_413_and_never_reaches_the_backend(buffered: Stack) -> None:
    buffered.backend.reset()
    huge = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"x" * (17 * MiB) + b'"}]}'
    result = raw_post(f"{buffered.url}/v1/chat/completions", huge)
    error = assert_openai_error(result, 413)
    assert "payload" in error["message"].lower() or "too large" in error["message"].lower(), error
    assert buffered.backend.requests == []
    assert_still_serving(buffered)


# --- no prompt or completion text in any log ----------------------------------------------


def logs_containing(stacks: dict[str, Stack], marker: str) -> list[str]:
    """Which captured logs (service and Envoy, stdout and stderr, both modes) contain ``marker``."""
    for stack in stacks.values():
        wait_service_idle(stack.service)
    logs = {
        f"{mode} {process.name} {stream}": read()
        for mode, stack in stacks.items()
        for process in (stack.service.process, stack.envoy.process)
        for stream, read in (("stdout", process.stdout), ("stderr", process.stderr))
    }
    assert any(logs.values()), "the processes logged nothing at all; the check would be empty"
    return [where for where, text in logs.items() if marker in text]


def test_prompts_and_completions_never_reach_the_logs(stacks: dict[str, Stack]) -> None:
    """Conversions, pass-through and every failure path, with the marker in prompt and completion."""
    marker = f"SECRET{uuid.uuid4().hex}"
    prompt = [{"role": "user", "content": f"tell me {marker}"}]
    for mode, stack in stacks.items():
        model = unique_model(f"logs-{mode}")
        stack.backend.on(Completion(f"answer {marker}"), model=model)
        for path in ("/v1/chat/completions", "/direct/v1/chat/completions"):
            ok = http_request(f"{stack.url}{path}", "POST", {"model": model, "messages": prompt})
            assert marker in ok.body.decode()
        for broken in (
            Sse([chunk(model, {"content": marker})], delay=0.2, then="close"),
            Sse([chunk(model, {"content": marker}), f'{{"bad json {marker}'.encode() + b"\n\n"]),
            Sse([f'data: {{"content": "{marker}"\n\n'.encode()]),
            Sse(whole_stream(model, chunk(model, {"content": marker * 2000})), then="close"),
        ):
            stack.backend.on(broken, model=model)
            raw_post(f"{stack.url}/v1/chat/completions", {"model": model, "messages": prompt})
    assert not logs_containing(stacks, marker), "prompt or completion text in these logs"


def test_upstream_error_messages_never_reach_the_logs(stacks: dict[str, Stack]) -> None:
    """Backends quote the input in error messages (validation, templates): those are prompt text.

    In streamed mode the service aborts the gRPC stream with the error's message as the status
    details, and Envoy logs those details at warning level (the default).
    """
    marker = f"SECRET{uuid.uuid4().hex}"
    for mode, stack in stacks.items():
        model = unique_model(f"error-logs-{mode}")
        error = {"error": {"message": f"invalid content: '{marker}'", "type": "BadRequestError", "code": 400}}
        stack.backend.on(Sse([chunk(model, {"role": "assistant"}), error], delay=0.2), model=model)
        raw_post(f"{stack.url}/v1/chat/completions", {"model": model, "messages": MESSAGES})
    leaked = logs_containing(stacks, marker)
    assert not leaked, (
        f"the upstream's error message (here quoting the prompt) is logged by: {leaked}; "
        "service.py aborts the stream with ConversionError.message, which quotes it"
    )
