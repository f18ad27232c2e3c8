"""OpenAI Responses and Anthropic Messages through real Envoy + service, called with the official
SDKs (non-stream), against a loopback backend that serves a corpus case: the stream when asked for
one, the case's own native answer otherwise.
"""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import orjson
import pytest

from buffered_stream.envoy_config import routes
from support import corpus
from support.backend import Json, RecordedRequest, Sse
from support.net import http_request
from support.stack import Harness, Stack

pytestmark = pytest.mark.e2e


def case(api: str, name: str) -> tuple[dict[str, Any], list[bytes], dict[str, Any] | None]:
    """A corpus case's meta, its stream in 97-byte pieces, and its native answer."""
    found = corpus.load(api, name)
    return found.meta, corpus.fixed_size(found.body, 97), found.native


def serve(meta: dict[str, Any], pieces: list[bytes], native: dict[str, Any] | None):
    def reply(request: RecordedRequest) -> Any:
        if request.stream:
            return Sse(pieces, delay=0.01)
        return Json(native)

    return reply


def blank(answer: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Top-level values the case declares random or wall-clock."""
    return {k: ("<ignored>" if k in meta.get("ignore", ()) else v) for k, v in answer.items()}


def messages_profile(profile: str):
    def customize(config: dict[str, Any]) -> None:
        for route in routes(config):
            if route["name"] == "messages":
                route["metadata"]["filter_metadata"]["buffered_stream"]["profile"] = profile

    return customize


@pytest.fixture(scope="module")
def stack(module_harness: Harness) -> Stack:
    return module_harness.stack(customize=messages_profile("anthropic"))


def backend_requests(stack: Stack, path: str) -> list[RecordedRequest]:
    return [r for r in stack.backend.requests if r.path == path]


# --- Responses ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["openai-text", "openai-function-calls", "openai-reasoning-text"])
def test_responses_create_gets_the_native_response(stack: Stack, name: str) -> None:
    meta, pieces, native = case("responses", name)
    stack.backend.reset()
    stack.backend.on(serve(meta, pieces, native), path="/v1/responses")
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="none", max_retries=0)

    raw = client.responses.with_raw_response.create(**meta["request"])

    assert raw.http_response.status_code == 200
    assert raw.http_response.headers["content-type"] == "application/json"
    assert blank(orjson.loads(raw.http_response.content), meta) == blank(native, meta)
    assert raw.parse().id == native["id"]
    (upstream,) = backend_requests(stack, "/v1/responses")
    assert upstream.json == {**meta["request"], "stream": True}, "only stream: true was added"


def test_responses_failure_keeps_the_upstream_status(stack: Stack) -> None:
    meta, pieces, _ = case("responses", "generic-error-object")
    stack.backend.reset()
    stack.backend.on(serve(meta, pieces, None), path="/v1/responses")
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError) as failed:
        client.responses.create(model="m", input="hi")
    assert failed.value.status_code == meta["error"]["status"]


def test_background_responses_and_other_paths_pass_through(stack: Stack) -> None:
    stack.backend.reset()
    queued = {"id": "resp_1", "object": "response", "status": "queued"}
    stack.backend.on(Json(queued), path="/v1/responses")
    stack.backend.on(Json(queued), path="/v1/responses/resp_1", method="GET")

    result = http_request(f"{stack.url}/v1/responses", "POST", {"model": "m", "input": "hi", "background": True})
    assert result.status == 200 and result.json() == queued
    assert "stream" not in backend_requests(stack, "/v1/responses")[0].json
    assert http_request(f"{stack.url}/v1/responses/resp_1", "GET").json() == queued


# --- Anthropic Messages ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["anthropic-text", "anthropic-tool-use-parallel", "anthropic-thinking-text"])
def test_messages_create_gets_the_native_message(stack: Stack, name: str) -> None:
    meta, pieces, native = case("messages", name)
    stack.backend.reset()
    stack.backend.on(serve(meta, pieces, native), path="/v1/messages")
    client = anthropic.Anthropic(base_url=stack.url, api_key="none", max_retries=0)

    raw = client.messages.with_raw_response.create(**meta["request"])

    assert raw.http_response.status_code == 200
    answer = orjson.loads(raw.http_response.content)
    assert blank(answer, meta) == blank(native, meta)
    assert raw.parse().content[0].type == native["content"][0]["type"]
    (upstream,) = backend_requests(stack, "/v1/messages")
    assert upstream.json == {**meta["request"], "stream": True}


def test_messages_error_event_is_anthropics_error_with_its_status(stack: Stack) -> None:
    meta, pieces, _ = case("messages", "anthropic-error-overloaded")
    stack.backend.reset()
    stack.backend.on(serve(meta, pieces, None), path="/v1/messages")
    client = anthropic.Anthropic(base_url=stack.url, api_key="none", max_retries=0)

    with pytest.raises(anthropic.APIStatusError) as failed:
        client.messages.create(**meta["request"])
    assert failed.value.status_code == 529
    assert failed.value.body == meta["error"]["body"]


def test_count_tokens_passes_through(stack: Stack) -> None:
    stack.backend.reset()
    stack.backend.on(Json({"input_tokens": 12}), path="/v1/messages/count_tokens")
    client = anthropic.Anthropic(base_url=stack.url, api_key="none", max_retries=0)
    counted = client.messages.count_tokens(model="m", messages=[{"role": "user", "content": "hi"}])
    assert counted.input_tokens == 12
    (upstream,) = backend_requests(stack, "/v1/messages/count_tokens")
    assert "stream" not in upstream.json
