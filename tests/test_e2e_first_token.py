"""The wait for the first token, through hops that cut 3 s of silence (real Envoy, LiteLLM, loopback).

Envoy lets the service send body bytes only once the upstream's body has begun, so keep-alive
bytes bridge the first-token wait exactly where the upstream opens its body early, with pings:

- in front of LiteLLM with ``sse_keepalive_ping_interval_seconds`` (and, for ``/v1/messages``,
  ``anthropic_sse_ping_interval_seconds``), for chat completions, Messages and Responses;
- in front of a backend that writes vLLM's ``: keep-alive`` comments (``--sse-keep-alive-interval``).

Without any ping the client's hop still cuts the request, and a route ``timeout`` is the hard
deadline of a keep-alive route: when it fires after the 200 the client sees a reset and the
service counts ``aborted_after_commit``. These tests are slow (a 10 s wait each): the front
placement sends its three requests at once, on stacks shared by the module.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest

from buffered_stream.demo_backend import completion_pair, responses_pair, sse_event
from buffered_stream.envoy_config import converting_routes, enable_keepalive
from support.backend import Completion, Sse
from support.litellm import MASTER_KEY, find_litellm, proxy_config, running_litellm
from support.net import wait_until
from support.probes import outcome_count, raw_post, service_samples
from support.stack import Harness, Stack

pytestmark = pytest.mark.e2e

HOP_IDLE = "3s"
KEEPALIVE_S = 1.0
WAIT_S = 10.0  # the backend's silence before its first chunk: over three times the hop's limit
TOKENS = tuple(f" w{i}" for i in range(10))  # then ten tokens, one a second
TEXT = "".join(TOKENS)
MESSAGES = [{"role": "user", "content": "Say ten words, slowly."}]
VLLM_KEEP_ALIVE = b": keep-alive\n\n"  # vllm/entrypoints/serve/utils/sse_keep_alive.py SSE_KEEP_ALIVE_COMMENT


def keepalive(seconds: float, **route: Any):
    def customize(config: dict[str, Any]) -> None:
        for r in converting_routes(config):
            enable_keepalive(r, seconds)
            r["route"].update(route)

    return customize


def slow_chat() -> Completion:
    """Silent ``WAIT_S`` before its first chunk (headers sent at once), then a token a second."""
    return Completion(tokens=TOKENS, chunk_delays=(WAIT_S, *([1.0] * len(TOKENS))))


def slow_responses() -> Sse:
    events, _ = responses_pair(list(TOKENS), model="front-responses")
    deltas = [i for i, e in enumerate(events) if b"response.output_text.delta" in e.split(b"\n", 1)[0]]
    return Sse(events, delay=[WAIT_S if i == 0 else (1.0 if i in deltas else 0.0) for i in range(len(events))])


# --- in front of LiteLLM, which pings ----------------------------------------------------------


@pytest.fixture(scope="module")
def backend(module_harness: Harness):
    backend = module_harness.backend()
    backend.on(slow_chat(), model="front-chat")
    backend.on(slow_chat(), model="front-messages")
    backend.on(slow_responses(), model="front-responses", path="/v1/responses")
    return backend


@pytest.fixture(scope="module")
def litellm(backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        find_litellm()
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)

    def model(name: str) -> dict[str, Any]:
        return {"model": f"hosted_vllm/{name}", "api_base": f"{backend.url}/v1", "api_key": "none"}

    config = proxy_config({name: model(name) for name in ("front-chat", "front-messages", "front-responses")})
    # Pings every second while the upstream is silent: `: ping` comments on chat completions and
    # Responses, Anthropic `event: ping` events on /v1/messages (its own setting, default 15 s).
    config["litellm_settings"].update(sse_keepalive_ping_interval_seconds=1, anthropic_sse_ping_interval_seconds=1)
    with running_litellm(config, tmp_path_factory.mktemp("litellm")) as url:
        yield url


def read_stream(base_url: str, path: str, body: dict[str, Any]) -> bytes:
    """A ``stream: true`` call's whole body, straight from LiteLLM."""
    host, _, port = base_url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        headers = {"authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"}
        conn.request("POST", path, orjson.dumps({**body, "stream": True}), headers)
        response = conn.getresponse()
        assert response.status == 200, response.read()
        return response.read()
    finally:
        conn.close()


CALLS = {
    "chat": ("/v1/chat/completions", {"model": "front-chat", "messages": MESSAGES}),
    "messages": ("/v1/messages", {"model": "front-messages", "max_tokens": 64, "messages": MESSAGES}),
    "responses": ("/v1/responses", {"model": "front-responses", "input": "Say ten words, slowly."}),
}


