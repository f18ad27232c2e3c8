"""What an operator sees: Prometheus counters, gRPC health and reflection, through real Envoy."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from support.backend import Completion, Sse
from support.net import http_request, wait_until
from support.stack import Harness, Stack

pytestmark = pytest.mark.e2e

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def samples(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(stack.service.metrics()):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.fixture(scope="module")
def stack(module_harness: Harness) -> Stack:
    backend = module_harness.backend()
    backend.on(Completion("alpha beta gamma", token_delay=0.0), model="ok")
    backend.on(Sse([{"error": {"message": "overloaded", "code": 503}}]), model="broken")
    return module_harness.stack(backend=backend)


def test_counters_move_for_converted_passthrough_and_error(stack: Stack) -> None:
    before = samples(stack)
    url = f"{stack.url}/v1/chat/completions"
    assert http_request(url, "POST", {**CHAT, "model": "ok"}).status == 200
    assert http_request(url, "POST", {**CHAT, "model": "ok", "stream": True}).status == 200
    assert http_request(url, "POST", {**CHAT, "model": "broken"}).status == 503
    wait_until(lambda: samples(stack).get(("buffered_stream_in_flight_requests", ()), 1) == 0, 10)
    after = samples(stack)

    requests = "buffered_stream_requests_total"
    assert delta(before, after, requests, outcome="converted") == 1
    assert delta(before, after, requests, outcome="passthrough_stream_requested") == 1
    assert delta(before, after, requests, outcome="upstream_error") == 1
    assert delta(before, after, "buffered_stream_grpc_messages_total", phase="response_body") == 2
    assert delta(before, after, "buffered_stream_response_chunks_total") == 2
    assert delta(before, after, "buffered_stream_response_bytes_total") > 100
    assert delta(before, after, "buffered_stream_sse_events_total") >= 5
    assert delta(before, after, "buffered_stream_assembly_seconds_count") == 2
    assert after[("buffered_stream_converting_requests", ())] == 0


def test_grpc_health_and_reflection(stack: Stack) -> None:
    with grpc.insecure_channel(stack.service.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "envoy.service.ext_proc.v3.ExternalProcessor"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        (reply,) = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for s in reply.list_services_response.service}
        assert {"envoy.service.ext_proc.v3.ExternalProcessor", "grpc.health.v1.Health"} <= names
