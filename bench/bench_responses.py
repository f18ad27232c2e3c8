"""Speed and memory of Responses API stream -> ``response`` conversion on one core.

Run by hand: ``PYTHONPATH=filter:tests python bench/bench_responses.py``. Each body is a text
answer of N ``response.output_text.delta`` events in one server's shape: ``openai`` (every event
with ``sequence_number``, ``logprobs`` and a random ``obfuscation`` pad, full response objects in
the lifecycle events), ``vllm`` (the same, keys sorted as vLLM, SGLang and Ollama write them, no
pad) or ``llamacpp`` (bare events). ``convert`` is what the service runs:
``StreamConverter`` (SSE decoding, the template fast path for text deltas that repeat the last one
but for their text, else ``orjson.loads`` and ``ResponsesAssembler.add`` per event), then
``result()`` and ``orjson.dumps``. The floor is what any
Python converter pays at least: split the body into events, cut the ``data: `` payload out,
``orjson.loads`` it.

Memory (tracemalloc) relative to the answer's JSON size: ``held`` is what the assembler keeps once
every event is in; ``feed peak`` the peak while the events stream through it.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable

import orjson

from buffered_stream.core.sse import SseDecoder
from buffered_stream.schemas.responses import API, GENERIC, ResponsesAssembler
from support.responses_replay import replay

PIECE = 16 << 10
WORDS = [" the", " model", " answer", " is", " streamed", ",", " token", " by", " token", ".", "\n", " 42"]
PAD = "x3Yq9AbZk1Lm0Pq"


def _response(status: str, output: list, usage: dict | None) -> dict:
    return {
        "id": "resp_68b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3",
        "object": "response",
        "created_at": 1767225600,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": "gpt-4.1-2025-04-14",
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


def text_body(shape: str, tokens: int) -> bytes:
    """A ``tokens``-delta text stream in ``shape`` (``openai``, ``vllm`` or ``llamacpp``)."""
    numbered = shape in ("openai", "vllm")
    options = orjson.OPT_SORT_KEYS if shape == "vllm" else 0  # vLLM, SGLang, Ollama: sorted keys
    parts: list[bytes] = []

    def event(name: str, data: dict) -> None:
        if numbered:
            data = {"type": name, "sequence_number": len(parts), **data}
        else:
            data = {"type": name, **data}
        parts.append(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data, option=options) + b"\n\n")

    item_id = "msg_68b1c2d4a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0"
    where: dict = {"item_id": item_id, "output_index": 0, "content_index": 0} if numbered else {"item_id": item_id}
    text = "".join(WORDS[i % len(WORDS)] for i in range(tokens))
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    item = {"id": item_id, "type": "message", "status": "completed", "content": [part], "role": "assistant"}
    usage = {
        "input_tokens": 24,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 24 + tokens,
    }
    if numbered:
        event("response.created", {"response": _response("in_progress", [], None)})
        event("response.in_progress", {"response": _response("in_progress", [], None)})
    else:
        event("response.created", {"response": {"id": "resp_x", "object": "response", "status": "in_progress"}})
    event("response.output_item.added", {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}})
    event("response.content_part.added", {**where, "part": {**part, "text": ""}})
    for i in range(tokens):
        extra = {"logprobs": [], "obfuscation": PAD[: 1 + i % len(PAD)]} if shape == "openai" else {}
        if shape == "vllm":
            extra = {"logprobs": []}
        event("response.output_text.delta", {**where, "delta": WORDS[i % len(WORDS)], **extra})
    event("response.output_text.done", {**where, "text": text})
    event("response.content_part.done", {**where, "part": part})
    event("response.output_item.done", {"output_index": 0, "item": item})
    if numbered:
        event("response.completed", {"response": _response("completed", [item], usage)})
    else:
        event(
            "response.completed",
            {
                "response": {
                    "id": "resp_x",
                    "object": "response",
                    "created_at": 1767225600,
                    "status": "completed",
                    "model": "m",
                    "output": [item],
                    "usage": usage,
                }
            },
        )
    return b"".join(parts)


def pieces(body: bytes, size: int | None) -> list[bytes]:
    return [body] if size is None else [body[i : i + size] for i in range(0, len(body), size)]


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


def payloads(body: bytes) -> list[bytes]:
    return [block.split(b"\ndata: ", 1)[1] for block in body.split(b"\n\n") if block]


def orjson_floor(body: bytes) -> None:
    loads = orjson.loads
    for block in body.split(b"\n\n"):
        if block:
            loads(block[block.index(b"data: ") + 6 :])


def decoder_and_loads(chunks: list[bytes]) -> None:
    decoder = SseDecoder(1 << 20, 2 << 20)
    loads = orjson.loads
    for chunk in chunks:
        for _, payload in decoder.feed(chunk):
            loads(payload)


def convert(chunks: list[bytes], profile: str) -> bytes:
    return orjson.dumps(replay(chunks, profile))


def assemble_only(events: list[dict]) -> None:
    assembler = ResponsesAssembler(GENERIC)
    for event in events:
        assembler.add(event)


def assembler_memory(events: list[bytes], profile: str) -> tuple[int, int]:
    """(bytes the assembler keeps with every event in, peak while they stream through it);
    each event is parsed and dropped, as the pipeline does. A first pass fills orjson's key cache,
    which lives as long as the process, not the answer."""
    loads = orjson.loads
    for payload in events:
        loads(payload)
    tracemalloc.start()
    assembler = ResponsesAssembler(API.profile(profile))
    for payload in events:
        assembler.add(loads(payload))
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert assembler.finished
    return held, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time budget per measurement")
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--shapes", nargs="+", default=["openai", "vllm", "llamacpp"])
    parser.add_argument("--profile", default="auto", help="backend profile of the assembler")
    args = parser.parse_args()

    print(f"responses schema, profile {args.profile!r}; rates in events/s on one core")
    print(
        f"{'shape':>8} {'tokens':>6} {'feed':>6} {'floor':>9} {'decode+loads':>12} {'convert':>9} {'/floor':>6} "
        f"{'add µs':>6} {'answer B':>8} {'held B':>7} {'/answer':>7} {'feed peak B':>11} {'/answer':>7}"
    )
    for shape in args.shapes:
        for tokens in args.tokens:
            body = text_body(shape, tokens)
            events = body.count(b"\n\n")
            floor = events / best_seconds(lambda: orjson_floor(body), args.seconds)
            parsed = [orjson.loads(payload) for payload in payloads(body)]
            add_us = best_seconds(lambda: assemble_only(parsed), args.seconds) / len(parsed) * 1e6
            answer = len(convert([body], args.profile))
            held, peak = assembler_memory(payloads(body), args.profile)
            for size in (PIECE, None):
                chunks = pieces(body, size)
                decoded = events / best_seconds(lambda: decoder_and_loads(chunks), args.seconds)
                converted = events / best_seconds(lambda: convert(chunks, args.profile), args.seconds)
                print(
                    f"{shape:>8} {tokens:>6} {'16 KiB' if size else 'whole':>6} {floor:>9,.0f} {decoded:>12,.0f} "
                    f"{converted:>9,.0f} {converted / floor:>6.2f} {add_us:>6.2f} {answer:>8,} {held:>7,} "
                    f"{held / answer:>7.2f} {peak:>11,} {peak / answer:>7.2f}"
                )
    print(
        "add µs: ResponsesAssembler.add per pre-parsed event. held: the assembler's memory with every event in; "
        "feed peak: its peak while events stream through it (each parsed event included)"
    )


if __name__ == "__main__":
    main()
