"""End to end: a client → real Envoy → buffered-stream service → scripted backend, on loopback.

The reference for every converted answer is the backend's own ``stream: false`` answer, fetched
through the same Envoy on the unconverted ``/direct/`` route; only ``id`` and ``created`` (new for
every generation) may differ.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from buffered_stream.demo_backend import DEMO_TEXT
from buffered_stream.envoy_config import converting_routes
from support.backend import Completion, Json, Sse
from support.net import http_request, wait_until
from support.processes import ManagedProcess
from support.stack import SOURCE_ROOT, Harness, Stack, run_args

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Say something."}]
TEXT = "Streams keep the connection busy while the answer grows token by token."


def client(base_url: str, timeout: float = 60) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=timeout)


def stable(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer without the fields that differ between two generations of the same text."""
    return {k: v for k, v in answer.items() if k not in ("id", "created")}


def chat_raw(base_url: str, model: str, **extra: Any) -> httpx.Response:
    return (
        client(base_url)
        .chat.completions.with_raw_response.create(model=model, messages=MESSAGES, stream=False, **extra)
        .http_response
    )


def completion_raw(base_url: str, model: str, **extra: Any) -> httpx.Response:
    return (
        client(base_url)
        .completions.with_raw_response.create(model=model, prompt="Say", stream=False, **extra)
        .http_response
    )


def post(stack: Stack, path: str, body: dict[str, Any]) -> Any:
    return http_request(f"{stack.url}{path}", "POST", body)


# --- conversion ---------------------------------------------------------------------------


def test_chat_non_stream_equals_the_backends_own_answer(stack: Stack) -> None:
    stack.backend.on(Completion(TEXT, token_delay=0.01), model="chat-convert")
    converted = chat_raw(f"{stack.url}/v1", "chat-convert")
    reference = chat_raw(f"{stack.url}/direct/v1", "chat-convert")

    assert converted.status_code == 200
    assert converted.headers["content-type"] == "application/json"
    assert int(converted.headers["content-length"]) == len(converted.content)
    assert stable(converted.json()) == stable(reference.json())
    assert converted.json()["choices"][0]["message"]["content"] == TEXT

    upstream, direct = [r for r in stack.backend.requests if r.model == "chat-convert"]
    assert upstream.stream is True
    assert upstream.json["stream_options"] == {"include_usage": True}
    assert upstream.json["messages"] == MESSAGES
    assert direct.stream is False


def test_sdk_parses_the_converted_answer(stack: Stack) -> None:
    stack.backend.on(Completion(TEXT), model="chat-sdk")
    answer = client(f"{stack.url}/v1").chat.completions.create(model="chat-sdk", messages=MESSAGES)
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.content == TEXT
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.completion_tokens == len(TEXT.split(" "))


def test_legacy_completions_converted(stack: Stack) -> None:
    stack.backend.on(Completion(TEXT, finish_reason="length"), model="legacy")
    converted = completion_raw(f"{stack.url}/v1", "legacy", max_tokens=50)
    reference = completion_raw(f"{stack.url}/direct/v1", "legacy", max_tokens=50)
    assert converted.status_code == 200
    assert stable(converted.json()) == stable(reference.json())
    assert converted.json()["choices"][0]["text"] == TEXT
    assert [r.stream for r in stack.backend.requests if r.model == "legacy"] == [True, False]


def test_access_log_carries_usage_and_outcome(stack: Stack) -> None:
    stack.backend.on(Completion("one two three", prompt_tokens=11), model="logged")
    assert post(stack, "/v1/chat/completions", {"model": "logged", "messages": MESSAGES}).status == 200
    wanted = "route=chat_completions outcome=converted prompt_tokens=11 completion_tokens=3 total_tokens=14"
    wait_until(
        lambda: any(wanted in line for line in stack.envoy.access_log()),
        10,
        message=lambda: f"{wanted!r} in the access log:\n" + "\n".join(stack.envoy.access_log()[-5:]),
    )


# --- pass-through -------------------------------------------------------------------------


def test_stream_true_is_passed_through_byte_for_byte(stack: Stack) -> None:
    stack.backend.on(Completion(TEXT), model="stream-through")
    result = post(stack, "/v1/chat/completions", {"model": "stream-through", "messages": MESSAGES, "stream": True})
    (upstream,) = [r for r in stack.backend.requests if r.model == "stream-through"]
    assert result.status == 200
    assert result.headers["content-type"] == "text/event-stream"
    assert result.body == upstream.response_body
    assert "stream_options" not in upstream.json  # the request was not touched


