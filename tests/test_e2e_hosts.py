"""The same cases through Envoy configured the way each ext_proc host configures it.

Real Envoy, real service, scripted backend. Each host shape (``support/hosts.py``) fixes the
processing modes, may ignore mode overrides, and delivers the route settings in route metadata or
in ``metadata_context``: conversion stays exact, pass-through stays byte for byte, errors never end
as a clean 200, full-duplex hosts carry keep-alive, and a request body that arrives in chunks is
rewritten byte for byte. A second ext_proc filter (the tests' endpoint picker) in the chain, before
or after ours, keeps both decisions intact.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from support.backend import Completion, Json, Sse
from support.endpoint_picker import DESTINATION_HEADER, EndpointPicker
from support.hosts import HOSTS, HostShape, add_endpoint_picker, shape_config
from support.probes import raw_post, read_response, service_samples, wait_service_idle
from support.stack import Harness, Stack

pytestmark = pytest.mark.e2e

PATH = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Say something."}]
LEADING_WHITESPACE = re.compile(rb"\s*")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def stable(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k not in ("id", "created")}


def native(reply: Completion, model: str) -> dict[str, Any]:
    return reply.pair(PATH, {"model": model, "messages": MESSAGES})[1]


def reshaped(host: HostShape):  # noqa: ANN201
    def customize(cfg: dict[str, Any]) -> None:
        shaped = shape_config(cfg, host)
        cfg.clear()
        cfg.update(shaped)

    return customize


def service_settings(tmp: Path, host: HostShape) -> Path:
    path = tmp / f"settings-{host.name}.yaml"
    settings: dict[str, Any] = {"metadata_namespaces": list(host.service_namespaces)}
    if host.service_defaults:
        settings["defaults"] = host.service_defaults
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture(scope="module", params=sorted(HOSTS))
def hosted(request: pytest.FixtureRequest, module_harness: Harness) -> tuple[HostShape, Stack]:
    host = HOSTS[request.param]
    stack = module_harness.stack(customize=reshaped(host), settings=service_settings(module_harness.work_dir, host))
    return host, stack


def test_conversion_is_exact(hosted: tuple[HostShape, Stack]) -> None:
    host, stack = hosted
    model, reply = unique("convert"), Completion("Every host converts the same way.", token_delay=0.01)
    stack.backend.on(reply, model=model)

    result = raw_post(f"{stack.url}{PATH}", {"model": model, "messages": MESSAGES})

    assert result.status == 200 and result.complete, (host.name, result.body[:300])
    assert stable(orjson.loads(result.body)) == stable(native(reply, model))
    (sent,) = [r for r in stack.backend.requests if r.model == model]
    assert sent.stream is True


def test_stream_true_passes_byte_for_byte(hosted: tuple[HostShape, Stack]) -> None:
    host, stack = hosted
    model = unique("stream")
    stack.backend.on(Completion("Streamed as it came.", token_delay=0.01), model=model)

    result = raw_post(f"{stack.url}{PATH}", {"model": model, "messages": MESSAGES, "stream": True})

    (sent,) = [r for r in stack.backend.requests if r.model == model]
    assert result.status == 200 and result.complete, host.name
    assert result.body == bytes(sent.response_body)


def test_json_error_passes_byte_for_byte(hosted: tuple[HostShape, Stack]) -> None:
    host, stack = hosted
    model = unique("busy")
    stack.backend.on(
        Json({"error": {"message": "busy", "type": "rate_limit", "param": None, "code": None}}, status=429), model=model
    )

    result = raw_post(f"{stack.url}{PATH}", {"model": model, "messages": MESSAGES})

    (sent,) = [r for r in stack.backend.requests if r.model == model]
    assert (result.status, result.body) == (429, bytes(sent.response_body)), host.name


def test_upstream_error_event_never_ends_as_a_clean_200(hosted: tuple[HostShape, Stack]) -> None:
    host, stack = hosted
    model = unique("error")
    error = {"message": "overloaded", "type": "server_error", "param": None, "code": 503}
    stack.backend.on(Sse([{"error": error}]), model=model)

    result = raw_post(f"{stack.url}{PATH}", {"model": model, "messages": MESSAGES})

    if result.status == 200:  # committed before the error was seen: cut off
        assert not result.complete and not result.body.strip(), (host.name, result.body[:300])
    else:
        assert (result.status, result.json()) == (503, {"error": error}), host.name
    wait_service_idle(stack.service)


def test_keepalive_where_the_host_body_mode_carries_it(hosted: tuple[HostShape, Stack]) -> None:
    """Full-duplex hosts send keep-alive bytes while a slow answer is assembled; the others cannot
    (their body mode sends nothing of ours before the answer) and answer plain JSON."""
    host, stack = hosted
    model = unique("slow")
    reply = Completion("one two three", token_delay=0.8)
    stack.backend.on(reply, model=model)

    result = raw_post(f"{stack.url}{PATH}", {"model": model, "messages": MESSAGES})

    assert result.status == 200 and result.complete, host.name
    whitespace = LEADING_WHITESPACE.match(result.body).group()
    if host.full_duplex:
        assert whitespace.count(b"\n") >= 2, "keep-alive bytes while the answer was assembled"
    else:
        assert whitespace == b""
    assert stable(orjson.loads(result.body)) == stable(native(reply, model))


def test_a_request_body_in_chunks_is_rewritten_byte_for_byte(hosted: tuple[HostShape, Stack]) -> None:
    host, stack = hosted
    model = unique("chunks")
    stack.backend.on(Completion("ok"), model=model)
    prompt = "long context " * 60_000  # ~780 KB: Envoy reads and forwards it in many chunks
    head = orjson.dumps({"model": model, "messages": [{"role": "user", "content": prompt}]})[:-1]
    body = head + b', "seed": 123456789012345678901234567890, "stream": false}'
    before = service_samples(stack.service)

    result = post_in_pieces(f"{stack.url}{PATH}", body, pieces=8)

    assert result.status == 200, (host.name, result.body[:300])
    (sent,) = [r for r in stack.backend.requests if r.model == model]
    edited = body.index(b'"stream"')
    assert sent.body[:edited] == body[:edited], "every byte before the edited member is the client's"
    assert b"123456789012345678901234567890" in sent.body and sent.json["stream"] is True
    chunks = (
        service_samples(stack.service)['buffered_stream_grpc_messages_total{phase="request_body"}']
        - before['buffered_stream_grpc_messages_total{phase="request_body"}']
    )
    if host.modes and host.modes["request_body_mode"] != "BUFFERED":
        assert chunks > 1, "the body arrived in several chunks"


def post_in_pieces(url: str, body: bytes, *, pieces: int) -> Any:
    """POST ``body`` in ``pieces`` writes a little apart, so Envoy reads (and forwards) it in chunks."""
    hostport, _, path = url.removeprefix("http://").partition("/")
    host, _, port = hostport.partition(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        f"POST /{path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
    )
    size = -(-len(body) // pieces)
    for start in range(0, len(body), size):
        sock.sendall(body[start : start + size])
        time.sleep(0.02)  # pacing the input, not a timing assertion
    return read_response(sock)


# --- a second ext_proc filter in the chain ------------------------------------------------------


@pytest.mark.parametrize("picker_first", [True, False], ids=["picker-first", "picker-second"])
def test_endpoint_picker_in_the_same_chain(module_harness: Harness, picker_first: bool) -> None:
    backend = module_harness.backend()
    picker = EndpointPicker(destination=backend.url.removeprefix("http://")).start()
    try:
        stack = module_harness.stack(
            backend=backend,
            customize=lambda cfg: cfg.update(add_endpoint_picker(cfg, picker.target, first=picker_first)),
        )
        model, reply = unique("picked"), Completion("Picked and converted.", token_delay=0.01)
        backend.on(reply, model=model)

        result = raw_post(f"{stack.url}{PATH}", {"model": model, "messages": MESSAGES})

        assert result.status == 200 and result.complete, result.body[:300]
        assert stable(orjson.loads(result.body)) == stable(native(reply, model))
        (sent,) = [r for r in backend.requests if r.model == model]
        assert sent.headers.get(DESTINATION_HEADER) == picker.destination, "the picker's decision reached upstream"
        assert sent.headers.get("x-picked-for-model") == model
        (seen,) = [b for b in picker.bodies if model.encode() in b]
        # First in the chain the picker reads the client's body; second, the rewritten one.
        assert orjson.loads(seen).get("stream", False) is (not picker_first)
    finally:
        picker.stop()
