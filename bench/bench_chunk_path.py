"""The service's per-upstream-chunk hot path, without gRPC: one ``Exchange`` fed real messages.

Streamed and keep-alive (full-duplex) modes cost one ext_proc message per upstream chunk: this
times what the adapter and the converter do with one (``Exchange.handle`` on a one-token vLLM
chunk), so a change to that path can be measured before and after in one quiet loop. gRPC's own
cost per message (~50 us) is not in it: see ``bench/run.py`` for the whole stack.

    python bench/bench_chunk_path.py [--tokens 1024] [--repeat 15]
    BENCH_PACKAGE_DIR=/tmp/before python bench/bench_chunk_path.py   # the same on a saved copy
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

# ``BENCH_PACKAGE_DIR``: a directory holding another copy of ``buffered_stream`` (an A/B of a change).
sys.path.insert(0, os.environ.get("BENCH_PACKAGE_DIR") or str(Path(__file__).resolve().parents[1] / "filter"))

import orjson  # noqa: E402
from envoy.config.core.v3 import base_pb2  # noqa: E402
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode  # noqa: E402
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402

from buffered_stream.adapter.service import Exchange, RouteSettingsCache  # noqa: E402
from buffered_stream.settings import RouteSettings  # noqa: E402

METADATA = {
    "streamed": 'filter_metadata { key: "buffered_stream" value { fields { key: "enabled" value { bool_value: true } } '
    'fields { key: "mode" value { string_value: "streamed" } } } }',
    "keepalive": 'filter_metadata { key: "buffered_stream" value { fields { key: "enabled" value { bool_value: true } } '
    'fields { key: "keepalive_seconds" value { number_value: 5 } } } }',
}
HEAD = '"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m"'
WORDS = [" the", " model", " answer", " is", " streamed", ",", " token", " by", " token", "."]


def chunks(tokens: int) -> list[bytes]:
    """A vLLM-shaped stream, one SSE event per upstream chunk."""
    out = [
        b'data: {%s,"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
        % HEAD.encode()
    ]
    out += [
        b'data: {%s,"choices":[{"index":0,"delta":{"content":%s},"logprobs":null,"finish_reason":null}]}\n\n'
        % (HEAD.encode(), orjson.dumps(WORDS[i % len(WORDS)]))
        for i in range(tokens)
    ]
    out.append(
        b'data: {%s,"choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"stop"}]}\n\n'
        % HEAD.encode()
    )
    out.append(
        b'data: {%s,"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":%d,"total_tokens":%d}}\n\n'
        % (HEAD.encode(), tokens, tokens + 3)
    )
    out.append(b"data: [DONE]\n\n")
    return out


def one_answer(mode: str, messages: list[pb.ProcessingRequest], routes: RouteSettingsCache) -> float:
    """Seconds spent in ``handle`` on the upstream chunks of one converted answer."""
    attributes = struct_pb2.Struct()
    attributes.update(
        {
            "xds.route_metadata": METADATA[mode],
            "xds.route_name": "chat",
            "request.path": "/v1/chat/completions",
            "request.method": "POST",
        }
    )
    body_mode = ProcessingMode.FULL_DUPLEX_STREAMED if mode == "keepalive" else ProcessingMode.NONE
    exchange = Exchange(routes)
    exchange.handle(
        pb.ProcessingRequest(
            request_body=pb.HttpBody(
                body=b'{"model":"m","messages":[{"role":"user","content":"hi"}]}', end_of_stream=True
            ),
            attributes={"envoy.filters.http.ext_proc": attributes},
            protocol_config=pb.ProtocolConfiguration(response_body_mode=body_mode),
        )
    )
    exchange.handle(
        pb.ProcessingRequest(
            response_headers=pb.HttpHeaders(
                headers=base_pb2.HeaderMap(
                    headers=[
                        base_pb2.HeaderValue(key=":status", raw_value=b"200"),
                        base_pb2.HeaderValue(key="content-type", raw_value=b"text/event-stream"),
                    ]
                )
            )
        )
    )
    handle = exchange.handle
    started = time.perf_counter()
    for message in messages:
        handle(message)
    spent = time.perf_counter() - started
    assert exchange.outcome == "converted", exchange.outcome
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    stream = chunks(args.tokens)
    messages = [
        pb.ProcessingRequest(response_body=pb.HttpBody(body=c, end_of_stream=i == len(stream) - 1))
        for i, c in enumerate(stream)
    ]
    routes = RouteSettingsCache(RouteSettings())
    print(f"{'mode':<10} {'chunks':>6} {'us/chunk median':>15} {'min':>6} {'max':>6}")
    for mode in ("streamed", "keepalive"):
        for _ in range(3):  # warm up
            one_answer(mode, messages, routes)
        per_chunk = [1e6 * one_answer(mode, messages, routes) / len(messages) for _ in range(args.repeat)]
        print(
            f"{mode:<10} {len(messages):>6} {statistics.median(per_chunk):>15.2f} {min(per_chunk):>6.2f} {max(per_chunk):>6.2f}"
        )


if __name__ == "__main__":
    main()
