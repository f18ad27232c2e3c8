"""The scriptable test backend does what its replies say, directly and through a real Envoy."""

from __future__ import annotations

import http.client
import socket

import orjson
import pytest

from buffered_stream.envoy_config import build_envoy_config
from support.backend import Completion, Json, Raw, ScriptedBackend, Silence, Sse
from support.net import http_request, wait_until
from support.stack import Harness

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def data_lines(body: bytes) -> list[bytes]:
    return [line for line in body.split(b"\n") if line.startswith(b"data: ")]


def test_completion_answers_both_modes_and_records_requests(backend: ScriptedBackend) -> None:
    backend.on(Completion("one two three"), model="m")
    url = f"{backend.url}/v1/chat/completions"
    stream = http_request(url, "POST", {**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    native = http_request(url, "POST", {**CHAT, "stream": False})

    assert stream.status == 200 and stream.headers["content-type"] == "text/event-stream"
    lines = data_lines(stream.body)
    assert lines[-1] == b"data: [DONE]"
    assert len(lines) == 1 + 3 + 1 + 1 + 1  # role, tokens, finish, usage, [DONE]
    assert native.json()["choices"][0]["message"] == {"role": "assistant", "content": "one two three"}

    first, second = backend.wait_for_requests(2)
    assert (first.method, first.path, first.model, first.stream) == ("POST", "/v1/chat/completions", "m", True)
    assert second.stream is False
    assert first.headers["content-type"] == "application/json"
    assert first.response_body == stream.body
    assert second.response_body == native.body
    assert first.finished.wait(5) and second.finished.wait(5)
    assert first.outcome == second.outcome == "complete"


def test_rules_match_newest_first_and_defaults_remain(backend: ScriptedBackend) -> None:
    backend.on(Json({"error": {"message": "busy"}}, status=429), model="busy")
    backend.on(lambda request: Json({"echo": request.json["model"]}), model="echo")
    assert http_request(f"{backend.url}/v1/chat/completions", "POST", {"model": "busy"}).status == 429
    assert http_request(f"{backend.url}/v1/completions", "POST", {"model": "echo"}).json() == {"echo": "echo"}
    assert http_request(f"{backend.url}/v1/models").json()["data"][0]["id"] == "test-model"
    assert http_request(f"{backend.url}/nothing").status == 404
    backend.on(Json({"data": []}), path="/v1/models")
    assert http_request(f"{backend.url}/v1/models").json() == {"data": []}


def test_sse_close_mid_stream_and_raw_and_silence(backend: ScriptedBackend) -> None:
    backend.on(Sse([{"a": 1}], then="close"), model="cut")
    backend.on(Raw(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"), model="raw")
    backend.on(Silence(0.2), model="silent")
    for model in ("cut", "raw", "silent"):
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            http_request(f"{backend.url}/v1/chat/completions", "POST", {"model": model}, timeout=5)
    requests = backend.wait_for_requests(3)
    wait_until(lambda: all(r.finished.is_set() for r in requests), 5)
    assert [r.outcome for r in requests] == ["closed", "closed", "closed"]
    assert requests[0].response_body == b'data: {"a":1}\n\n'


def test_client_leaving_mid_stream_is_recorded(backend: ScriptedBackend) -> None:
    backend.on(Completion("a b c d e f g h", token_delay=0.1), model="m")
    with socket.create_connection(("127.0.0.1", backend.port)) as sock:
        body = orjson.dumps({**CHAT, "stream": True})
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
    (request,) = backend.wait_for_requests(1)
    assert request.finished.wait(5)
    assert request.outcome == "client_gone"


def test_envoy_pass_through_routes_need_no_service(harness: Harness, backend: ScriptedBackend) -> None:
    # Routes with ext_proc disabled never contact the service: nothing listens on its port here.
    config = build_envoy_config(
        backend_url=backend.url, listen=("127.0.0.1", 0), admin_port=0, ext_proc_target="127.0.0.1:1"
    )
    envoy = harness.envoy(config)
    models = http_request(f"{envoy.url()}/v1/models")
    assert models.status == 200
    assert models.body == backend.requests[-1].response_body
    direct = http_request(f"{envoy.url()}/direct/v1/chat/completions", "POST", {**CHAT, "stream": False})
    assert direct.status == 200
    assert direct.json()["object"] == "chat.completion"
    assert backend.requests[-1].path == "/v1/chat/completions"
    # A converting route with the service down: 502 from status_on_error, never the raw stream.
    converted = http_request(f"{envoy.url()}/v1/chat/completions", "POST", {**CHAT, "stream": False})
    assert converted.status == 502
    assert converted.headers["content-type"] == "application/json"
    assert converted.json()["error"]["code"].startswith("ext_proc_error_gRPC_error_14")
    wait_until(lambda: any("/v1/models" in line for line in envoy.access_log()), 10)


def test_hop_idle_timeout_cuts_a_silent_non_stream_call(harness: Harness, backend: ScriptedBackend) -> None:
    backend.on(Completion("a b c d", token_delay=0.5), model="slow")
    hop = harness.hop(backend.url, idle_timeout="1s")
    silent = http_request(f"{hop.url('hop')}/v1/chat/completions", "POST", {"model": "slow", "stream": False})
    assert silent.status == 504
    streamed = http_request(f"{hop.url('hop')}/v1/chat/completions", "POST", {"model": "slow", "stream": True})
    assert streamed.status == 200
    assert data_lines(streamed.body)[-1] == b"data: [DONE]"
