"""A tiny OpenAI-compatible backend that generates slowly, to try buffered-stream without a GPU.

It streams like vLLM (a role chunk, one chunk per token every ``delay`` seconds, a finish chunk,
a ``choices: []`` usage chunk when ``stream_options.include_usage`` is set, ``[DONE]``) and
answers ``stream: false`` with the matching native JSON, so a converted answer can be compared
with the real one. Plain asyncio streams and HTTP/1.1 (keep-alive, chunked both ways); the small
HTTP layer is reused by the test backend.

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


async def read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> HttpRequest | None:
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


def _demo_generation(path: str, request: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    words = DEMO_TEXT.split(" ")
    tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]
    max_tokens = request.get("max_tokens") or request.get("max_completion_tokens") or len(tokens)
    finish_reason = "length" if max_tokens < len(tokens) else "stop"
    prompt = orjson.dumps(request.get("messages") or request.get("prompt") or "").decode()
    return completion_pair(
        path,
        tokens[: max(int(max_tokens), 0)],
        model=request.get("model") or DEMO_MODEL,
        prompt_tokens=len(prompt.split()),
        finish_reason=finish_reason,
        include_usage=bool((request.get("stream_options") or {}).get("include_usage")),
    )


def models_body(model_ids: Iterable[str] = (DEMO_MODEL,)) -> bytes:
    """The ``GET /v1/models`` answer."""
    data = [
        {"id": m, "object": "model", "created": 0, "owned_by": "buffered-stream"} for m in model_ids
    ]
    return orjson.dumps({"object": "list", "data": data})


# --- the demo server ------------------------------------------------------------------------

GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")


async def _answer(request: HttpRequest, writer: asyncio.StreamWriter, delay: float) -> None:
    keep_alive = request.keep_alive
    expected_method = "GET" if request.path == "/v1/models" else "POST"
    if request.path != "/v1/models" and request.path not in GENERATION_PATHS:
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
    chunks, native = _demo_generation(request.path, body)
    if not body.get("stream"):
        await asyncio.sleep(delay * len(chunks))  # the same generation time, in silence
        await send_response(writer, 200, orjson.dumps(native), keep_alive=keep_alive)
        return
    await start_chunked(writer, keep_alive=keep_alive)
    for chunk in chunks:
        await asyncio.sleep(delay)
        await send_chunk(writer, sse_event(chunk))
    await send_chunk(writer, sse_event("[DONE]"))
    await end_chunked(writer)


async def serve_demo(host: str = "127.0.0.1", port: int = 8000, delay: float = 0.2) -> None:
    """Serve the demo backend until cancelled."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (request := await read_request(reader, writer)) is not None:
                await _answer(request, writer, delay)
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
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve_demo(args.host, args.port, args.delay))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
