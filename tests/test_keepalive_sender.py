"""Keep-alive bytes come from a loop timer while the stream reads Envoy's messages as usual.

The real servicer on a real grpc.aio server, driven over a real channel the way Envoy drives a
full-duplex route: whatever the timing of upstream chunks against keep-alive due times, each
stream's replies are keep-alive bytes, then exactly one answer, then nothing.
"""

from __future__ import annotations

import asyncio
import random

import grpc
import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from buffered_stream.adapter.keepalive import KEEPALIVE_BYTE
from buffered_stream.adapter.service import ExternalProcessor
from buffered_stream.settings import ServiceSettings
from test_service import CHAT_BODY, ENABLED, SSE, body, full_duplex_request, response_headers

INTERVAL = 0.1  # the shortest keep-alive a route may ask for
FAST = ENABLED.replace(
    "} } } }", f'}} }} fields {{ key: "keepalive_seconds" value {{ number_value: {INTERVAL} }} }} }} }}'
)
DEADLINE = 20.0


async def _serve() -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(ExternalProcessor(ServiceSettings()), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def _kind(reply: pb.ProcessingResponse) -> str:
    """ "keepalive", "answer" or the reply's oneof name."""
    streamed = reply.response_body.response.body_mutation.streamed_response
    if reply.HasField("response_body") and streamed.body == KEEPALIVE_BYTE and not streamed.end_of_stream:
        return "keepalive"
    if reply.HasField("response_body") and streamed.end_of_stream:
        return "answer"
    return reply.WhichOneof("response")


async def _one_stream(
    stub: pb_grpc.ExternalProcessorStub, pieces: list[bytes], gaps: list[float], wait_for_keepalives: int = 0
) -> list[pb.ProcessingResponse]:
    """Envoy's side of one full-duplex request: the replies it got, in order, until the stream ended."""
    call = stub.Process()
    replies: list[pb.ProcessingResponse] = []
    await call.write(full_duplex_request(FAST))
    replies.append(await call.read())  # the request headers reply
    await call.write(body(CHAT_BODY))
    replies.append(await call.read())  # the rewrite
    await call.write(response_headers())
    replies.append(await call.read())  # the committed JSON headers
    reader = asyncio.ensure_future(_read_all(call, replies))
    for i, (piece, gap) in enumerate(zip(pieces, gaps)):
        await call.write(body(piece, end_of_stream=i == len(pieces) - 1, response=True))
        if i == 0 and wait_for_keepalives:
            await _until(lambda: sum(_kind(r) == "keepalive" for r in replies) >= wait_for_keepalives)
        await asyncio.sleep(gap)  # upstream pacing, not a timing assertion
    await _until(lambda: any(_kind(r) == "answer" for r in replies))
    await call.done_writing()
    await asyncio.wait_for(reader, DEADLINE)
    return replies


async def _read_all(call: grpc.aio.StreamStreamCall, replies: list[pb.ProcessingResponse]) -> None:
    while (reply := await call.read()) is not grpc.aio.EOF:
        replies.append(reply)


async def _until(condition, deadline: float = DEADLINE) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not condition():
        assert loop.time() < end, "condition not reached before the deadline"
        await asyncio.sleep(0.01)


def _check_order(replies: list[pb.ProcessingResponse]) -> int:
    """Keep-alive bytes, one answer, nothing after; the keep-alive count."""
    kinds = [_kind(r) for r in replies[3:]]
    assert kinds.count("answer") == 1, kinds
    assert kinds[-1] == "answer", f"bytes after the answer: {kinds}"
    assert set(kinds[:-1]) <= {"keepalive"}, kinds
    answer = replies[-1].response_body.response.body_mutation.streamed_response.body
    assert orjson.loads(answer)["choices"][0]["message"]["content"] == "Hello"
    return len(kinds) - 1


def test_keepalive_bytes_flow_while_the_upstream_is_silent_then_the_answer_ends_the_stream() -> None:
    async def scenario() -> int:
        server, target = await _serve()
        try:
            async with grpc.aio.insecure_channel(target) as channel:
                replies = await _one_stream(
                    pb_grpc.ExternalProcessorStub(channel), [SSE[:40], SSE[40:]], [0, 0], wait_for_keepalives=3
                )
                return _check_order(replies)
        finally:
            await server.stop(None)

    assert asyncio.run(scenario()) >= 3


def test_answers_racing_keepalive_due_times_never_interleave() -> None:
    """Forty streams whose upstream chunks land around the keep-alive due times."""
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(SSE)), 5))
    pieces = [SSE[a:b] for a, b in zip([0, *cuts], [*cuts, len(SSE)])]

    async def scenario() -> list[int]:
        server, target = await _serve()
        try:
            async with grpc.aio.insecure_channel(target) as channel:
                stub = pb_grpc.ExternalProcessorStub(channel)
                streams = [
                    _one_stream(stub, pieces, [rng.uniform(0.5, 1.5) * INTERVAL for _ in pieces]) for _ in range(40)
                ]
                return [_check_order(replies) for replies in await asyncio.gather(*streams)]
        finally:
            await server.stop(None)

    counts = asyncio.run(scenario())
    assert sum(counts) > 0, "the pacing should have let keep-alive bytes fall due"
