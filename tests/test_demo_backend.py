"""The demo backend speaks correct HTTP/1.1 and all four APIs: a stream and a non-stream call agree
(the stream, converted by the core, is the very non-stream answer), and a request that asks for a
first-token wait gets vLLM's keep-alive comments before its first event."""

from __future__ import annotations

import http.client
import sys
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from buffered_stream.core.convert import StreamConverter
from buffered_stream.demo_backend import KEEP_ALIVE_COMMENT, WAIT_HEADER
from support.apis import api_of
from support.net import free_port, port_open, wait_until
from support.processes import ManagedProcess
from support.stack import SOURCE_ROOT

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.fixture(scope="module")
def demo_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "buffered_stream.demo_backend",
        "--port",
        str(port),
        "--delay",
        "0.01",
        "--sse-keep-alive-interval",
        "0.1",
    ]
    with ManagedProcess(
        "demo-backend", args, tmp_path_factory.mktemp("demo"), env={"PYTHONPATH": str(SOURCE_ROOT)}
    ) as process:
        wait_until(lambda: port_open(port), 15, message=process.logs)
        yield port


def exchange(
    conn: http.client.HTTPConnection, method: str, path: str, body: Any = None, headers: dict | None = None
) -> http.client.HTTPResponse:
    conn.request(method, path, body=None if body is None else orjson.dumps(body), headers=headers or {})
    return conn.getresponse()


def sse_payloads(raw: bytes) -> list[Any]:
    events = [e for e in raw.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), raw
    return [e[len("data: ") :] if e == "data: [DONE]" else orjson.loads(e[len("data: ") :]) for e in events]