@pytest.fixture(scope="module")
def front(module_harness: Harness, litellm: str) -> dict[str, Any]:
    """Client → load balancer (3 s idle) → Envoy + buffered-stream (keep-alive 1 s) → LiteLLM →
    backend; the three APIs through the SDKs, and the three as LiteLLM streams them, all at once."""
    stack = module_harness.stack(backend_url=litellm, customize=keepalive(KEEPALIVE_S))
    base = module_harness.hop(stack.url, idle_timeout=HOP_IDLE, timeout="0s").url("hop")
    # A float timeout is the SDKs' per-read limit: as short as the hop's, far shorter than the wait.
    openai_client = openai.OpenAI(base_url=f"{base}/v1", api_key=MASTER_KEY, max_retries=0, timeout=3.0)
    anthropic_client = anthropic.Anthropic(base_url=base, auth_token=MASTER_KEY, max_retries=0, timeout=3.0)
    chat_path, chat = CALLS["chat"]
    messages_path, messages = CALLS["messages"]
    responses_path, responses = CALLS["responses"]
    jobs = {
        "chat": lambda: openai_client.chat.completions.with_raw_response.create(**chat),
        "messages": lambda: anthropic_client.messages.with_raw_response.create(**messages),
        "responses": lambda: openai_client.responses.with_raw_response.create(**responses),
        "chat-stream": lambda: read_stream(litellm, chat_path, chat),
        "messages-stream": lambda: read_stream(litellm, messages_path, messages),
        "responses-stream": lambda: read_stream(litellm, responses_path, responses),
    }
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        results = {name: future.result(timeout=120) for name, future in futures.items()}
    return {**results, "stack": stack}


def before_first(body: bytes, marker: bytes) -> bytes:
    return body[: body.index(marker)]


def test_front_chat_completions_with_litellm_pings(front: dict[str, Any]) -> None:
    """LiteLLM writes ``: ping`` comments from the first second on (its keep-alive wrapper opens
    the stream before the upstream's first chunk): buffered-stream's newlines start with them."""
    pings = before_first(front["chat-stream"], b"data: ")
    assert pings.count(b": ping\n\n") >= 5 and pings == b": ping\n\n" * pings.count(b": ping\n\n")

    raw = front["chat"]
    assert raw.http_response.status_code == 200
    assert raw.http_response.content.startswith(b"\n" * 8), "newlines through the whole first-token wait"
    answer = raw.parse()
    native = completion_pair("/v1/chat/completions", list(TOKENS), model="front-chat", prompt_tokens=7)[1]
    assert answer.choices[0].message.content == native["choices"][0]["message"]["content"] == TEXT
    assert answer.choices[0].finish_reason == "stop"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (7, len(TOKENS))


def test_front_messages_with_litellm_anthropic_pings(front: dict[str, Any]) -> None:
    """On ``/v1/messages`` LiteLLM sends ``message_start`` at once and then, while the upstream is
    silent, Anthropic's ``event: ping`` every ``anthropic_sse_ping_interval_seconds``."""
    stream = front["messages-stream"]
    assert stream.startswith(b"event: message_start")
    assert before_first(stream, b"event: content_block_delta").count(b'event: ping\ndata: {"type": "ping"}\n\n') >= 5

    raw = front["messages"]
    assert raw.http_response.status_code == 200
    assert raw.http_response.content.startswith(b"\n" * 8)
    message = raw.parse()
    assert [(block.type, block.text) for block in message.content] == [("text", TEXT)]
    assert (message.role, message.stop_reason) == ("assistant", "end_turn")
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, len(TOKENS))


def test_front_responses_with_litellm_pings(front: dict[str, Any]) -> None:
    """On ``/v1/responses`` LiteLLM writes the same ``: ping`` comments before the first event."""
    pings = before_first(front["responses-stream"], b"data: ")
    assert pings.count(b": ping\n\n") >= 5 and pings == b": ping\n\n" * pings.count(b": ping\n\n")

    raw = front["responses"]
    assert raw.http_response.status_code == 200
    assert raw.http_response.content.startswith(b"\n" * 8)
    response = raw.parse()
    _, native = responses_pair(list(TOKENS), model="front-responses")
    assert response.output_text == TEXT and response.status == native["status"] == "completed"
    assert response.usage.output_tokens == native["usage"]["output_tokens"]
    stack: Stack = front["stack"]
    assert outcome_count(stack.service, "converted_keepalive") >= 3


# --- buffered-stream alone in front of a backend that writes vLLM's comments ------------------


@pytest.fixture(scope="module")
def alone(module_harness: Harness) -> Stack:
    """Envoy + buffered-stream (keep-alive 1 s) in front of a scripted backend."""
    return module_harness.stack(customize=keepalive(KEEPALIVE_S))


