"""Keep-alive to the client: real Envoy, service, clients and loopback backends.

On a route with ``keepalive_seconds`` the client gets ``200`` + JSON headers at once, a ``\\n``
whenever that many seconds pass without a byte, then the one JSON answer. A failure after the
200 resets the response: never a body that ends cleanly with whitespace or an error under a 200.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import openai
import orjson
import pytest
import requests

from buffered_stream.core.convert import StreamConverter
from buffered_stream.envoy_config import converting_routes, enable_keepalive
from support import corpus
from support.apis import api_of
from support.backend import Completion, Json, Sse
from support.net import http_request
from support.probes import outcome_count, raw_post, service_samples, wait_service_idle
from support.stack import Harness, Stack

pytestmark = pytest.mark.e2e

KEEPALIVE_S = 0.5
MESSAGES = [{"role": "user", "content": "Say something."}]
LEADING_WHITESPACE = re.compile(rb"\n*")


def with_keepalive(seconds: float, **route_settings: Any):
    def customize(config: dict[str, Any]) -> None:
        for route in converting_routes(config):
            enable_keepalive(route, seconds)
            route["metadata"]["filter_metadata"]["buffered_stream"].update(route_settings)

    return customize


@pytest.fixture(scope="module")
def ka(module_harness: Harness) -> Stack:
    """Converting routes with keep-alive every 0.5 s."""
    return module_harness.stack(customize=with_keepalive(KEEPALIVE_S))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, **extra}


def stable(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k not in ("id", "created")}


def slow(text: str = "one two three four five six", delay: float = 0.3) -> Completion:
    return Completion(text, token_delay=delay)


def native(reply: Completion, model: str) -> dict[str, Any]:
    return reply.pair("/v1/chat/completions", chat(model))[1]


def split_body(body: bytes) -> tuple[bytes, bytes]:
    """(the leading keep-alive bytes, the rest)."""
    whitespace = LEADING_WHITESPACE.match(body).group()
    return whitespace, body[len(whitespace) :]


def sdk(base_url: str) -> openai.OpenAI:
    """A float timeout is httpx's per-read limit (3 s of silence cuts), on httpx and httpx2 alike."""
    return openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=3.0)


# --- the body: whitespace, then exactly one JSON document ----------------------------------


def test_text_answer_is_newlines_then_the_native_json(ka: Stack) -> None:
    model = unique("text")
    reply = slow(delay=0.4)  # 6 tokens + finish: ~2.8 s, so several keep-alive bytes
    ka.backend.on(reply, model=model)
    before = service_samples(ka.service).get("buffered_stream_keepalive_bytes_total", 0.0)

    result = raw_post(f"{ka.url}/v1/chat/completions", chat(model))

    assert result.status == 200 and result.complete and not result.reset
    assert result.headers["content-type"] == "application/json"
    assert "content-length" not in result.headers
    whitespace, document = split_body(result.body)
    assert len(whitespace) >= 3, result.body[:20]
    assert document == orjson.dumps(orjson.loads(document)), "one JSON document, nothing after it"
    assert stable(orjson.loads(document)) == stable(native(reply, model))
    assert ka.backend.requests[-1].json["stream"] is True
    samples = service_samples(ka.service)
    assert samples["buffered_stream_keepalive_bytes_total"] - before == len(whitespace)
    assert outcome_count(ka.service, "converted_keepalive") >= 1


@pytest.mark.parametrize("case", ["openai-parallel-calls", "vllm-n2-continuous-usage"])
def test_tool_calls_and_n2_are_newlines_then_the_assembled_json(ka: Stack, case: str) -> None:
    """Recorded streams, slowed down: the delivered document is the core's answer, byte for byte."""
    model = unique(case)
    sse = corpus.load("chat", case).body
    events = corpus.events(sse)
    ka.backend.on(Sse(events, delay=[0.0, 1.2] + [0.05] * len(events)), model=model)
    converter = StreamConverter(api_of("chat"), "auto")
    converter.feed(sse)
    expected = converter.finish()

    result = raw_post(f"{ka.url}/v1/chat/completions", chat(model))

    assert result.status == 200 and result.complete
    whitespace, document = split_body(result.body)
    assert len(whitespace) >= 2
    assert document == expected


def test_answer_faster_than_the_interval_has_no_keepalive_bytes(ka: Stack) -> None:
    model = unique("fast")
    reply = Completion("quick answer")
    ka.backend.on(reply, model=model)
    converted_before = outcome_count(ka.service, "converted")

    result = raw_post(f"{ka.url}/v1/chat/completions", chat(model))

    assert result.status == 200 and result.complete
    assert stable(orjson.loads(result.body)) == stable(native(reply, model))
    assert result.body[:1] == b"{"
    assert outcome_count(ka.service, "converted") == converted_before + 1


# --- real parsers of such a body -------------------------------------------------------------


def test_openai_sdk_sync_and_async_parse_it_with_a_read_timeout_shorter_than_the_generation(ka: Stack) -> None:
    model = unique("sdk")
    reply = Completion("w1 w2 w3 w4 w5 w6 w7 w8", token_delay=0.5)  # ~4.5 s > read timeout 3 s
    ka.backend.on(reply, model=model)
    expected = native(reply, model)["choices"][0]["message"]["content"]

    answer = sdk(f"{ka.url}/v1").chat.completions.create(model=model, messages=MESSAGES)
    assert answer.choices[0].message.content == expected

    async def call() -> Any:
        client = openai.AsyncOpenAI(base_url=f"{ka.url}/v1", api_key="none", max_retries=0, timeout=3.0)
        async with client:
            return await client.chat.completions.create(model=model, messages=MESSAGES)

    assert asyncio.run(call()).choices[0].message.content == expected


