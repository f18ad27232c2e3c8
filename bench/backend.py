"""A fast OpenAI-compatible backend for load tests: every answer is pre-rendered bytes.

It must never be the bottleneck of the thing it measures, so a request costs one small
``orjson.loads`` and one ``write`` of bytes rendered at start-up. The request's ``model`` picks
the answer:

- ``bench-<N>``: an N-token chat answer, as vLLM-style SSE for ``stream: true`` (one HTTP chunk per
  event) and as the matching native JSON for ``stream: false``;
- ``hold-<N>``: the same stream, but everything before the finish chunk is sent at once and the
  rest only after ``GET /release`` — requests that stay in flight as long as the caller wants;
- ``paced-<N>``: the same stream, one event every millisecond (one upstream chunk per token, as a
  real server sends them);
- ``vllm-<N>``: vLLM 0.33's own shapes (the ``vllm`` profile's answer), generated at one token per
  millisecond and sent the way vLLM batches them for the request's ``stream_interval`` (the first
  token at once, then a chunk every ``stream_interval`` tokens, the rest with the finish:
  ``vllm/v1/engine/output_processor.py``); ``vllmburst-<N>``: the same bytes all at once.

``GET /held`` says how many streams are being held; ``GET /v1/models`` lists the models.

    python bench/backend.py --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import functools
from dataclasses import dataclass

import orjson

from http1 import body_framing

WORDS = [" the", " model", " answer", " is", " streamed", ",", " token", " by", " token", ".", "\n", " 42"]
HEAD = {
    "id": "chatcmpl-5f0c7a4e2d0b4d1c9f7e3a6b8c2d1e0f",
    "created": 1767225600,
    "model": "meta-llama/Llama-3.1-8B-Instruct",
}
PROMPT_TOKENS = 24
MAX_TOKENS = 1 << 16
MAX_HEADER_BYTES = 64 << 10
PACE_SECONDS = 0.001
MODELS_BODY = orjson.dumps({"object": "list", "data": [{"id": "bench", "object": "model"}]})
MAX_VLLM_TOKENS = 1 << 21  # buffer-fit probes at coarse intervals reach a million tokens


def answer_text(tokens: int) -> str:
    return "".join(WORDS[i % len(WORDS)] for i in range(tokens))


def _usage(tokens: int) -> dict:
    return {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS + tokens, "completion_tokens": tokens}


def sse_events(tokens: int) -> list[bytes]:
    """The SSE events of an N-token answer, as vLLM streams it with usage included."""

    def event(choices: list, **extra: object) -> bytes:
        return (
            b"data: " + orjson.dumps({**HEAD, "object": "chat.completion.chunk", "choices": choices, **extra}) + b"\n\n"
        )

    def choice(delta: dict, finish_reason: str | None = None) -> list:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

    events = [event(choice({"role": "assistant", "content": ""}))]
    events += [event(choice({"content": WORDS[i % len(WORDS)]})) for i in range(tokens)]
    events.append(event(choice({"content": ""}, "stop")))
    events.append(event([], usage=_usage(tokens)))
    events.append(b"data: [DONE]\n\n")
    return events


def native_json(tokens: int) -> bytes:
    """The ``stream: false`` answer the same backend gives."""
    return orjson.dumps(
        {
            **HEAD,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer_text(tokens)},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(tokens),
        }
    )


def _chunked(events: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)


def _response(status: str, content_type: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        status.encode(),
        content_type,
        len(body),
        body,
    )


SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
CHUNKED_END = b"0\r\n\r\n"


def vllm_batches(tokens: int, interval: int) -> list[int]:
    """Tokens per chunk as vLLM sends them: 1, then ``interval`` at a time, the rest with the finish."""
    sizes, left = [1], tokens - 1
    while left > 0:
        sizes.append(min(interval, left))
        left -= sizes[-1]
    return sizes


@functools.lru_cache(maxsize=64)
def vllm_rendered(tokens: int, interval: int) -> tuple[tuple[bytes, ...], tuple[float, ...], bytes]:
    """(HTTP chunks: one per SSE event, then the end of the body; seconds before each; the native
    answer's whole response) of an N-token answer in vLLM 0.33's shapes, finish ``length``."""
    head = {**HEAD, "object": "chat.completion.chunk"}
    events = [
        {
            **head,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            ],
            "prompt_token_ids": None,
            "prompt_text": None,
        }
    ]
    sizes, sent = vllm_batches(tokens, interval), 0
    for number, size in enumerate(sizes):
        text = "".join(WORDS[i % len(WORDS)] for i in range(sent, sent + size))
        sent += size
        choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None, "token_ids": None}
        if number == len(sizes) - 1:
            choice.update(finish_reason="length", stop_reason=None, weight_versions=None)
        events.append({**head, "choices": [choice], "kv_transfer_params": None})
    events.append({**head, "choices": [], "usage": _usage(tokens)})
    chunks = [
        *(_chunked([b"data: " + orjson.dumps(e) + b"\n\n"]) for e in events),
        _chunked([b"data: [DONE]\n\n"]) + CHUNKED_END,
    ]
    delays = [0.0, 0.0, *(size * PACE_SECONDS for size in sizes[1:]), 0.0, 0.0]
    message = {
        "role": "assistant",
        "content": answer_text(tokens),
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
        "reasoning": None,
    }
    native = {
        **HEAD,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": None,
                "token_ids": None,
                "routed_experts": None,
                "weight_versions": None,
            }
        ],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": {**_usage(tokens), "prompt_tokens_details": None, "completion_tokens_details": None},
        "prompt_logprobs": None,
        "prompt_token_ids": None,
        "prompt_text": None,
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "metrics": None,
    }
    return tuple(chunks), tuple(delays), _response("200 OK", b"application/json", orjson.dumps(native))


@dataclass(frozen=True)
class Rendered:
    """Every response for one answer size, as bytes ready to write."""

    sse: bytes
    json: bytes
    held_head: bytes  # everything before the finish chunk
    held_tail: bytes
    sse_chunks: tuple[bytes, ...]  # one HTTP chunk per event, then the end of the body


@functools.lru_cache(maxsize=64)
def rendered(tokens: int) -> Rendered:
    events = sse_events(tokens)
    return Rendered(
        sse=SSE_HEAD + _chunked(events) + CHUNKED_END,
        json=_response("200 OK", b"application/json", native_json(tokens)),
        held_head=SSE_HEAD + _chunked(events[:-3]),
        held_tail=_chunked(events[-3:]) + CHUNKED_END,
        sse_chunks=(*(_chunked([e]) for e in events), CHUNKED_END),
    )


class Backend:
    """Shared state: the release event of the held streams and how many are held."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.held = 0

    def release_all(self) -> None:
        self.release.set()
        self.release = asyncio.Event()


class BenchHttp(asyncio.Protocol):
    """HTTP/1.1 keep-alive with Content-Length request bodies; one response per request, in order."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a held stream owns the connection until it ends

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._serve_buffered()

    def _serve_buffered(self) -> None:
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEADER_BYTES:
                    self.transport.close()
                return
            head = bytes(self.buffer[:end]).split(b"\r\n")
            length, chunked = body_framing(head[1:])
            if chunked:  # Envoy sends a rewritten body chunked when it had no headers to fix
                found = _dechunk(self.buffer, end + 4)
                if found is None:
                    return
                body, consumed = found
            else:
                if len(self.buffer) < end + 4 + length:
                    return
                body, consumed = bytes(self.buffer[end + 4 : end + 4 + length]), end + 4 + length
            del self.buffer[:consumed]
            method, path = head[0].split(b" ")[:2]
            if self._respond(method, path, body):
                return

    def _respond(self, method: bytes, path: bytes, body: bytes) -> bool:
        """Answer one request; True when the answer is held (stop reading until it is sent)."""
        write = self.transport.write
        if method == b"GET":
            if path.endswith(b"/v1/models"):
                write(_response("200 OK", b"application/json", MODELS_BODY))
            elif path == b"/release":
                self.backend.release_all()
                write(_response("200 OK", b"text/plain", b"released\n"))
            elif path == b"/held":
                write(_response("200 OK", b"text/plain", b"%d\n" % self.backend.held))
            else:
                write(_response("404 Not Found", b"text/plain", b"not found\n"))
            return False
        try:
            request = orjson.loads(body)
            kind, _, size = request["model"].partition("-")
            tokens = int(size)
            vllm = kind in ("vllm", "vllmburst")
            if kind not in ("bench", "hold", "paced", "vllm", "vllmburst") or not 0 < tokens <= (
                MAX_VLLM_TOKENS if vllm else MAX_TOKENS
            ):
                raise ValueError(request["model"])
            interval = request.get("stream_interval", 1)
            if vllm and (type(interval) is not int or interval < 1):
                raise ValueError(interval)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
            write(
                _response(
                    "400 Bad Request",
                    b"application/json",
                    b'{"error":{"message":"model must be bench-N, hold-N, paced-N, vllm-N or vllmburst-N"}}',
                )
            )
            return False
        if vllm:
            chunks, delays, native = vllm_rendered(tokens, interval)
            if not request.get("stream"):
                write(native)
                return False
            write(SSE_HEAD)
            if kind == "vllmburst":
                write(b"".join(chunks))
                return False
            self.busy = True
            asyncio.get_running_loop().create_task(self._pace_vllm(chunks, delays))
            return True
        answer = rendered(tokens)
        if not request.get("stream"):
            write(answer.json)
            return False
        if kind == "bench":
            write(answer.sse)
            return False
        self.busy = True
        if kind == "hold":
            write(answer.held_head)
            asyncio.get_running_loop().create_task(self._finish_held(answer.held_tail))
        else:
            write(SSE_HEAD)
            asyncio.get_running_loop().create_task(self._pace(answer.sse_chunks))
        return True

    async def _finish_held(self, tail: bytes) -> None:
        self.backend.held += 1
        try:
            await self.backend.release.wait()
        finally:
            self.backend.held -= 1
        self._resume(tail)

    async def _pace(self, chunks: tuple[bytes, ...]) -> None:
        for chunk in chunks[:-1]:
            if self.transport.is_closing():
                return
            self.transport.write(chunk)
            await asyncio.sleep(PACE_SECONDS)
        self._resume(chunks[-1])

    async def _pace_vllm(self, chunks: tuple[bytes, ...], delays: tuple[float, ...]) -> None:
        for chunk, delay in zip(chunks[:-1], delays):
            if delay:
                await asyncio.sleep(delay)
            if self.transport.is_closing():
                return
            self.transport.write(chunk)
        self._resume(chunks[-1])

    def _resume(self, last: bytes) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(last)
        self.busy = False
        self._serve_buffered()


def _dechunk(buffer: bytearray, start: int) -> tuple[bytes, int] | None:
    """A complete chunked body at ``start`` and where it ends, or None while it is incomplete."""
    body = bytearray()
    pos = start
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buffer[pos:line_end]).split(b";")[0], 16)
        pos = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n", pos)  # no trailers: an empty line ends the body
            return (bytes(body), trailer_end + 2) if trailer_end >= 0 else None
        if len(buffer) < pos + size + 2:
            return None
        body += buffer[pos : pos + size]
        pos += size + 2


async def serve(host: str, port: int) -> None:
    backend = Backend()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: BenchHttp(backend), host, port, backlog=8192)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--no-uvloop", action="store_true", help="plain asyncio event loop")
    args = parser.parse_args()
    for tokens in (256, 4096):
        rendered(tokens)
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.install()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
