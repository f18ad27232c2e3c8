"""A tiny backend that generates slowly, to try buffered-stream without a GPU.

It serves the four APIs buffered-stream converts: chat completions and completions stream like
vLLM (a role chunk, one chunk per token every ``delay`` seconds, a finish chunk, a ``choices: []``
usage chunk when ``stream_options.include_usage`` is set, ``[DONE]``), ``/v1/responses`` like
OpenAI's Responses API (numbered named events up to ``response.completed``) and ``/v1/messages``
like Anthropic's Messages API (``message_start`` ... ``message_stop``, with its ``ping``). Each
answers ``stream: false`` with the matching native JSON, so a converted answer can be compared
with the real one. A request with the header ``x-demo-wait: SECONDS`` waits that long before its
first token, as a queued or prefilling server does; a stream fills the wait with vLLM's
``: keep-alive`` comments (``--sse-keep-alive-interval``). Plain asyncio streams and HTTP/1.1
(keep-alive, chunked both ways); the small HTTP layer is reused by the test backend.

    python -m buffered_stream.demo_backend --port 8000 --delay 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson

DEMO_MODEL = "demo"
DEMO_TEXT = (
    "Buffered stream keeps slow generations alive: the backend streams every token, Envoy sees "
    "bytes flowing, and the client still receives one plain JSON answer at the end."
)


# --- HTTP/1.1 -------------------------------------------------------------------------------


@dataclass
class HttpRequest:
    """One parsed request; header names are lower-case."""

    method: str
    path: str
    version: str
    headers: dict[str, str]
    body: bytes

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"

    def json(self) -> Any:
        """The body as JSON, or None if it is not JSON."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> HttpRequest | None:
    """Read one request (Content-Length or chunked body); None when the peer closed cleanly."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial.strip():
            raise ConnectionError("connection closed inside a request head") from e
        return None
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, version = request_line.split(" ", 2)
    headers: dict[str, str] = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return HttpRequest(method, path, version, headers, body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, if any
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:  # a status the stdlib does not name; the phrase is informational anyway
        reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def send_response(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    content_type: str = "application/json",
    *,
    keep_alive: bool = True,
) -> None:
    """A complete response with Content-Length."""
    headers = [
        ("content-type", content_type),
        ("content-length", str(len(body))),
        ("connection", "keep-alive" if keep_alive else "close"),
    ]
    writer.write(_head(status, headers) + body)
    await writer.drain()


async def start_chunked(
    writer: asyncio.StreamWriter,
    status: int = 200,
    content_type: str = "text/event-stream",
    *,
    keep_alive: bool = True,
) -> None:
    """Response headers for a body sent piece by piece with ``send_chunk``/``end_chunked``."""
    headers = [
        ("content-type", content_type),
        ("transfer-encoding", "chunked"),
        ("cache-control", "no-cache"),
        ("connection", "keep-alive" if keep_alive else "close"),
    ]
    writer.write(_head(status, headers))
    await writer.drain()


async def send_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    if data:  # an empty chunk would end the body
        writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        await writer.drain()


async def end_chunked(writer: asyncio.StreamWriter) -> None:
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def sse_event(payload: dict[str, Any] | str) -> bytes:
    """One ``data:`` event; a str is sent verbatim (``[DONE]``)."""
    data = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
    return f"data: {data}\n\n".encode()


def error_body(message: str, type_: str = "invalid_request_error", code: int | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})


# --- OpenAI shapes --------------------------------------------------------------------------


def completion_pair(
    path: str,
    tokens: list[str],
    *,
    model: str = DEMO_MODEL,
    prompt_tokens: int = 0,
    finish_reason: str = "stop",
    include_usage: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The vLLM-like stream chunks and the matching native answer for one generation.

    ``path`` picks the schema: ``/v1/chat/completions`` or ``/v1/completions``. The native answer
    is exactly what a correct conversion of the chunks must produce (same id and created).
    """
    chat = path.endswith("/chat/completions")
    created = int(time.time())
    base = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
    }

    def chunk(piece: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, **piece, "logprobs": None, "finish_reason": reason}
        return {**base, "choices": [choice]}

    usage = {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + len(tokens),
        "completion_tokens": len(tokens),
    }
    text = "".join(tokens)
    if chat:
        chunks = [chunk({"delta": {"role": "assistant", "content": ""}})]
        chunks += [chunk({"delta": {"content": t}}) for t in tokens]
        chunks.append(chunk({"delta": {"content": ""}}, finish_reason))
        answer = {"index": 0, "message": {"role": "assistant", "content": text}}
        native_object = "chat.completion"
    else:
        chunks = [chunk({"text": t}) for t in tokens]
        chunks.append(chunk({"text": ""}, finish_reason))
        answer = {"index": 0, "text": text}
        native_object = "text_completion"
    if include_usage:
        chunks.append({**base, "choices": [], "usage": usage})
    native = {
        **base,
        "object": native_object,
        "choices": [{**answer, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage,
    }
    return chunks, native


def responses_pair(
    tokens: list[str],
    *,
    model: str = DEMO_MODEL,
    input_tokens: int = 0,
    incomplete: bool = False,
) -> tuple[list[bytes], dict[str, Any]]:
    """A Responses API stream (named events, numbered, as OpenAI and vLLM write them) and the
    matching non-stream ``response`` object: the terminal event's ``response``."""
    text = "".join(tokens)
    response_id, item_id = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}"
    usage = {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": len(tokens),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + len(tokens),
    }
    base = {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "model": model,
        "output": [],
        "parallel_tool_calls": True,
        "temperature": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "usage": None,
        "metadata": {},
    }
    status = "incomplete" if incomplete else "completed"
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    item = {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": [part]}
    native = {
        **base,
        "status": status,
        "output": [item],
        "usage": usage,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
    }
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    payloads: list[dict[str, Any]] = [
        {"type": "response.created", "response": base},
        {"type": "response.in_progress", "response": base},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {**item, "status": "in_progress", "content": []},
        },
        {"type": "response.content_part.added", **where, "part": {**part, "text": ""}},
        *({"type": "response.output_text.delta", **where, "delta": t, "logprobs": []} for t in tokens),
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": part},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": f"response.{status}", "response": native},
    ]
    events = [named_event(p["type"], {**p, "sequence_number": n}) for n, p in enumerate(payloads)]
    return events, native