def test_httpx_requests_and_curl_parse_it(ka: Stack) -> None:
    model = unique("parsers")
    reply = slow(delay=0.3)
    ka.backend.on(reply, model=model)
    expected = stable(native(reply, model))
    url = f"{ka.url}/v1/chat/completions"

    assert stable(httpx.post(url, json=chat(model), timeout=3.0).json()) == expected
    assert stable(requests.post(url, json=chat(model), timeout=(5, 3)).json()) == expected
    curl = subprocess.run(
        f"curl -sS --max-time 30 -H 'content-type: application/json' -d '{orjson.dumps(chat(model)).decode()}' {url}"
        f" | {sys.executable} -m json.tool",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert curl.returncode == 0, curl.stderr
    assert stable(orjson.loads(curl.stdout)) == expected


# --- the client's own hop -------------------------------------------------------------------


def test_keepalive_bridges_a_client_hop_idle_timeout_that_kills_the_plain_conversion(module_harness: Harness) -> None:
    """Client → load balancer (3 s idle) → Envoy + buffered-stream → backend that sends its first
    chunk, then is silent for 10 s, then writes one token per second for 10 s."""
    backend = module_harness.backend()
    words = tuple(f" w{i}" for i in range(10))
    reply = Completion(tokens=("", *words), chunk_delays=(0.0, 10.0, *([1.0] * 9)))
    backend.on(reply)
    request = chat("slow")
    expected = stable(native(reply, "slow"))

    plain = module_harness.stack(backend=backend)
    plain_hop = module_harness.hop(plain.url, idle_timeout="3s", timeout="0s")
    started = time.monotonic()
    cut = http_request(f"{plain_hop.url('hop')}/v1/chat/completions", "POST", request, timeout=60)
    assert cut.status == 504, cut.body
    assert time.monotonic() - started < 9

    kept = module_harness.stack(backend=backend, customize=with_keepalive(1.0))
    kept_hop = module_harness.hop(kept.url, idle_timeout="3s", timeout="0s")
    answer = sdk(f"{kept_hop.url('hop')}/v1").chat.completions.with_raw_response.create(model="slow", messages=MESSAGES)
    assert answer.http_response.status_code == 200
    assert stable(orjson.loads(answer.http_response.content)) == expected
    assert answer.http_response.content.startswith(b"\n" * 9)


# --- requests that are not converted stay untouched -------------------------------------------


def test_stream_true_passes_byte_for_byte(ka: Stack) -> None:
    model = unique("stream")
    ka.backend.on(slow(delay=0.3), model=model)
    result = raw_post(f"{ka.url}/v1/chat/completions", chat(model, stream=True))
    assert result.status == 200 and result.complete
    assert result.headers["content-type"].startswith("text/event-stream")
    assert result.body == bytes(ka.backend.requests[-1].response_body)


@pytest.mark.parametrize("status", [200, 429])
def test_json_answers_pass_byte_for_byte(ka: Stack, status: int) -> None:
    model = unique(f"json{status}")
    ka.backend.on(
        Json(
            {"error": {"message": "busy", "type": "rate_limit", "param": None, "code": None}}, status=status, delay=1.2
        ),
        model=model,
    )
    result = raw_post(f"{ka.url}/v1/chat/completions", chat(model))
    assert result.status == status and result.complete
    assert result.body == bytes(ka.backend.requests[-1].response_body)
    assert not result.body.startswith(b"\n")


# --- failures after the 200 was committed ----------------------------------------------------


def role_chunk(model: str, text: str = "partial") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}],
    }


FAILURES = {
    "backend_closes": lambda m: Sse([role_chunk(m)], delay=[0.0], then="hang", hang_seconds=1.5),
    "error_event": lambda m: Sse(
        [role_chunk(m), {"error": {"message": "boom", "type": "server_error", "code": 500}}], delay=[0.0, 1.5]
    ),
    "truncated": lambda m: Sse([role_chunk(m), role_chunk(m, "more")], delay=[0.0, 1.5]),
    "malformed": lambda m: Sse([role_chunk(m), b"data: {not json\n\n"], delay=[0.0, 1.5]),
    "limit": lambda m: Sse([role_chunk(m), role_chunk(m, "x" * 5000)], delay=[0.0, 1.5]),
}


@pytest.fixture(scope="module")
def ka_limited(module_harness: Harness) -> Stack:
    """Keep-alive routes whose answers may not exceed 4 KiB of SSE."""
    return module_harness.stack(customize=with_keepalive(KEEPALIVE_S, max_body_bytes=4096, max_event_bytes=4096))


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_failure_after_commit_resets_the_response(ka: Stack, ka_limited: Stack, failure: str) -> None:
    stack = ka_limited if failure == "limit" else ka
    model = unique(failure)
    stack.backend.on(FAILURES[failure](model), model=model)

    result = raw_post(f"{stack.url}/v1/chat/completions", chat(model))

    assert result.status == 200, "the 200 was committed before the failure"
    assert not result.complete, f"the body must not end cleanly: {result.body!r}"
    whitespace, rest = split_body(result.body)
    assert len(whitespace) >= 1 and rest == b"", "nothing but keep-alive bytes was sent"
    wait_service_idle(stack.service)

    with pytest.raises(openai.APIConnectionError):
        sdk(f"{stack.url}/v1").chat.completions.create(model=model, messages=MESSAGES)
    wait_service_idle(stack.service)

    after = unique("after")
    stack.backend.on(Completion("fine"), model=after)
    assert (
        sdk(f"{stack.url}/v1").chat.completions.create(model=after, messages=MESSAGES).choices[0].message.content
        == "fine"
    )
