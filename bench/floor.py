"""The floor: the least any Python ext_proc service pays for the same conversations.

A minimal grpc.aio servicer (on uvloop, like the service) that answers the very messages the shipped
service answers, in the same order and with the same reply shapes, but with replies built once: the
rewritten request and the converted answer are looked up by the request body (each is computed by
the real pipeline the first time that request is seen, so answers stay right and the bench's answer
check passes). No routes, settings, metrics, logging or per-request state beyond one flag.

- request body: the rewrite (``stream: true``) with its content-length;
- response headers: JSON content type and the route's body mode (buffered, streamed, or the
  full-duplex headers on keep-alive routes);
- response body: nothing until the end of the body, then the answer (buffered: one message).

``bench/run.py`` runs it as a second stack beside the shipped one and prints both (``--no-floor`` skips it). With
``BENCH_FLOOR_CONVERTS=1`` in the environment the floor runs the real pipeline on every body: the
floor plus exactly one conversion, which isolates what the conversion costs inside a live process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any, AsyncIterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "filter"))

import grpc  # noqa: E402
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode as Mode  # noqa: E402
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb  # noqa: E402
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc  # noqa: E402

from buffered_stream.adapter.service import (  # noqa: E402
    _JSON_HEADERS,
    ATTRIBUTES_KEY,
    CONTINUE_REQUEST_BODY,
    CONTINUE_REQUEST_HEADERS,
    CONTINUE_RESPONSE_TRAILERS,
    DROP_RESPONSE_CHUNK,
    JSON_RESPONSE_HEADERS,
    PATH_ATTRIBUTE,
    ROUTE_NAME_ATTRIBUTE,
    _answer_body,
    _answer_streamed,
    _rewritten_request,
)
from buffered_stream.apis import api_for_path  # noqa: E402
from buffered_stream.core.convert import StreamConverter  # noqa: E402
from buffered_stream.core.request import Rewrite  # noqa: E402


def _headers_reply(mode: int) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(
        response_headers=pb.HeadersResponse(
            response=pb.CommonResponse(
                header_mutation=pb.HeaderMutation(set_headers=_JSON_HEADERS, remove_headers=("content-length",))
            )
        ),
        mode_override=Mode(request_body_mode=Mode.BUFFERED, response_header_mode=Mode.SEND, response_body_mode=mode),
    )


# BENCH_FLOOR_CONVERTS=1: run the real pipeline on every body (the floor plus exactly one conversion).
CONVERT_EVERY_TIME = os.environ.get("BENCH_FLOOR_CONVERTS") == "1"
INTERVAL_ROUTE = re.compile(r"chat_[a-z]+_i[0-9]+")
BUFFERED_HEADERS = _headers_reply(Mode.BUFFERED)
STREAMED_HEADERS = _headers_reply(Mode.STREAMED)


class Conversation:
    """The replies of one request body, built once; ``answer`` waits for its first conversion."""

    def __init__(self, path: str, body: bytes, stream_interval: int = 0) -> None:
        self.spec = api_for_path(path)
        plan = (
            self.spec.plan_request(body, (), stream_interval=stream_interval)
            if stream_interval
            else self.spec.plan_request(body, ())
        )
        assert isinstance(plan, Rewrite), plan
        self.hints = plan.hints
        self.rewrite = _rewritten_request(plan.body)
        self.answer: bytes | None = None
        self.buffered_reply: pb.ProcessingResponse | None = None
        self.streamed_reply: pb.ProcessingResponse | None = None
        self.full_duplex_reply: pb.ProcessingResponse | None = None

    def learn(self, body: bytes) -> None:
        converter = StreamConverter(self.spec, hints=self.hints)
        converter.feed(body)
        answer = self.answer = converter.finish()
        # The service's own reply shapes (without the usage metadata), built once.
        self.buffered_reply = _answer_body(answer, content_length=True)
        self.streamed_reply = _answer_body(answer, content_length=False)
        self.full_duplex_reply = _answer_streamed(answer, True)


class FloorProcessor(pb_grpc.ExternalProcessorServicer):
    def __init__(self) -> None:
        self.conversations: dict[bytes, Conversation] = {}

    async def Process(self, requests: AsyncIterator[pb.ProcessingRequest], context: Any) -> None:
        read, write, eof = context.read, context.write, grpc.aio.EOF
        conversation: Conversation | None = None
        full_duplex = streamed = False
        body = bytearray()  # only until the conversation's answer is known
        while (request := await read()) is not eof:
            kind = request.WhichOneof("request")
            if kind == "response_body":
                chunk = request.response_body
                last = chunk.end_of_stream
                if conversation.answer is None or CONVERT_EVERY_TIME:
                    body += chunk.body
                    if last or not (streamed or full_duplex):  # a body in chunks is whole at its end
                        conversation.learn(bytes(body))
                if full_duplex:
                    if last:
                        await write(conversation.full_duplex_reply)
                elif streamed:
                    await write(conversation.streamed_reply if last else DROP_RESPONSE_CHUNK)
                else:
                    await write(conversation.buffered_reply)
            elif kind == "request_body":
                fields = request.attributes[ATTRIBUTES_KEY].fields
                key = request.request_body.body
                route = fields[ROUTE_NAME_ATTRIBUTE].string_value
                # bench/bench_interval.py's routes (``chat_<mode>_i<N>``) ask for N tokens per chunk.
                interval = int(route.rpartition("_i")[2]) if INTERVAL_ROUTE.fullmatch(route) else 0
                conversation = self.conversations.get((key, interval))
                if conversation is None:
                    conversation = self.conversations[(key, interval)] = Conversation(
                        fields[PATH_ATTRIBUTE].string_value, key, interval if interval > 1 else 0
                    )
                full_duplex = request.protocol_config.response_body_mode == Mode.FULL_DUPLEX_STREAMED
                streamed = "streamed" in fields[ROUTE_NAME_ATTRIBUTE].string_value
                await write(conversation.rewrite)
            elif kind == "response_headers":
                await write(
                    JSON_RESPONSE_HEADERS if full_duplex else STREAMED_HEADERS if streamed else BUFFERED_HEADERS
                )
            elif kind == "request_headers":
                await write(CONTINUE_REQUEST_HEADERS)
            elif kind == "response_trailers":
                await write(CONTINUE_RESPONSE_TRAILERS)
            else:
                await write(CONTINUE_REQUEST_BODY)


async def serve(listen: str) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_ExternalProcessorServicer_to_server(FloorProcessor(), server)
    server.add_insecure_port(listen)
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--asyncio", action="store_true", help="plain asyncio instead of uvloop")
    args = parser.parse_args()
    if not args.asyncio:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(args.listen))


if __name__ == "__main__":
    main()