def commented(model: str, tokens: tuple[str, ...]) -> tuple[Sse, dict[str, Any]]:
    """vLLM with ``--sse-keep-alive-interval 1``: ``: keep-alive`` every second of a 10 s wait
    (queueing and prefill), then a chunk per second."""
    chunks, native = completion_pair("/v1/chat/completions", list(tokens), model=model, prompt_tokens=7)
    events = [VLLM_KEEP_ALIVE] * int(WAIT_S) + [sse_event(c) for c in chunks] + [sse_event("[DONE]")]
    delays = [1.0] * int(WAIT_S) + [0.0] + [1.0] * (len(chunks) - 1)
    return Sse(events, delay=delays), native


def stable(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k not in ("id", "created")}


def test_backend_keep_alive_comments_carry_the_keepalive_through_the_first_token_wait(
    module_harness: Harness, alone: Stack
) -> None:
    """The comments open the upstream body: the service's first body chunk is a ping, and its
    keep-alive clock starts there (``body_started``), ten seconds before the first token."""
    reply, native = commented("vllm-comments", TOKENS[:3])
    alone.backend.on(reply, model="vllm-comments")
    hop = module_harness.hop(alone.url, idle_timeout=HOP_IDLE, timeout="0s")
    before = service_samples(alone.service).get("buffered_stream_keepalive_bytes_total", 0.0)

    result = raw_post(f"{hop.url('hop')}/v1/chat/completions", {"model": "vllm-comments", "messages": MESSAGES})

    assert result.status == 200 and result.complete, result.body[:60]
    document = result.body.lstrip(b"\n")
    newlines = len(result.body) - len(document)
    # Three chunks a second apart after the wait: at most four newlines can follow the first token.
    assert newlines >= 8, result.body[:40]
    assert stable(orjson.loads(document)) == stable(native)
    upstream = alone.backend.requests[-1]
    assert upstream.json["stream"] is True and upstream.response_body.startswith(VLLM_KEEP_ALIVE * int(WAIT_S))
    assert service_samples(alone.service)["buffered_stream_keepalive_bytes_total"] - before == newlines


def test_without_any_upstream_ping_the_hop_still_cuts(module_harness: Harness, alone: Stack) -> None:
    """The limit that stays: a backend silent before its first byte gives Envoy no body to answer
    in, so no keep-alive byte can leave, and a 3 s-idle hop cuts the request after the 200."""
    alone.backend.on(slow_chat(), model="silent")
    hop = module_harness.hop(alone.url, idle_timeout=HOP_IDLE, timeout="0s")
    aborted_before = outcome_count(alone.service, "aborted_after_commit")
    started = time.monotonic()

    result = raw_post(f"{hop.url('hop')}/v1/chat/completions", {"model": "silent", "messages": MESSAGES})

    assert time.monotonic() - started < WAIT_S - 1, "cut by the hop, long before the first token"
    assert not (result.status == 200 and result.complete), result.raw[:200]
    assert result.body.strip() == b"" or result.status == 504, result.body[:200]
    # The 200 had gone out when the hop gave up: the stream ended after the commit.
    wait_until(
        lambda: outcome_count(alone.service, "aborted_after_commit") > aborted_before,
        15,
        message="aborted_after_commit counted",
    )


# --- the route timeout: the hard deadline of a keep-alive route ------------------------------------


def test_route_timeout_after_the_200_resets_the_response_and_is_counted(module_harness: Harness, alone: Stack) -> None:
    """Keep-alive bytes reset every idle timer, so the route ``timeout`` is what ends a generation
    that runs too long: it fires after the 200, the client sees a reset (never a clean end), and
    the service counts ``aborted_after_commit``, not ``aborted``."""
    deadline = module_harness.stack(backend=alone.backend, customize=keepalive(0.5, timeout="3s"))
    deadline.backend.on(Completion(tokens=TOKENS, token_delay=1.0), model="too-long")
    counts = {o: outcome_count(deadline.service, o) for o in ("aborted_after_commit", "aborted")}

    result = raw_post(f"{deadline.url}/v1/chat/completions", {"model": "too-long", "messages": MESSAGES})

    assert result.status == 200 and result.headers["content-type"] == "application/json"
    assert not result.complete, f"the body must not end cleanly: {result.raw[-80:]!r}"
    assert result.body and result.body.strip() == b"", "only keep-alive bytes went out"
    wait_until(
        lambda: outcome_count(deadline.service, "aborted_after_commit") == counts["aborted_after_commit"] + 1,
        15,
        message="aborted_after_commit counted",
    )
    assert outcome_count(deadline.service, "aborted") == counts["aborted"]
    wait_until(
        lambda: any(" 200 UT " in line and "route=chat_completions" in line for line in deadline.envoy.access_log()),
        15,
        message=lambda: "\n".join(deadline.envoy.access_log()),
    )


def test_deadline_outcome_is_documented() -> None:
    docs = Path(__file__).resolve().parents[1] / "docs"
    assert "`aborted_after_commit`" in (docs / "keepalive.md").read_text()
    assert "`aborted_after_commit`" in (docs / "operations.md").read_text()
