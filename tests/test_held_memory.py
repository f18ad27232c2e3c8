"""A request the service holds keeps its conversion state, not the bytes it already passed on.

A slow generation holds its request for minutes; with thousands held, memory per held request is
what sizes the service. The real service process, driven over a real gRPC channel the way Envoy
drives each mode, holds requests with a long prompt whose upstream stream so far (streamed and
keep-alive modes: one chunk) is a long body; its resident memory must grow by far less than either
per request, and every held request must still get its exact answer once the stream ends.
"""

from __future__ import annotations

import asyncio

import grpc
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from support.probes import rss_bytes
from support.stack import Harness
from test_service import ENABLED, STREAMED, body, first_body, full_duplex_request, response_headers

pytestmark = pytest.mark.e2e

HELD = 100
TOKENS = 1500  # one upstream chunk of ~265 KB of SSE per held request
DEADLINE = 60.0


def _event(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _chunk(delta: dict, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return _event(
        {"id": "chatcmpl-held", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}
    )


WORDS = [f" w{i}" for i in range(TOKENS)]
HEAD = _chunk({"role": "assistant", "content": ""}) + b"".join(_chunk({"content": word}) for word in WORDS)
TAIL = _chunk({}, "stop") + b"data: [DONE]\n\n"
PROMPT = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "Summarize: " + "lorem ipsum " * 22000}]})


async def _open(stub: pb_grpc.ExternalProcessorStub, mode: str) -> tuple[grpc.aio.StreamStreamCall, asyncio.Future]:
    """One held request: the route's first messages, then the whole stream but its end in one chunk.
    Returns the call and a task that collects its replies after the response headers."""
    call = stub.Process()
    if mode == "keepalive":
        await call.write(full_duplex_request())
        await call.read()  # request headers
        await call.write(body(PROMPT))
    else:
        await call.write(first_body(PROMPT, metadata=STREAMED if mode == "streamed" else ENABLED))
    await call.read()  # the rewrite
    await call.write(response_headers())
    await call.read()  # the response headers' reply
    if mode != "buffered":  # buffered: Envoy sends the body once it has all of it
        await call.write(body(HEAD, end_of_stream=False, response=True))
    if mode == "streamed":
        await call.read()  # the chunk is dropped; nothing reaches the client yet
    return call, asyncio.ensure_future(_replies(call))


async def _replies(call: grpc.aio.StreamStreamCall) -> list[pb.ProcessingResponse]:
    replies = []
    while (reply := await call.read()) is not grpc.aio.EOF:
        replies.append(reply)
        if _answer(reply) is not None:
            break
    return replies


def _answer(reply: pb.ProcessingResponse) -> bytes | None:
    mutation = reply.response_body.response.body_mutation
    if mutation.HasField("streamed_response"):
        return mutation.streamed_response.body if mutation.streamed_response.end_of_stream else None
    return mutation.body if mutation.HasField("body") else None


async def _hold_then_finish(target: str, mode: str, pid: int) -> tuple[int, list[bytes]]:
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 8 << 20)]) as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)
        warm, warm_replies = await _open(stub, mode)  # first-use allocations, outside what is measured
        before = rss_bytes(pid)
        held = [await asyncio.wait_for(_open(stub, mode), DEADLINE) for _ in range(HELD)]  # one at a time
        growth = rss_bytes(pid) - before
        answers = []
        for call, replies in [(warm, warm_replies), *held]:
            await call.write(body(HEAD + TAIL if mode == "buffered" else TAIL, end_of_stream=True, response=True))
            await call.done_writing()
            answers.append(_answer((await asyncio.wait_for(replies, DEADLINE))[-1]))
        return growth, answers


@pytest.mark.parametrize("mode", ["buffered", "streamed", "keepalive"])
def test_held_requests_keep_neither_prompt_nor_upstream_body(harness: Harness, mode: str) -> None:
    service = harness.service()
    growth, answers = asyncio.run(_hold_then_finish(service.target, mode, service.process.pid))
    expected = "".join(WORDS)
    for answer in answers:
        assert answer is not None, "a held request got no answer"
        assert orjson.loads(answer)["choices"][0]["message"]["content"] == expected
    # Keeping the prompt or the chunk would cost each held request at least its size; what a request
    # needs is its conversion state (the answer's text, ~9 KB here) and its gRPC stream (~30 KB).
    per_request = growth / HELD
    assert per_request < min(len(PROMPT), len(HEAD)) / 2, (
        f"each held request grew the service by {per_request:.0f} bytes with a {len(PROMPT)}-byte prompt "
        f"and a {len(HEAD)}-byte upstream chunk"
    )
