"""Speed and memory of stream -> answer conversion on one core, against the raw orjson floor.

Run by hand: ``PYTHONPATH=filter python bench/bench_assembly.py``. The bodies imitate vLLM chat
streams (one token per ~230-byte chunk, a finish chunk, a usage chunk, ``[DONE]``), fed either in
network-size pieces or as one whole body. The floor is what any Python converter must pay at least:
split the body into events, strip ``data: `` and ``orjson.loads`` each payload.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable

import orjson

from buffered_stream.convert import StreamConverter
from buffered_stream.sse import SseDecoder

PIECE = 16 << 10
WORDS = [" the", " model", " answer", " is", " streamed", ",", " token", " by", " token", ".", "\n", " 42"]


def vllm_chat_body(tokens: int) -> bytes:
    head = {
        "id": "chatcmpl-5f0c7a4e2d0b4d1c9f7e3a6b8c2d1e0f",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": "meta-llama/Llama-3.1-8B-Instruct",
    }

    def event(choices: list, **extra: object) -> bytes:
        return b"data: " + orjson.dumps({**head, "choices": choices, **extra}) + b"\n\n"

    def choice(delta: dict, finish_reason: str | None = None) -> list:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

    parts = [event(choice({"role": "assistant", "content": ""}))]
    parts += [event(choice({"content": WORDS[i % len(WORDS)]})) for i in range(tokens)]
    parts.append(event([{**choice({"content": ""}, "stop")[0], "stop_reason": None}]))
    usage = {"prompt_tokens": 24, "total_tokens": 24 + tokens, "completion_tokens": tokens}
    parts.append(event([], usage=usage))
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def pieces(body: bytes, size: int | None) -> list[bytes]:
    if size is None:
        return [body]
    return [body[i : i + size] for i in range(0, len(body), size)]


def best_seconds(run: Callable[[], object], budget_s: float) -> float:
    """Best time of one run, repeating for about ``budget_s`` (the minimum is the least noisy)."""
    best = float("inf")
    deadline = time.perf_counter() + budget_s
    while True:
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
        if time.perf_counter() > deadline:
            return best


def orjson_floor(body: bytes) -> None:
    loads = orjson.loads
    for block in body.split(b"\n\n"):
        if block and block != b"data: [DONE]":
            loads(block[6:])


def decoder_and_loads(chunks: list[bytes]) -> None:
    decoder = SseDecoder(1 << 20, 2 << 20)
    loads = orjson.loads
    for chunk in chunks:
        for _, payload in decoder.feed(chunk):
            if payload != b"[DONE]":
                loads(payload)


def convert(chunks: list[bytes], profile: str) -> bytes:
    converter = StreamConverter("chat", profile)
    for chunk in chunks:
        converter.feed(chunk)
    return converter.finish()


def peak_memory(run: Callable[[], object]) -> int:
    """tracemalloc peak of ``run`` (inputs allocated before it are not counted)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time budget per measurement")
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--profile", default="auto", help="backend profile of the assembler")
    args = parser.parse_args()

    print(f"chat schema, profile {args.profile!r}")
    print(f"{'tokens':>6} {'feed':>6} {'events':>6} {'floor ev/s':>10} {'decode+loads':>12} "
          f"{'convert ev/s':>12} {'/floor':>6} {'answer B':>8} {'peak B':>9} {'/answer':>7} "
          f"{'decode-only peak B':>18}")
    for tokens in args.tokens:
        body = vllm_chat_body(tokens)
        events = body.count(b"\n\n")
        floor = events / best_seconds(lambda: orjson_floor(body), args.seconds)
        for size in (PIECE, None):
            chunks = pieces(body, size)
            decoded = events / best_seconds(lambda: decoder_and_loads(chunks), args.seconds)
            converted = events / best_seconds(lambda: convert(chunks, args.profile), args.seconds)
            answer = len(convert(chunks, args.profile))
            peak = peak_memory(lambda: convert(chunks, args.profile))
            decode_peak = peak_memory(lambda: decoder_and_loads(chunks))
            print(f"{tokens:>6} {'16 KiB' if size else 'whole':>6} {events:>6} {floor:>10,.0f} "
                  f"{decoded:>12,.0f} {converted:>12,.0f} {converted / floor:>6.2f} {answer:>8,} "
                  f"{peak:>9,} {peak / answer:>7.1f} {decode_peak:>18,}")
    print(f"{len(vllm_chat_body(256)) / 260:.0f} B per event; peaks exclude the body's own bytes; "
          "decode-only: SseDecoder + orjson.loads without an assembler")

if __name__ == "__main__":
    main()
