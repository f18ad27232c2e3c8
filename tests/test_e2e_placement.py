"""Both placements with the real LiteLLM proxy, with keep-alive, against hops that cut 3 s of silence.

Behind LiteLLM (back): LiteLLM → Envoy + buffered-stream → backend. LiteLLM's own upstream
``timeout`` is an httpx read timeout: keep-alive bytes reset it, so it no longer has to exceed the
generation.

In front of LiteLLM (front): client → load balancer → Envoy + buffered-stream → LiteLLM → hop →
backend. LiteLLM streams from the backend and buffered-stream assembles LiteLLM's SSE into the one
answer the client asked for; keep-alive bytes keep the client's own hop alive.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from buffered_stream.envoy_config import converting_routes, enable_keepalive
from support import corpus
from support.backend import Completion, Json, RecordedRequest, ScriptedBackend, Sse
from support.litellm import MASTER_KEY, client, find_litellm, proxy_config, running_litellm
from support.stack import Harness, Stack

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
HOP_IDLE_TIMEOUT = "3s"
LITELLM_TIMEOUT_S = 3
# Ten tokens, one a second: longer than every idle timeout on the way.
SLOW_TEXT = Completion(" ".join(f"w{i}" for i in range(10)), token_delay=1.0)


def keepalive(seconds: float):
    def customize(config: dict[str, Any]) -> None:
        for route in converting_routes(config):
            enable_keepalive(route, seconds)

    return customize


def slowed(case: str, delay: float = 1.0) -> Any:
    """A recorded case, served slowly as a stream and at once as its native answer."""
    recorded = corpus.load("chat", case)
    events, native = corpus.events(recorded.body), recorded.native

    def reply(request: RecordedRequest) -> Any:
        return Sse(events, delay=delay) if request.stream else Json(native)

    return reply, native


@pytest.fixture(scope="module")
def backend(module_harness: Harness) -> ScriptedBackend:
    return module_harness.backend()


@pytest.fixture(scope="module")
def behind(module_harness: Harness, backend: ScriptedBackend) -> dict[str, Stack]:
    """Envoy + buffered-stream behind LiteLLM, with and without keep-alive."""
    return {
        "keepalive": module_harness.stack(backend=backend, customize=keepalive(1.0)),
        "plain": module_harness.stack(backend=backend),
    }


@pytest.fixture(scope="module")
def litellm(
    module_harness: Harness,
    backend: ScriptedBackend,
    behind: dict[str, Stack],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    try:
        find_litellm()
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
    backend_hop = module_harness.hop(backend.url, idle_timeout=HOP_IDLE_TIMEOUT, timeout="0s")

    def model(backend_model: str, api_base: str, **extra: Any) -> dict[str, Any]:
        return {"model": f"hosted_vllm/{backend_model}", "api_base": f"{api_base}/v1", "api_key": "none", **extra}

    config = proxy_config(
        {
            "back-keepalive": model("back-keepalive", behind["keepalive"].url, timeout=LITELLM_TIMEOUT_S),
            "back-plain": model("back-plain", behind["plain"].url, timeout=LITELLM_TIMEOUT_S),
            "front-text": model("front-text", backend_hop.url("hop")),
            "front-tools": model("front-tools", backend_hop.url("hop")),
        }
    )
    with running_litellm(config, tmp_path_factory.mktemp("litellm")) as url:
        yield url


@pytest.fixture(scope="module")
def front(module_harness: Harness, litellm: str) -> str:
    """Client-side load balancer (3 s idle) → Envoy + buffered-stream (keep-alive 1 s) → LiteLLM."""
    stack = module_harness.stack(backend_url=litellm, customize=keepalive(1.0))
    client_hop = module_harness.hop(stack.url, idle_timeout=HOP_IDLE_TIMEOUT, timeout="0s")
    return client_hop.url("hop")


def essentials(answer: dict[str, Any]) -> dict[str, Any]:
    """What the client asked for: per choice the message's content, reasoning and tool calls and
    the finish reason, and the token counts."""
    return {
        "choices": [
            {
                "content": c["message"].get("content"),
                "reasoning": c["message"].get("reasoning_content") or c["message"].get("reasoning"),
                "tool_calls": [
                    {"id": t["id"], "type": t["type"], "function": t["function"]}
                    for t in c["message"].get("tool_calls") or ()
                ],
                "finish_reason": c["finish_reason"],
            }
            for c in sorted(answer["choices"], key=lambda c: c["index"])
        ],
        "usage": {k: answer["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
    }


# --- behind LiteLLM -----------------------------------------------------------------------------


def test_keepalive_resets_litellms_read_timeout(backend: ScriptedBackend, litellm: str) -> None:
    backend.on(SLOW_TEXT, model="back-keepalive")
    backend.on(SLOW_TEXT, model="back-plain")
    expected = SLOW_TEXT.pair("/v1/chat/completions", {"model": "back-keepalive"})[1]

    answer = client(litellm).chat.completions.create(model="back-keepalive", messages=MESSAGES)
    assert answer.choices[0].message.content == expected["choices"][0]["message"]["content"]
    assert answer.usage.completion_tokens == expected["usage"]["completion_tokens"]

    with pytest.raises(openai.APIStatusError) as failed:
        client(litellm).chat.completions.create(model="back-plain", messages=MESSAGES)
    assert "timeout" in str(failed.value).lower()


# --- in front of LiteLLM ------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["vllm-tool-auto", "sglang-reasoning"])
def test_front_placement_answers_like_the_backend(backend: ScriptedBackend, front: str, case: str) -> None:
    reply, native = slowed(case)
    backend.on(reply, model="front-tools")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]

    response = client(front, timeout=3.0).chat.completions.with_raw_response.create(
        model="front-tools", messages=MESSAGES, tools=tools
    )

    assert response.http_response.status_code == 200
    assert response.http_response.content.startswith(b"\n"), "keep-alive bytes kept the client's hop busy"
    assert essentials(orjson.loads(response.http_response.content)) == essentials(native)
    upstream = [r for r in backend.requests if r.model == "front-tools"][-1]
    assert upstream.stream is True, "LiteLLM streamed from the backend"


def test_front_placement_slow_text(backend: ScriptedBackend, front: str) -> None:
    backend.on(SLOW_TEXT, model="front-text")
    native = SLOW_TEXT.pair("/v1/chat/completions", {"model": "front-text"})[1]

    answer = client(front, timeout=3.0).chat.completions.create(model="front-text", messages=MESSAGES)

    assert essentials(answer.model_dump()) == essentials(native)


# --- the other API families behind LiteLLM ----------------------------------------------------
# LiteLLM (hosted_vllm models) sends an Anthropic /v1/messages call upstream as chat completions,
# and a Responses call as /v1/responses: both arrive non-stream and are converted.


def test_litellm_messages_call_is_converted_as_chat(backend: ScriptedBackend, litellm: str) -> None:
    reply = Completion("Hello from a stream.")
    backend.on(reply, model="back-plain")
    answer = httpx.post(
        f"{litellm}/v1/messages",
        json={"model": "back-plain", "max_tokens": 64, "messages": MESSAGES},
        headers={"authorization": f"Bearer {MASTER_KEY}"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["content"] == [{"type": "text", "text": "Hello from a stream."}]
    upstream = [r for r in backend.requests if r.model == "back-plain"][-1]
    assert (upstream.path, upstream.stream) == ("/v1/chat/completions", True)


def test_litellm_responses_call_is_converted(backend: ScriptedBackend, litellm: str) -> None:
    recorded = corpus.load("responses", "openai-text")
    sse, native = recorded.body, recorded.native
    backend.on(lambda r: Sse([sse]) if r.stream else Json(native), model="back-plain", path="/v1/responses")

    answer = client(litellm).responses.create(model="back-plain", input="Say hello.")

    assert answer.output_text == "".join(
        part["text"] for item in native["output"] if item["type"] == "message" for part in item["content"]
    )
    upstream = [r for r in backend.requests if r.path == "/v1/responses"][-1]
    assert upstream.stream is True


def test_front_answer_is_litellms_own_but_for_what_only_one_of_its_shapes_carries(
    backend: ScriptedBackend, litellm: str, front: str
) -> None:
    """In front, the answer comes from LiteLLM's stream: LiteLLM's non-stream answer has a
    ``provider_specific_fields`` per choice that its stream lacks, and its stream's usage has
    ``completion_tokens_details`` that its non-stream answer lacks."""
    backend.on(Completion("hello there friend"), model="front-text")

    def answer(base_url: str) -> dict[str, Any]:
        raw = client(base_url).chat.completions.with_raw_response.create(model="front-text", messages=MESSAGES)
        return {k: v for k, v in orjson.loads(raw.http_response.content).items() if k not in ("id", "created")}

    own, assembled = answer(litellm), answer(front)

    (own_choice,), (assembled_choice,) = own["choices"], assembled["choices"]
    assert set(own_choice) - set(assembled_choice) == {"provider_specific_fields"}
    assert set(assembled["usage"]) - set(own["usage"]) == {"completion_tokens_details"}
    del own_choice["provider_specific_fields"], assembled["usage"]["completion_tokens_details"]
    assert assembled == own
