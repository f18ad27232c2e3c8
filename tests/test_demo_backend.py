"""The demo backend speaks correct HTTP/1.1 and OpenAI: a stream and a non-stream call agree."""

from __future__ import annotations

import http.client
import sys
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from support.net import free_port, port_open, wait_until
from support.processes import ManagedProcess
from support.stack import SOURCE_ROOT

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.fixture(scope="module")
def demo_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    args = [sys.executable, "-m", "buffered_stream.demo_backend", "--port", str(port), "--delay", "0.01"]
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
    return [e[len("data: "):] if e == "data: [DONE]" else orjson.loads(e[len("data: "):]) for e in events]


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
    conn.request("POST", "/v1/chat/completions", body=iter([body[:10], body[10:]]), encode_chunked=True,
                 headers={"transfer-encoding": "chunked"})
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
