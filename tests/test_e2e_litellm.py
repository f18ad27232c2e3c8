"""End to end through the real LiteLLM proxy: OpenAI SDK → LiteLLM → Envoy + buffered-stream →
scripted backend, on loopback.

LiteLLM is unchanged and unaware of the conversion: a `stream=False` call on a converting route
reaches the backend as a stream and comes back to LiteLLM as the one JSON it expects, while a
model on the `/direct/` route (no conversion) and `stream=True` calls behave as before. One LiteLLM
process serves the whole module (it takes seconds to start).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from buffered_stream.envoy_config import converting_routes, routes
from support.backend import Completion, RecordedRequest, ScriptedBackend, Sse, tokens_of
from support.litellm import client as proxy_client
from support.litellm import find_litellm, proxy_config, running_litellm
from support.stack import Harness, Stack

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Say something."}]
TEXT = "Streams keep the connection busy while the answer grows token by token."
# Converting and /direct/ routes drop a request after this long without an upstream byte.
ROUTE_IDLE_TIMEOUT = 2.0

# LiteLLM model name → (backend model name, Envoy path prefix of its api_base).
MODELS = {
    "text": ("e2e-text", "/v1"),
    "tools": ("e2e-tools", "/v1"),
    "streaming": ("e2e-streaming", "/v1"),
    "slow": ("e2e-slow", "/v1"),
    "direct": ("e2e-direct", "/direct/v1"),
    "slow-direct": ("e2e-slow-direct", "/direct/v1"),
}


def litellm_config(envoy_url: str) -> dict[str, Any]:
    return proxy_config(
        {
            name: {"model": f"hosted_vllm/{backend_model}", "api_base": f"{envoy_url}{prefix}", "api_key": "none"}
            for name, (backend_model, prefix) in MODELS.items()
        }
    )


def short_idle_timeouts(config: dict[str, Any]) -> None:
    """Make the converting and /direct/ routes give up after ROUTE_IDLE_TIMEOUT of silence."""
    converting = converting_routes(config)
    direct = [r for r in routes(config) if r["match"].get("prefix") == "/direct/"]
    assert converting and direct
    for route in converting + direct:
        route["route"]["idle_timeout"] = f"{ROUTE_IDLE_TIMEOUT}s"


@pytest.fixture(scope="module")
def litellm_stack(module_harness: Harness) -> Stack:
    return module_harness.stack(customize=short_idle_timeouts)


@pytest.fixture(scope="module")
def litellm_url(litellm_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A LiteLLM proxy whose models all point at the stack's Envoy."""
    try:
        find_litellm()
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
    with running_litellm(litellm_config(litellm_stack.url), tmp_path_factory.mktemp("litellm")) as url:
        yield url


def client(litellm_url: str) -> openai.OpenAI:
    return proxy_client(litellm_url)


def backend_requests(backend: ScriptedBackend, model: str) -> list[RecordedRequest]:
    return [r for r in backend.requests if r.model == model]


def tool_call_events(model: str) -> list[dict[str, Any] | str]:
    """A vLLM-like stream of one tool call whose arguments arrive in pieces, then usage."""
    base = {"id": "chatcmpl-tools", "object": "chat.completion.chunk", "created": 1700000000, "model": model}

    def delta(piece: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": piece, "logprobs": None, "finish_reason": finish_reason}]}

    def arguments(text: str) -> dict[str, Any]:
        return {"tool_calls": [{"index": 0, "function": {"arguments": text}}]}

    return [
        delta({"role": "assistant", "content": ""}),
        delta(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_7",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        delta(arguments('{"city": ')),
        delta(arguments('"Paris"}')),
        delta({}, "tool_calls"),
        {**base, "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 9, "total_tokens": 20}},
        "[DONE]",
    ]


def test_non_stream_call_is_served_from_an_upstream_stream(litellm_stack: Stack, litellm_url: str) -> None:
    litellm_stack.backend.on(Completion(TEXT, token_delay=0.01, prompt_tokens=5), model="e2e-text")
    answer = client(litellm_url).chat.completions.create(model="text", messages=MESSAGES, stream=False)

    assert answer.object == "chat.completion"
    (choice,) = answer.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == TEXT
    assert choice.finish_reason == "stop"
    n_tokens = len(tokens_of(TEXT))
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (
        5,
        n_tokens,
        5 + n_tokens,
    )
    (upstream,) = backend_requests(litellm_stack.backend, "e2e-text")
    assert upstream.stream is True
    assert upstream.json["stream_options"] == {"include_usage": True}
    assert upstream.json["messages"] == MESSAGES


def test_non_stream_tool_call(litellm_stack: Stack, litellm_url: str) -> None:
    litellm_stack.backend.on(Sse(tool_call_events("e2e-tools")), model="e2e-tools")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    answer = client(litellm_url).chat.completions.create(model="tools", messages=MESSAGES, tools=tools, stream=False)

    (choice,) = answer.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content in (None, "")
    (call,) = choice.message.tool_calls
    assert (call.id, call.type, call.function.name) == ("call_7", "function", "get_weather")
    assert call.function.arguments == '{"city": "Paris"}'
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (11, 9, 20)
    (upstream,) = backend_requests(litellm_stack.backend, "e2e-tools")
    assert upstream.stream is True
    assert upstream.json["tools"][0]["function"]["name"] == "get_weather"


def test_model_on_a_route_without_conversion_is_untouched(litellm_stack: Stack, litellm_url: str) -> None:
    litellm_stack.backend.on(Completion(TEXT), model="e2e-direct")
    answer = client(litellm_url).chat.completions.create(model="direct", messages=MESSAGES, stream=False)

    assert answer.choices[0].message.content == TEXT
    (upstream,) = backend_requests(litellm_stack.backend, "e2e-direct")
    assert upstream.stream is False
    assert "stream_options" not in upstream.json


def test_stream_call_still_streams(litellm_stack: Stack, litellm_url: str) -> None:
    litellm_stack.backend.on(Completion(TEXT, token_delay=0.01), model="e2e-streaming")
    chunks = list(client(litellm_url).chat.completions.create(model="streaming", messages=MESSAGES, stream=True))

    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == TEXT
    assert len(pieces) == len(tokens_of(TEXT))
    (upstream,) = backend_requests(litellm_stack.backend, "e2e-streaming")
    assert upstream.stream is True


def test_long_generation_outlives_the_idle_timeout_only_when_converted(litellm_stack: Stack, litellm_url: str) -> None:
    # A token every 0.5 s, for longer than the routes' idle timeout: a non-stream call is silent
    # all that time unless it is converted.
    slow = Completion(TEXT, token_delay=ROUTE_IDLE_TIMEOUT / 4)
    assert slow.token_delay * len(tokens_of(TEXT)) > 2 * ROUTE_IDLE_TIMEOUT
    litellm_stack.backend.on(slow, model="e2e-slow")
    litellm_stack.backend.on(slow, model="e2e-slow-direct")
    proxy = client(litellm_url)

    answer = proxy.chat.completions.create(model="slow", messages=MESSAGES, stream=False)
    assert answer.choices[0].message.content == TEXT

    with pytest.raises(openai.APIStatusError) as failure:
        proxy.chat.completions.create(model="slow-direct", messages=MESSAGES, stream=False)
    # The hop's idle timeout fired (504), once: LiteLLM passes it on without retrying.
    assert failure.value.status_code == 504
    assert "timeout" in failure.value.message.lower()
    assert len(backend_requests(litellm_stack.backend, "e2e-slow-direct")) == 1
    (converted,) = backend_requests(litellm_stack.backend, "e2e-slow")
    assert converted.stream is True