def messages_pair(
    tokens: list[str], *, model: str = DEMO_MODEL, input_tokens: int = 0, max_tokens_reached: bool = False
) -> tuple[list[bytes], dict[str, Any]]:
    """An Anthropic Messages stream (with the ``ping`` Anthropic sends after ``message_start``)
    and the matching non-stream ``message``."""
    text = "".join(tokens)
    stop_reason = "max_tokens" if max_tokens_reached else "end_turn"
    message = {
        "id": f"msg_{uuid.uuid4().hex}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
    }
    native = {
        **message,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "usage": {"input_tokens": input_tokens, "output_tokens": len(tokens)},
    }
    payloads: list[dict[str, Any]] = [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}} for t in tokens),
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": len(tokens)},
        },
        {"type": "message_stop"},
    ]
    return [named_event(p["type"], p) for p in payloads], native


def named_event(name: str, payload: dict[str, Any]) -> bytes:
    """One ``event: NAME`` + ``data:`` event (Responses and Messages streams)."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def demo_pair(path: str, request: dict[str, Any]) -> tuple[list[bytes], dict[str, Any]]:
    """The demo generation for ``request`` on ``path``: its SSE events (framed) and its native answer."""
    words = DEMO_TEXT.split(" ")
    tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]
    limit_key = {"/v1/responses": ("max_output_tokens",), "/v1/messages": ("max_tokens",)}.get(
        path, ("max_tokens", "max_completion_tokens")
    )
    limit = next((request[k] for k in limit_key if isinstance(request.get(k), int)), None)
    limit = len(tokens) if limit is None else max(limit, 0)
    cut = limit < len(tokens)
    tokens = tokens[:limit]
    prompt = request.get("messages") or request.get("prompt") or request.get("input") or ""
    prompt_tokens = len(orjson.dumps(prompt).decode().split())
    model = request.get("model") or DEMO_MODEL
    if path == "/v1/responses":
        return responses_pair(tokens, model=model, input_tokens=prompt_tokens, incomplete=cut)
    if path == "/v1/messages":
        return messages_pair(tokens, model=model, input_tokens=prompt_tokens, max_tokens_reached=cut)
    chunks, native = completion_pair(
        path,
        tokens,
        model=model,
        prompt_tokens=prompt_tokens,
        finish_reason="length" if cut else "stop",
        include_usage=bool((request.get("stream_options") or {}).get("include_usage")),
    )
    return [*map(sse_event, chunks), sse_event("[DONE]")], native


def models_body(model_ids: Iterable[str] = (DEMO_MODEL,)) -> bytes:
    """The ``GET /v1/models`` answer."""
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "buffered-stream"} for m in model_ids]
    return orjson.dumps({"object": "list", "data": data})


# --- the demo server ------------------------------------------------------------------------

GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")  # the OpenAI-shaped ones (test backend)
DEMO_PATHS = (*GENERATION_PATHS, "/v1/responses", "/v1/messages")
# A request asks the demo to be silent this many seconds before its first token (queueing and
# prefill on a real server); a stream fills the wait with vLLM's keep-alive comments.
WAIT_HEADER = "x-demo-wait"
MAX_WAIT_SECONDS = 3600.0
KEEP_ALIVE_COMMENT = b": keep-alive\n\n"  # vLLM's exact bytes (--sse-keep-alive-interval)


def _wait_seconds(request: HttpRequest) -> float | None:
    """The first-token wait a request asks for, or None when the header is not a number of seconds."""
    value = request.headers.get(WAIT_HEADER, "0")
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= MAX_WAIT_SECONDS else None


async def _answer(request: HttpRequest, writer: asyncio.StreamWriter, delay: float, keep_alive_interval: float) -> None:
    keep_alive = request.keep_alive
    expected_method = "GET" if request.path == "/v1/models" else "POST"
    if request.path != "/v1/models" and request.path not in DEMO_PATHS:
        await send_response(writer, 404, error_body(f"no route {request.path}"), keep_alive=keep_alive)
        return
    if request.method != expected_method:
        await send_response(writer, 405, error_body(f"use {expected_method}"), keep_alive=keep_alive)
        return
    if request.path == "/v1/models":
        await send_response(writer, 200, models_body(), keep_alive=keep_alive)
        return
    body = request.json()
    if not isinstance(body, dict):
        await send_response(writer, 400, error_body("body must be a JSON object"), keep_alive=keep_alive)
        return
    wait = _wait_seconds(request)
    if wait is None:
        message = f"{WAIT_HEADER} must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}"
        await send_response(writer, 400, error_body(message), keep_alive=keep_alive)
        return
    events, native = demo_pair(request.path, body)
    if not body.get("stream"):
        await asyncio.sleep(wait + delay * len(events))  # the same generation time, in silence
        await send_response(writer, 200, orjson.dumps(native), keep_alive=keep_alive)
        return
    await start_chunked(writer, keep_alive=keep_alive)
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        if keep_alive_interval <= 0:
            await asyncio.sleep(left)
            break
        await asyncio.sleep(min(keep_alive_interval, left))
        if deadline - time.monotonic() > 0:
            await send_chunk(writer, KEEP_ALIVE_COMMENT)
    for event in events:
        await asyncio.sleep(delay)
        await send_chunk(writer, event)
    await end_chunked(writer)


async def serve_demo(
    host: str = "127.0.0.1", port: int = 8000, delay: float = 0.2, keep_alive_interval: float = 1.0
) -> None:
    """Serve the demo backend until cancelled; ``keep_alive_interval`` (0: none) paces the
    ``: keep-alive`` comments of a stream whose request asked for a first-token wait."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (request := await read_request(reader, writer)) is not None:
                await _answer(request, writer, delay, keep_alive_interval)
                if not request.keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # the peer went away or spoke no HTTP: just drop the connection
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--delay", type=float, default=0.2, help="seconds between tokens")
    parser.add_argument(
        "--sse-keep-alive-interval",
        type=float,
        default=1.0,
        help=f"seconds between ': keep-alive' comments while a stream waits ({WAIT_HEADER}); 0: none",
    )
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve_demo(args.host, args.port, args.delay, args.sse_keep_alive_interval))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
