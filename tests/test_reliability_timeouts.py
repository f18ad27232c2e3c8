"""Fault matrix, part 2: silence, slowness and clients that leave, against a short route idle timeout.

The converting routes get ``idle_timeout: 3s`` so that every timeout here fires within seconds.
After each case the service must hold nothing: its in-flight and converting gauges return to 0.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from buffered_stream.envoy_config import routes
from support.backend import Completion, RecordedRequest, ScriptedBackend, Silence, Sse
from support.net import http_request, wait_until
from support.probes import open_post, outcome_count, raw_post, wait_service_idle
from support.stack import Harness, Stack

pytestmark = pytest.mark.e2e

IDLE_TIMEOUT_S = 3.0
MESSAGES = [{"role": "user", "content": "Say something."}]


def short_idle_timeout(config: dict[str, Any]) -> None:
    for route in routes(config):
        if route["route"].get("idle_timeout"):
            route["route"]["idle_timeout"] = f"{IDLE_TIMEOUT_S:g}s"


@pytest.fixture(scope="module")
def stacks(module_harness: Harness) -> dict[str, Stack]:
    """One buffered and one streamed stack in front of the same backend, idle timeout 3 s."""
    return module_harness.stack_per_mode(customize=short_idle_timeout)


def unique_model(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def body(model: str) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES}


def role_chunk(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "partial-words"}, "finish_reason": None}],
    }


def backend_request(backend: ScriptedBackend, model: str) -> RecordedRequest:
    return wait_until(
        lambda: next((r for r in backend.requests if r.model == model), None),
        10,
        message=f"the backend to receive the request for {model}",
    )


# --- backend silent for longer than the route idle timeout ---------------------------------


@pytest.mark.parametrize("mode", ["buffered", "streamed"])
@pytest.mark.parametrize("when", ["before_headers", "mid_stream"])
def test_silent_backend_gets_envoys_504_and_the_service_lets_go(stacks: dict[str, Stack], mode: str, when: str) -> None:
    stack = stacks[mode]
    model = unique_model(f"silent-{when}")
    silence = Silence(30) if when == "before_headers" else Sse([role_chunk(model)], then="hang", hang_seconds=30)
    stack.backend.on(silence, model=model)

    started = time.monotonic()
    result = raw_post(f"{stack.url}/v1/chat/completions", body(model), timeout=30)
    waited = time.monotonic() - started

    assert waited >= IDLE_TIMEOUT_S - 0.1, f"answered after {waited:.1f} s, before the idle timeout"
    if mode == "streamed" and when == "mid_stream":
        # The 200 went out with the first bytes: the timeout can only cut the response off.
        assert result.status == 200 and not result.complete, result.raw[:500]
        assert result.body == b"", f"bytes of the stream reached the client: {result.raw[:500]!r}"
    else:
        assert result.status == 504, result.raw[:500]
        assert result.headers["content-type"] == "application/json"
        assert result.json()["error"] == {
            "code": "stream_idle_timeout",
            "message": "stream timeout",
            "param": None,
            "type": "envoy_error",
        }
    assert b"partial-words" not in result.raw
    wait_service_idle(stack.service)


# --- slow but alive -----------------------------------------------------------------------


def test_slow_backend_under_the_idle_timeout_gives_the_full_answer_in_both_modes(stacks: dict[str, Stack]) -> None:
    """A token every 1.5 s for ~16 s behind a 3 s idle timeout; the unconverted call dies at 3 s."""
    text = "slow tokens keep the idle timer from firing"
    model = unique_model("slow")
    stacks["buffered"].backend.on(Completion(text, token_delay=1.5, first_token_delay=1.5), model=model)
    with ThreadPoolExecutor(3) as pool:
        converted = {
            mode: pool.submit(http_request, f"{stack.url}/v1/chat/completions", "POST", body(model))
            for mode, stack in stacks.items()
        }
        direct = pool.submit(http_request, f"{stacks['buffered'].url}/direct/v1/chat/completions", "POST", body(model))
        unconverted = direct.result()
        assert unconverted.status == 504, unconverted.body
        for mode, future in converted.items():
            result = future.result()
            assert result.status == 200, f"{mode}: {result.status} {result.body[:500]!r}"
            assert result.elapsed > 4 * IDLE_TIMEOUT_S
            answer = result.json()
            assert answer["choices"][0]["message"]["content"] == text, mode
            assert answer["usage"]["completion_tokens"] == len(text.split()), mode
    for stack in stacks.values():
        wait_service_idle(stack.service)


# --- client disconnects mid-generation ----------------------------------------------------


@pytest.mark.parametrize("mode", ["buffered", "streamed"])
def test_client_leaving_mid_generation_closes_the_backend_connection_and_frees_the_request(
    stacks: dict[str, Stack], mode: str
) -> None:
    stack = stacks[mode]
    model = unique_model(f"leaving-{mode}")
    stack.backend.on(Completion(" ".join(["word"] * 200), token_delay=0.05), model=model)
    # Streamed mode had sent the 200: a stream that ends after it is counted apart.
    outcome = "aborted" if mode == "buffered" else "aborted_after_commit"
    aborted_before = outcome_count(stack.service, outcome)

    client = open_post(f"{stack.url}/v1/chat/completions", body(model))
    upstream = backend_request(stack.backend, model)
    wait_until(lambda: len(upstream.response_body) > 0, 10, message="the generation to start")
    client.close()

    # "Promptly": within a few token intervals, not at the end of the 10 s generation.
    wait_until(upstream.finished.is_set, 3, message="the backend to see its connection closed")
    assert upstream.outcome == "client_gone", upstream.outcome
    generated = upstream.response_body.count(b"data:")
    assert generated < 200, f"the backend generated all {generated} events for a client that left"
    wait_service_idle(stack.service)
    wait_until(
        lambda: outcome_count(stack.service, outcome) == aborted_before + 1,
        5,
        message=f"the request counted as {outcome}",
    )
