"""Speed and memory of stream -> answer conversion on one core, against the raw orjson floor.

Run by hand: ``PYTHONPATH=filter python bench/bench_assembly.py``. Each body imitates one server's
chat stream (one token per chunk, a role chunk, a finish chunk, a usage chunk, ``[DONE]``), in the
chunk shapes that cost the assembler differently: vLLM text, OpenAI text (extra top-level keys on
every chunk, one of them random), SGLang text (an extra choice key), Ollama text (the role in
every delta), and tool-call argument pieces. Bodies are fed in
network-size pieces or as one whole body. The floor is what any Python converter must pay at least:
split the body into events, strip ``data: `` and ``orjson.loads`` each payload.

Memory, measured with tracemalloc, relative to the answer's JSON size: ``held`` is what the
assembler alone keeps once every chunk is in (what one in-flight answer costs while it streams),
``feed peak`` the whole converter's peak while the body streams in, ``finish peak`` its peak
including the answer's ``orjson.dumps`` (orjson reserves several times the output size).
"""

from __future__ import annotations

import argparse
import itertools
import time
import tracemalloc
from collections.abc import Callable

import orjson

from buffered_stream.apis import api_named, make_assembler
from buffered_stream.core.convert import StreamConverter
from buffered_stream.core.sse import SseDecoder

PIECE = 16 << 10
WORDS = [" the", " model", " answer", " is", " streamed", ",", " token", " by", " token", ".", "\n", " 42"]
ARGUMENT_PIECES = ['{"', "city", '":', ' "', "Paris", '",', ' "', "days", '":', " [", "1", ",", " 2", "]}"]


def _head(shape: str) -> dict[str, object]:
    head: dict[str, object] = {
        "id": "chatcmpl-5f0c7a4e2d0b4d1c9f7e3a6b8c2d1e0f",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": "meta-llama/Llama-3.1-8B-Instruct",
    }
    if shape == "openai":
        head.update(model="gpt-4o-2024-08-06", service_tier="default", system_fingerprint="fp_eb9dce56a8")
    if shape == "ollama":
        head.update(id="chatcmpl-512", model="llama3.1:8b", system_fingerprint="fp_ollama")
    return head


def chat_body(shape: str, tokens: int) -> bytes:
    """A ``tokens``-chunk stream of ``shape``: ``vllm``, ``openai``, ``sglang``, ``ollama`` or
    ``tool-args`` (vLLM's tool-call argument pieces)."""
    head = _head(shape)
    tail: dict[str, object] = {"usage": None} if shape in ("openai", "sglang") else {}
    padding = itertools.count()

    def event(choices: list, **extra: object) -> bytes:
        if shape == "openai":  # random padding of varying length on every chunk
            extra = {"obfuscation": "x3Yq9AbZ"[: 1 + next(padding) % 8], **extra}
        return b"data: " + orjson.dumps({**head, "choices": choices, **tail, **extra}) + b"\n\n"

    def choice(delta: dict, finish_reason: str | None = None) -> list:
        if shape == "ollama":  # the role in every delta, no logprobs key
            return [{"index": 0, "delta": {"role": "assistant", **delta}, "finish_reason": finish_reason}]
        entry = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        if shape == "sglang":
            entry["matched_stop"] = None
        return [entry]

    if shape == "tool-args":
        call = {"index": 0, "id": "chatcmpl-tool-8c1f", "type": "function", "function": {"name": "get_weather"}}
        parts = [event(choice({"role": "assistant", "content": None, "tool_calls": [call]}))]
        parts += [
            event(choice({"tool_calls": [{"index": 0, "function": {"arguments": ARGUMENT_PIECES[i % 14]}}]}))
            for i in range(tokens)
        ]
        finish = "tool_calls"
    else:
        parts = [event(choice({"role": "assistant", "content": ""}))]
        parts += [event(choice({"content": WORDS[i % len(WORDS)]})) for i in range(tokens)]
        finish = "stop"
    parts.append(event(choice({}, finish)))
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


def feed(chunks: list[bytes], profile: str) -> StreamConverter:
    converter = StreamConverter(api_named("chat"), profile)
    for chunk in chunks:
        converter.feed(chunk)
    return converter


def convert(chunks: list[bytes], profile: str) -> bytes:
    return feed(chunks, profile).finish()


def payloads(body: bytes) -> list[bytes]:
    return [block[6:] for block in body.split(b"\n\n") if block and block != b"data: [DONE]"]


def assemble_only(events: list[bytes], profile: str) -> None:
    """The assembler's share: parsing is measured apart, so this adds pre-parsed chunks."""
    assembler = make_assembler("chat", profile)
    for chunk in events:
        assembler.add(chunk)


def assembler_held(events: list[bytes], profile: str) -> int:
    """Bytes one assembler keeps once every chunk is in; each chunk is parsed and dropped."""
    loads = orjson.loads
    tracemalloc.start()
    assembler = make_assembler("chat", profile)
    for payload in events:
        assembler.add(loads(payload))
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert assembler.finished
    return held


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
    parser.add_argument("--shapes", nargs="+", default=["vllm", "openai", "sglang", "ollama", "tool-args"])
    parser.add_argument("--profile", default="auto", help="backend profile of the assembler")
    args = parser.parse_args()

    print(f"chat schema, profile {args.profile!r}; rates in events/s on one core")
    print(
        f"{'shape':>9} {'tokens':>6} {'feed':>6} {'floor':>9} {'decode+loads':>12} {'convert':>9} "
        f"{'/floor':>6} {'add µs':>6} {'answer B':>8} {'held B':>7} {'/answer':>7} {'feed peak B':>11} "
        f"{'finish peak B':>13}"
    )
    for shape in args.shapes:
        for tokens in args.tokens:
            body = chat_body(shape, tokens)
            events = body.count(b"\n\n")
            floor = events / best_seconds(lambda: orjson_floor(body), args.seconds)
            parsed = [orjson.loads(payload) for payload in payloads(body)]
            add_us = best_seconds(lambda: assemble_only(parsed, args.profile), args.seconds) / len(parsed) * 1e6
            held = assembler_held(payloads(body), args.profile)
            for size in (PIECE, None):
                chunks = pieces(body, size)
                decoded = events / best_seconds(lambda: decoder_and_loads(chunks), args.seconds)
                converted = events / best_seconds(lambda: convert(chunks, args.profile), args.seconds)
                answer = len(convert(chunks, args.profile))
                feed_peak = peak_memory(lambda: feed(chunks, args.profile))
                finish_peak = peak_memory(lambda: convert(chunks, args.profile))
                print(
                    f"{shape:>9} {tokens:>6} {'16 KiB' if size else 'whole':>6} {floor:>9,.0f} {decoded:>12,.0f} "
                    f"{converted:>9,.0f} {converted / floor:>6.2f} {add_us:>6.2f} {answer:>8,} "
                    f"{held:>7,} {held / answer:>7.2f} {feed_peak:>11,} {finish_peak:>13,}"
                )
    print(
        "add µs: ChatAssembler.add per pre-parsed chunk. held: the assembler's memory with every chunk "
        "in; peaks: the converter's while fed and with finish(), body bytes excluded"
    )


if __name__ == "__main__":
    main()
