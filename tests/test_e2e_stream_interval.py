"""``upstream_stream_interval`` and the upstream timing, through real Envoy.

The backend batches tokens the way vLLM does when a request carries ``stream_interval``
(``support.vllm_stream``). A route with the setting gets the exact native answer with one gRPC
message per batch instead of per token; streamed and keep-alive answers report the upstream's
time to first token, generation time and tokens per second (access log, Prometheus per route).
"""

from __future__ import annotations

import copy
import re
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from buffered_stream.envoy_config import enable_keepalive, routes
from support.net import http_request, wait_until
from support.stack import Harness, Stack
from support.vllm_stream import paced_vllm

pytestmark = pytest.mark.e2e

INTERVAL = 8
TOKENS = [" tok"] * 64
TIMED_TOKENS = [" word"] * 48
FIRST_TOKEN_DELAY = 0.5
TOKEN_DELAY = 0.01
# name -> (path prefix, route metadata on top of the shipped chat route's, keep-alive)
ROUTES = {
    "chat_streamed_i1": ("/i1/streamed", {"mode": "streamed", "profile": "vllm"}, False),
    "chat_keepalive_i1": ("/i1/keepalive", {"profile": "vllm"}, True),
    "chat_streamed_i8": (
        "/i8/streamed",
        {"mode": "streamed", "profile": "vllm", "upstream_stream_interval": INTERVAL},
        False,
    ),
    "chat_keepalive_i8": ("/i8/keepalive", {"profile": "vllm", "upstream_stream_interval": INTERVAL}, True),
    "chat_buffered_i8": (
        "/i8/buffered",
        {"mode": "buffered", "profile": "vllm", "upstream_stream_interval": INTERVAL},
        False,
    ),
}


def add_routes(config: dict[str, Any]) -> None:
    table = routes(config)
    chat = next(r for r in table if r["name"] == "chat_completions")
    for name, (prefix, settings, keepalive) in ROUTES.items():
        route = copy.deepcopy(chat)
        route["name"] = name
        route["match"] = {"path": f"{prefix}/v1/chat/completions"}
        route["route"]["prefix_rewrite"] = "/v1/chat/completions"
        route["metadata"]["filter_metadata"]["buffered_stream"].update(settings)
        if keepalive:
            enable_keepalive(route, 5.0)
        table.insert(0, route)


@pytest.fixture(scope="module")
def stack(module_harness: Harness) -> Stack:
    backend = module_harness.backend()
    backend.on(paced_vllm(TOKENS, token_delay=0.003), model="paced")
    backend.on(paced_vllm(TIMED_TOKENS, first_token_delay=FIRST_TOKEN_DELAY, token_delay=TOKEN_DELAY), model="timed")
    return module_harness.stack(backend=backend, customize=add_routes)


def samples(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(stack.service.metrics())
        for s in family.samples
    }


def settled(stack: Stack) -> dict:
    wait_until(lambda: samples(stack).get(("buffered_stream_in_flight_requests", ()), 1) == 0, 10)
    return samples(stack)


def convert(stack: Stack, name: str, model: str) -> tuple[Any, Any, float]:
    """(converted answer, native answer, response_body messages the service got for it)."""
    before = settled(stack)
    body = {"model": model, "messages": [{"role": "user", "content": "go"}]}
    got = http_request(f"{stack.url}{ROUTES[name][0]}/v1/chat/completions", "POST", body, timeout=30)
    assert got.status == 200, got.body[:300]
    after = settled(stack)
    key = ("buffered_stream_grpc_messages_total", (("phase", "response_body"),))
    native = http_request(f"{stack.backend.url}/v1/chat/completions", "POST", body, timeout=30)
    return orjson.loads(got.body), native.json(), after.get(key, 0) - before.get(key, 0)


@pytest.mark.parametrize("mode", ["streamed", "keepalive"])
def test_the_interval_reaches_the_backend_and_the_answer_stays_exact(stack: Stack, mode: str) -> None:
    stack.backend.requests.clear()
    one, native, messages_one = convert(stack, f"chat_{mode}_i1", "paced")
    batched, native_again, messages_batched = convert(stack, f"chat_{mode}_i8", "paced")
    assert one == native and batched == native_again == native
    sent = [r.json for r in stack.backend.requests if r.stream]
    assert "stream_interval" not in sent[0] and sent[1]["stream_interval"] == INTERVAL
    # One message per upstream chunk: 64 one-token chunks against 1 + 63/8 batches (+ the role,
    # usage and [DONE] chunks, which Envoy may coalesce).
    assert messages_one >= len(TOKENS)
    assert messages_batched <= -(-(len(TOKENS) - 1) // INTERVAL) + 1 + 4
    assert messages_batched * (INTERVAL / 2) <= messages_one


def access_log_fields(stack: Stack, route: str, count: int) -> list[dict[str, str]]:
    def lines() -> list[dict[str, str]]:
        found = [
            dict(re.findall(r"(\w+)=(\S+)", line)) for line in stack.envoy.access_log() if f"route={route} " in line
        ]
        return [f for f in found if f.get("outcome", "-") != "-"]

    wait_until(lambda: len(lines()) >= count, 10, message=lambda: "\n".join(stack.envoy.access_log()[-5:]))
    return lines()


@pytest.mark.parametrize("mode", ["streamed", "keepalive"])
def test_first_token_wait_and_rate_as_metadata_and_histograms(stack: Stack, mode: str) -> None:
    route = f"chat_{mode}_i8"
    before = settled(stack)
    answer, native, _ = convert(stack, route, "timed")
    assert answer == native
    after = settled(stack)

    (fields,) = access_log_fields(stack, route, 1)[-1:]
    first_token, rate = float(fields["first_token_seconds"]), float(fields["tokens_per_second"])
    generation = TOKEN_DELAY * (len(TIMED_TOKENS) - 1)
    assert FIRST_TOKEN_DELAY * 0.8 <= first_token <= FIRST_TOKEN_DELAY + 1.5
    assert len(TIMED_TOKENS) / (generation + 1.5) <= rate <= len(TIMED_TOKENS) / (generation * 0.6)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted({"route": route, **labels}.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    for family in ("first_token_seconds", "generation_seconds", "tokens_per_second"):
        assert moved(f"buffered_stream_{family}_count") == 1
    assert moved("buffered_stream_first_token_seconds_sum") == pytest.approx(first_token, abs=1e-3)
    assert moved("buffered_stream_first_token_seconds_bucket", le="0.25") == 0
    assert moved("buffered_stream_first_token_seconds_bucket", le="+Inf") == 1
    assert generation * 0.6 <= moved("buffered_stream_generation_seconds_sum") <= generation + 1.5
    assert moved("buffered_stream_tokens_per_second_sum") == pytest.approx(rate, rel=1e-3)


def test_buffered_mode_reports_no_timing(stack: Stack) -> None:
    """The whole body reaches the service at once: no first chunk to time."""
    answer, native, messages = convert(stack, "chat_buffered_i8", "paced")
    assert answer == native and messages == 1
    fields = access_log_fields(stack, "chat_buffered_i8", 1)[-1]
    assert (
        fields["outcome"] == "converted" and fields["first_token_seconds"] == "-" and fields["tokens_per_second"] == "-"
    )
    assert not any(
        name.startswith("buffered_stream_first_token") and dict(labels).get("route") == "chat_buffered_i8"
        for name, labels in settled(stack)
    )