def test_models_and_direct_routes_unchanged(stack: Stack) -> None:
    stack.backend.on(Json({"object": "list", "data": [{"id": "x", "object": "model"}]}), path="/v1/models")
    models = http_request(f"{stack.url}/v1/models")
    assert models.status == 200
    assert models.body == stack.backend.requests[-1].response_body

    stack.backend.on(Completion(TEXT), model="direct")
    direct = post(stack, "/direct/v1/chat/completions", {"model": "direct", "messages": MESSAGES})
    (upstream,) = [r for r in stack.backend.requests if r.model == "direct"]
    assert upstream.path == "/v1/chat/completions"
    assert upstream.stream is False
    assert direct.body == upstream.response_body


@pytest.mark.parametrize("status", [429, 500])
def test_upstream_error_status_passes_through(stack: Stack, status: int) -> None:
    error = {"error": {"message": f"upstream says {status}", "type": "server_error", "code": status}}
    stack.backend.on(Json(error, status=status), model=f"err-{status}")
    result = post(stack, "/v1/chat/completions", {"model": f"err-{status}", "messages": MESSAGES})
    assert result.status == status
    assert result.json() == error
    assert result.headers["content-type"] == "application/json"


def test_json_error_with_200_passes_through(stack: Stack) -> None:
    error = {"error": {"message": "streaming is disabled here", "type": "invalid_request_error"}}
    stack.backend.on(Json(error), model="json-200")
    result = post(stack, "/v1/chat/completions", {"model": "json-200", "messages": MESSAGES})
    assert (result.status, result.json()) == (200, error)


def test_model_outside_the_route_list_is_not_converted(harness: Harness) -> None:
    def only_gpt(config: dict[str, Any]) -> None:
        for route in converting_routes(config):
            route["metadata"]["filter_metadata"]["buffered_stream"]["models"] = ["gpt-*"]

    stack = harness.stack(customize=only_gpt)
    stack.backend.on(Completion(TEXT))
    other = post(stack, "/v1/chat/completions", {"model": "llama-3", "messages": MESSAGES})
    matching = post(stack, "/v1/chat/completions", {"model": "gpt-4o", "messages": MESSAGES})
    first, second = stack.backend.requests
    assert (first.model, first.stream, second.model, second.stream) == ("llama-3", False, "gpt-4o", True)
    assert other.body == first.response_body
    assert matching.status == 200
    assert matching.json()["choices"][0]["message"]["content"] == TEXT


# --- errors -------------------------------------------------------------------------------


def role_chunk(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
    }


def token_chunk(model: str, text: str) -> dict[str, Any]:
    chunk = role_chunk(model)
    chunk["choices"][0]["delta"] = {"content": text}
    return chunk


def test_error_event_mid_stream_becomes_its_status_and_error(stack: Stack) -> None:
    error = {"message": "This model's maximum context length is 4096 tokens", "type": "BadRequestError", "code": 400}
    stack.backend.on(Sse([role_chunk("m"), token_chunk("m", "Hi"), {"error": error}]), model="mid-error")
    result = post(stack, "/v1/chat/completions", {"model": "mid-error", "messages": MESSAGES})
    assert result.status == 400, result.body
    assert result.headers["content-type"] == "application/json"
    assert result.json() == {"error": error}


@pytest.mark.parametrize("then", ["end", "close"])
def test_truncated_stream_becomes_502(stack: Stack, then: str) -> None:
    model = f"truncated-{then}"
    stack.backend.on(Sse([role_chunk(model), token_chunk(model, "Hi")], then=then), model=model)
    result = post(stack, "/v1/chat/completions", {"model": model, "messages": MESSAGES})
    assert result.status == 502, result.body
    assert result.headers["content-type"] == "application/json"
    assert "error" in result.json()
    assert "Hi" not in result.body.decode()  # never a partial answer


