"""gRPC messages per HTTP request, per path, counted by the service itself through real Envoy.

The number of ext_proc messages decides the cost of the service, so each path must cost no more
than Envoy allows: nothing on disabled routes; the shipped config skips the request headers (the
route's attributes come with the body), so a converted request costs three.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.backend import Completion
from support.net import http_request
from support.stack import Harness, Stack

pytestmark = pytest.mark.e2e

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def messages_by_phase(stack: Stack) -> dict[str, float]:
    for family in text_string_to_metric_families(stack.service.metrics()):
        if family.name == "buffered_stream_grpc_messages":
            return {s.labels["phase"]: s.value for s in family.samples if s.name.endswith("_total")}
    return {}


def cost(stack: Stack, send: Any) -> dict[str, int]:
    """The messages ``send()`` cost, by phase (phases with none left out)."""
    before = messages_by_phase(stack)
    send()
    after = messages_by_phase(stack)
    return {phase: int(after[phase] - before.get(phase, 0)) for phase in after if after[phase] != before.get(phase, 0)}


@pytest.fixture(scope="module")
def stacks(module_harness: Harness) -> dict[str, Stack]:
    backend = module_harness.backend()
    backend.on(Completion("one two three four", token_delay=0.02))  # each event its own chunk
    return module_harness.stack_per_mode(backend)


def test_converted_buffered_request_costs_three_messages(stacks: dict[str, Stack]) -> None:
    stack = stacks["buffered"]
    spent = cost(stack, lambda: http_request(f"{stack.url}/v1/chat/completions", "POST", CHAT))
    assert spent == {"request_body": 1, "response_headers": 1, "response_body": 1}


def test_converted_streamed_request_costs_one_message_per_upstream_chunk(stacks: dict[str, Stack]) -> None:
    stack = stacks["streamed"]
    spent = cost(stack, lambda: http_request(f"{stack.url}/v1/chat/completions", "POST", CHAT))
    assert "request_headers" not in spent
    assert spent["request_body"] == spent["response_headers"] == 1
    assert spent["response_body"] >= 4


def test_stream_true_costs_two_messages_and_no_body(stacks: dict[str, Stack]) -> None:
    stack = stacks["buffered"]
    spent = cost(stack, lambda: http_request(f"{stack.url}/v1/chat/completions", "POST", {**CHAT, "stream": True}))
    assert spent == {"request_body": 1, "response_headers": 1}


def test_request_without_body_on_an_enabled_route_costs_one_message(stacks: dict[str, Stack]) -> None:
    stack = stacks["buffered"]
    spent = cost(stack, lambda: http_request(f"{stack.url}/v1/chat/completions", "GET"))
    assert spent == {"response_headers": 1}


def test_disabled_routes_cost_nothing(stacks: dict[str, Stack]) -> None:
    stack = stacks["buffered"]
    spent = cost(
        stack,
        lambda: (
            http_request(f"{stack.url}/v1/models", "GET"),
            http_request(f"{stack.url}/direct/v1/chat/completions", "POST", CHAT),
        ),
    )
    assert spent == {}
