"""Speed and memory of Anthropic Messages stream -> answer conversion on one core.

Run by hand: ``PYTHONPATH=filter python bench/bench_messages.py``. The body is a text answer in
Anthropic's own wire shape (``event:`` + ``data:`` lines, one token per ``content_block_delta``,
message_start, a ping, block start/stop, message_delta, message_stop). Columns, in events/s:

- ``floor``: split the body into events, take the ``data:`` line, ``orjson.loads`` it: the least
  any Python converter pays;
- ``decode+loads``: the package's ``SseDecoder`` plus ``orjson.loads``;
- ``pipeline``: that plus ``upstream_error`` and ``MessagesAssembler.add`` per event, and the
  answer's ``orjson.dumps``: what a Messages route will run;
- ``converter``: the ``StreamConverter`` a Messages route runs (``messages.API``): its error checks
  and the core's template fast path, which takes most text deltas without parsing them.

``add µs`` is the assembler alone per pre-parsed event; ``held`` the assembler's memory once every
event is in, against the answer's JSON size.
"""

from __future__ import annotations

import argparse
import tracemalloc

import orjson

from bench_assembly import PIECE, WORDS, best_seconds, peak_memory, pieces
from buffered_stream.core.convert import StreamConverter
from buffered_stream.core.sse import SseDecoder
from buffered_stream.schemas.messages import API, AUTO, MessagesAssembler, upstream_error


def messages_body(tokens: int) -> bytes:
    """A ``tokens``-delta text answer in Anthropic's stream shape."""

    def event(data: dict) -> bytes:
        return b"event: " + data["type"].encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    usage = {"input_tokens": 24, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 1}
    message = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    parts = [
        event({"type": "message_start", "message": message}),
        event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        event({"type": "ping"}),
    ]
    parts += [
        event(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": WORDS[i % len(WORDS)]}}
        )
        for i in range(tokens)
    ]
    parts.append(event({"type": "content_block_stop", "index": 0}))
    parts.append(
        event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": tokens},
            }
        )
    )
    parts.append(event({"type": "message_stop"}))
    return b"".join(parts)


def payloads(body: bytes) -> list[bytes]:
    return [block.split(b"\ndata: ", 1)[1] for block in body.split(b"\n\n") if block]


def orjson_floor(body: bytes) -> None:
    loads = orjson.loads
    for block in body.split(b"\n\n"):
        if block:
            loads(block[block.index(b"\ndata: ") + 7 :])


def decoder_and_loads(chunks: list[bytes]) -> None:
    decoder = SseDecoder(1 << 20, 2 << 20)
    loads = orjson.loads
    for chunk in chunks:
        for _, payload in decoder.feed(chunk):
            loads(payload)


def pipeline(chunks: list[bytes]) -> bytes:
    decoder = SseDecoder(1 << 20, 2 << 20)
    assembler = MessagesAssembler(AUTO, {})
    loads, add = orjson.loads, assembler.add
    for chunk in chunks:
        for _, payload in decoder.feed(chunk):
            event = loads(payload)
            if event.get("type") == "error":
                raise upstream_error(event)  # type: ignore[misc]
            add(event)
    assert assembler.finished
    return orjson.dumps(assembler.result())


def converter(chunks: list[bytes]) -> bytes:
    stream = StreamConverter(API, "auto")
    for chunk in chunks:
        stream.feed(chunk)
    return stream.finish()


def assemble_only(events: list[dict]) -> None:
    assembler = MessagesAssembler(AUTO, {})
    for event in events:
        assembler.add(event)


def assembler_held(body: bytes) -> int:
    """Bytes one assembler keeps once every event is in; each event is parsed and dropped."""
    loads = orjson.loads
    tracemalloc.start()
    assembler = MessagesAssembler(AUTO, {})
    for payload in payloads(body):
        assembler.add(loads(payload))
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert assembler.finished
    return held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time budget per measurement")
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 4096])
    args = parser.parse_args()

    print("messages schema, profile 'auto'; rates in events/s on one core")
    print(
        f"{'tokens':>6} {'feed':>6} {'floor':>9} {'decode+loads':>12} {'pipeline':>9} {'converter':>9} "
        f"{'/floor':>6} {'add µs':>6} {'answer B':>8} {'held B':>7} {'/answer':>7} {'peak B':>9}"
    )
    for tokens in args.tokens:
        body = messages_body(tokens)
        events = body.count(b"\n\n")
        floor = events / best_seconds(lambda: orjson_floor(body), args.seconds)
        parsed = [orjson.loads(payload) for payload in payloads(body)]
        add_us = best_seconds(lambda: assemble_only(parsed), args.seconds) / len(parsed) * 1e6
        held = assembler_held(body)
        for size in (PIECE, None):
            chunks = pieces(body, size)
            decoded = events / best_seconds(lambda: decoder_and_loads(chunks), args.seconds)
            piped = events / best_seconds(lambda: pipeline(chunks), args.seconds)
            converted = events / best_seconds(lambda: converter(chunks), args.seconds)
            answer = len(pipeline(chunks))
            peak = peak_memory(lambda: pipeline(chunks))
            print(
                f"{tokens:>6} {'16 KiB' if size else 'whole':>6} {floor:>9,.0f} {decoded:>12,.0f} {piped:>9,.0f} "
                f"{converted:>9,.0f} {piped / floor:>6.2f} {add_us:>6.2f} {answer:>8,} {held:>7,} "
                f"{held / answer:>7.2f} {peak:>9,}"
            )
    print(
        "add µs: MessagesAssembler.add per pre-parsed event. held: the assembler's memory with every event "
        "in; peak: the pipeline's while fed and with the answer's dumps, body bytes excluded"
    )


if __name__ == "__main__":
    main()