def test_bad_route_settings_give_the_services_own_500(harness: Harness) -> None:
    def typo(config: dict[str, Any]) -> None:
        for route in converting_routes(config):
            route["metadata"]["filter_metadata"]["buffered_stream"]["max_body_bytes"] = "lots"

    stack = harness.stack(customize=typo)
    result = post(stack, "/v1/chat/completions", {"model": "m", "messages": MESSAGES})
    assert result.status == 500
    error = result.json()["error"]
    # Envoy re-wraps local replies that carry no `buffered_stream.outcome` metadata as
    # {"type": "envoy_error", "message": "<original body>"}: the service must set that metadata
    # on every immediate response, or its error JSON reaches the client as an escaped string.
    assert error["type"] == "settings_error", f"service error was re-wrapped by Envoy: {error}"
    assert "max_body_bytes" in error["message"]


# --- streamed mode ------------------------------------------------------------------------


def test_streamed_mode_converts(harness: Harness) -> None:
    stack = harness.stack(mode="streamed")
    stack.backend.on(Completion(TEXT, token_delay=0.01))
    converted = chat_raw(f"{stack.url}/v1", "streamed")
    reference = chat_raw(f"{stack.url}/direct/v1", "streamed")
    assert converted.status_code == 200
    assert converted.headers["content-type"] == "application/json"
    assert stable(converted.json()) == stable(reference.json())
    assert stack.backend.requests[0].stream is True


# --- the point of the product -------------------------------------------------------------


def test_slow_generation_survives_an_idle_timeout_that_kills_the_direct_call(harness: Harness) -> None:
    """20 tokens, one per second, behind a load balancer that cuts 3 s of silence."""
    backend = harness.backend()
    text = " ".join(f"w{i}" for i in range(20))
    backend.on(Completion(text, token_delay=1.0, first_token_delay=1.0))
    hop = harness.hop(backend.url, idle_timeout="3s", timeout="0s")

    direct = http_request(f"{hop.url('hop')}/v1/chat/completions", "POST", {"model": "slow", "messages": MESSAGES})
    assert direct.status == 504, direct.body

    stack = harness.stack(backend=backend, backend_url=hop.url("hop"))
    converted = chat_raw(f"{stack.url}/v1", "slow")
    assert converted.status_code == 200, converted.text
    answer = converted.json()
    assert answer["choices"][0]["message"]["content"] == text
    assert answer["usage"]["completion_tokens"] == 20


# --- the one-command demo -----------------------------------------------------------------


def test_run_without_backend_answers_within_seconds(tmp_path) -> None:
    args, port = run_args()
    with ManagedProcess("run", args, tmp_path, env={"PYTHONPATH": str(SOURCE_ROOT)}) as run:
        request = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}

        def answered() -> Any:
            run.assert_running()
            result = http_request(f"http://127.0.0.1:{port}/v1/chat/completions", "POST", request, timeout=10)
            return result if result.status == 200 else None

        result = wait_until(answered, 30, interval=0.2, message=run.logs)
        assert result.headers["content-type"] == "application/json"
        assert result.json()["choices"][0]["message"]["content"] == DEMO_TEXT


# --- buffer sizing ------------------------------------------------------------------------


def test_buffered_mode_holds_60k_tokens_and_refuses_more_than_16_mib_as_json(stack: Stack) -> None:
    fits = tuple(f" t{i}" for i in range(60_000))
    stack.backend.on(Completion(tokens=fits), model="sixty-k")
    result = post(stack, "/v1/chat/completions", {"model": "sixty-k", "messages": MESSAGES})
    sse_bytes = len(stack.backend.requests[-1].response_body)
    assert 12 * 2**20 < sse_bytes < 16 * 2**20
    assert result.status == 200
    assert result.json()["choices"][0]["message"]["content"] == "".join(fits)

    stack.backend.on(Completion(tokens=tuple(f" t{i}" for i in range(90_000))), model="too-big")
    refused = post(stack, "/v1/chat/completions", {"model": "too-big", "messages": MESSAGES})
    assert refused.status == 500
    assert refused.headers["content-type"] == "application/json"
    assert refused.json()["error"]["code"] == "response_payload_too_large"


def test_converted_request_asks_for_an_uncompressed_stream(stack: Stack) -> None:
    stack.backend.on(Completion(TEXT), model="compressible")
    result = http_request(
        f"{stack.url}/v1/chat/completions",
        "POST",
        {"model": "compressible", "messages": MESSAGES},
        headers={"accept-encoding": "gzip, br"},
    )
    assert result.status == 200, result.body
    (upstream,) = [r for r in stack.backend.requests if r.model == "compressible"]
    assert upstream.stream and "accept-encoding" not in {k.lower() for k in upstream.headers}