def test_chat_stream_and_native_agree_on_one_keep_alive_connection(demo_port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", demo_port, timeout=10)
    stream_request = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    response = exchange(conn, "POST", "/v1/chat/completions", stream_request)
    assert response.status == 200
    assert response.getheader("content-type") == "text/event-stream"
    assert response.getheader("transfer-encoding") == "chunked"
    events = sse_payloads(response.read())

    native_response = exchange(conn, "POST", "/v1/chat/completions", {**CHAT, "stream": False})
    assert native_response.status == 200
    assert native_response.getheader("content-type") == "application/json"
    native = orjson.loads(native_response.read())
    conn.close()

    assert events[-1] == "[DONE]"
    role, *tokens, finish, usage_chunk, _ = events
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(tokens) == 5
    assert finish["choices"][0]["finish_reason"] == "length"
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 5
    assert {e["object"] for e in events[:-1]} == {"chat.completion.chunk"}
    assert len({e["id"] for e in events[:-1]}) == 1

    assert native["object"] == "chat.completion"
    assert native["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "".join(t["choices"][0]["delta"]["content"] for t in tokens)},
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    assert native["usage"] == usage_chunk["usage"]


def test_completions_stream_without_usage_and_native(demo_port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", demo_port, timeout=10)
    request = {"model": "demo", "prompt": "Say", "max_tokens": 3}
    events = sse_payloads(exchange(conn, "POST", "/v1/completions", {**request, "stream": True}).read())
    native = orjson.loads(exchange(conn, "POST", "/v1/completions", request).read())
    conn.close()
    *chunks, done = events
    assert done == "[DONE]"
    assert all("usage" not in c for c in chunks)  # not asked for
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert native["object"] == "text_completion"
    assert native["choices"][0]["text"] == "".join(c["choices"][0]["text"] for c in chunks)
    assert native["choices"][0]["finish_reason"] == chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert native["usage"]["completion_tokens"] == 3


def test_chunked_request_body_models_and_errors(demo_port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", demo_port, timeout=10)
    body = orjson.dumps({**CHAT, "max_tokens": 2})
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=iter([body[:10], body[10:]]),
        encode_chunked=True,
        headers={"transfer-encoding": "chunked"},
    )
    response = conn.getresponse()
    assert response.status == 200
    assert orjson.loads(response.read())["usage"]["completion_tokens"] == 2

    models = exchange(conn, "GET", "/v1/models")
    assert models.status == 200
    assert [m["id"] for m in orjson.loads(models.read())["data"]] == ["demo"]

    missing = exchange(conn, "GET", "/v2/nothing")
    assert missing.status == 404
    assert "error" in orjson.loads(missing.read())
    bad = exchange(conn, "POST", "/v1/chat/completions", headers={"content-type": "application/json"})
    assert bad.status == 400
    bad.read()
    wrong_method = exchange(conn, "GET", "/v1/completions")
    assert wrong_method.status == 405
    wrong_method.read()
    conn.close()


def test_connection_close_is_honoured(demo_port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", demo_port, timeout=10)
    response = exchange(conn, "GET", "/v1/models", headers={"connection": "close"})
    assert response.getheader("connection") == "close"
    response.read()
    assert response.will_close


# --- the Responses and Messages APIs, and the first-token wait --------------------------------

API_REQUESTS = {
    "chat": ("/v1/chat/completions", {**CHAT, "stream_options": {"include_usage": True}}),
    "completions": ("/v1/completions", {"model": "demo", "prompt": "Say", "max_tokens": 4}),
    "responses": ("/v1/responses", {"model": "demo", "input": "hi"}),
    "responses-incomplete": ("/v1/responses", {"model": "demo", "input": "hi", "max_output_tokens": 3}),
    "messages": ("/v1/messages", {"model": "demo", "max_tokens": 256, "messages": [{"role": "user", "content": "hi"}]}),
    "messages-max-tokens": (
        "/v1/messages",
        {"model": "demo", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]},
    ),
}


def without_random(answer: dict[str, Any]) -> dict[str, Any]:
    """Ids and wall-clock times are drawn anew per call, as a real server draws them."""
    answer = {k: v for k, v in answer.items() if k not in ("id", "created", "created_at")}
    for item in answer.get("output", ()):
        item.pop("id", None)
    return answer


@pytest.mark.parametrize("api", sorted(API_REQUESTS))
def test_every_api_streams_what_its_non_stream_call_answers(demo_port: int, api: str) -> None:
    path, request = API_REQUESTS[api]
    schema = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}.get(path, path.rpartition("/")[2])
    conn = http.client.HTTPConnection("127.0.0.1", demo_port, timeout=10)
    # As buffered-stream rewrites it: chat and completions also ask for the usage chunk.
    rewritten = {**request, "stream": True}
    if schema in ("chat", "completions"):
        rewritten["stream_options"] = {"include_usage": True}
    streamed = exchange(conn, "POST", path, rewritten)
    assert streamed.status == 200 and streamed.getheader("content-type") == "text/event-stream"
    body = streamed.read()
    native = exchange(conn, "POST", path, request)
    assert native.status == 200 and native.getheader("content-type") == "application/json"
    native_answer = orjson.loads(native.read())
    conn.close()

    converter = StreamConverter(api_of(schema), "auto", hints=request)
    converter.feed(body)
    assert without_random(orjson.loads(converter.finish())) == without_random(native_answer)
    if schema in ("responses", "messages"):
        assert body.startswith(b"event: "), "named events, as OpenAI and Anthropic write them"
    if api.endswith(("incomplete", "max-tokens")):
        assert native_answer.get("status", native_answer.get("stop_reason")) in ("incomplete", "max_tokens")


@pytest.mark.parametrize("api", ["chat", "responses", "messages"])
def test_a_requested_wait_streams_keep_alive_comments_before_the_first_event(demo_port: int, api: str) -> None:
    path, request = API_REQUESTS[api]
    conn = http.client.HTTPConnection("127.0.0.1", demo_port, timeout=10)
    response = exchange(conn, "POST", path, {**request, "stream": True}, headers={WAIT_HEADER: "0.5"})
    assert response.status == 200
    body = response.read()
    conn.close()
    lead = body[: body.index(b"data: " if api == "chat" else b"event: ")]
    assert lead.count(KEEP_ALIVE_COMMENT) >= 1
    assert lead == KEEP_ALIVE_COMMENT * lead.count(KEEP_ALIVE_COMMENT), "nothing but comments before the first event"


def test_a_wait_that_is_not_a_number_of_seconds_is_refused(demo_port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", demo_port, timeout=10)
    for value in ("soon", "-1", "99999"):
        refused = exchange(conn, "POST", "/v1/chat/completions", CHAT, headers={WAIT_HEADER: value})
        assert refused.status == 400 and WAIT_HEADER in orjson.loads(refused.read())["error"]["message"]
    conn.close()
