"""Live: a real llama.cpp ``llama-server`` behind real Envoy and the service.

A ``stream: false`` request through Envoy is converted (the server streams, the service assembles)
and compared field by field with the server's own answer to the same request sent to it directly.
Only ``id``, ``created``, ``timings`` and tool call ids (per request or wall-clock) may differ.
The requests are the recorder's (``support.record_llama``) for these two APIs. Decoding is greedy
on one slot, and the same throwaway request runs before each of the two, so both start from the
same prompt cache.

The first run builds ``llama-server`` from source (see ``support.llama_server``); run with
``make test-live`` (``pytest -m live``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from buffered_stream.apis import CHAT, COMPLETIONS
from buffered_stream.envoy_config import build_envoy_config
from support.llama_server import LlamaServer, start_llama_server
from support.net import http_request
from support.record_llama import CASES, THROWAWAY
from support.stack import Envoy, Harness, Service

# Not marked e2e, so that `-m e2e` never starts a build; the first build takes longer than the
# suite's per-test timeout.
pytestmark = [pytest.mark.live, pytest.mark.timeout(3600)]

VARYING = ("id", "created", "timings")


def params(schema: str) -> list[Any]:
    """The recorder's cases of ``schema``, so the corpus and this test exercise the same requests."""
    return [pytest.param(case.request, id=case.name) for case in CASES if case.schema == schema]


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    server = start_llama_server(tmp_path_factory.mktemp("llama"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def service(module_harness: Harness) -> Service:
    return module_harness.service()


@pytest.fixture(scope="module", params=["buffered", "streamed"])
def envoy(request: pytest.FixtureRequest, module_harness: Harness, llama: LlamaServer, service: Service) -> Envoy:
    config = build_envoy_config(
        backend_url=llama.url,
        listen=("127.0.0.1", 0),
        admin_port=0,
        ext_proc_target=service.target,
        mode=request.param,
    )
    return module_harness.envoy(config, name=f"envoy-{request.param}")


def converted_count(service: Service) -> float:
    for family in text_string_to_metric_families(service.metrics()):
        if family.name == "buffered_stream_requests":
            return sum(s.value for s in family.samples if s.labels.get("outcome") == "converted")
    return 0.0


def stable(answer: dict[str, Any]) -> dict[str, Any]:
    """The answer without per-request values; tool call ids (random per request) only checked present."""
    answer = {key: value for key, value in answer.items() if key not in VARYING}
    for choice in answer.get("choices", ()):
        for call in choice.get("message", {}).get("tool_calls", ()):
            assert call.pop("id")
    return answer


def post_after_throwaway(llama: LlamaServer, url: str, body: dict[str, Any]) -> Any:
    """``body`` to ``url`` after the throwaway request (sent to the server itself, never converted)."""
    assert http_request(f"{llama.url}/v1/chat/completions", "POST", THROWAWAY, timeout=120).status == 200
    return http_request(url, "POST", body, timeout=300)


def compare(envoy: Envoy, llama: LlamaServer, service: Service, path: str, body: dict[str, Any]) -> dict[str, Any]:
    before = converted_count(service)
    converted = post_after_throwaway(llama, envoy.url() + path, body)
    assert converted.status == 200, converted.body[:500]
    assert converted.headers["content-type"] == "application/json"
    assert converted_count(service) == before + 1, "the request was not converted"

    native = post_after_throwaway(llama, llama.url + path, body)
    assert native.status == 200, native.body[:500]
    assert stable(converted.json()) == stable(native.json())
    return converted.json()


@pytest.mark.parametrize("body", params(CHAT))
def test_chat_answer_equals_the_servers_own(
    body: dict[str, Any], envoy: Envoy, llama: LlamaServer, service: Service
) -> None:
    answer = compare(envoy, llama, service, "/v1/chat/completions", body)
    assert answer["object"] == "chat.completion"
    assert "timings" in answer, "llama.cpp's timings are carried over from the last chunk"


@pytest.mark.parametrize("body", params(COMPLETIONS))
def test_completion_answer_equals_the_servers_own(
    body: dict[str, Any], envoy: Envoy, llama: LlamaServer, service: Service
) -> None:
    answer = compare(envoy, llama, service, "/v1/completions", body)
    assert answer["object"] == "text_completion"
