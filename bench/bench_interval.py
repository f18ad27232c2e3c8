"""What coarser upstream chunks buy: Envoy + service CPU per answer at stream intervals 1, 8 and 32.

Run by hand (``python bench/bench_interval.py``: about 2.5 minutes; ``--quick`` for ~2 s per cell,
~1.5 minutes; ``--floor`` adds ``bench/floor.py``, a servicer that converts nothing, on the same
routes; ``--intervals 1 8 32 64`` adds intervals). One pre-rendered backend (``bench/backend.py``, ``vllm-N`` models: vLLM 0.33's shapes, one
token per millisecond, batched as vLLM batches them for the request's ``stream_interval``), one Envoy
and the service. Each converting route names ``profile: vllm`` and sets
``upstream_stream_interval`` (8, 32; unset for 1), so the service's own rewrite asks the backend
for the interval. For each mode (keep-alive, streamed, buffered) and interval, a closed loop of
non-stream requests for 1,024-token answers; CPU is read from ``/proc`` for Envoy and the service,
gRPC messages from the service's counters; ratios are against interval 1 of the same mode in the
same run. Envoy alone (the paced SSE passed through, ``stream: true`` with the interval in the
request) is measured beside them for reference.

Then, per interval, the largest answer whose SSE body fits Envoy's buffer in buffered mode
(``per_connection_buffer_limit_bytes``, also the buffered routes' ``max_body_bytes``): computed from
the exact bytes the backend renders, then checked through Envoy (that size converts; 2 % more does not).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson

import backend as bench_backend
from buffered_stream.envoy_config import enable_keepalive, routes
from load import pick_loader
from run import Cell, measure
from stack import BenchStack, Placement
from support.net import http_request

MODES = ("keepalive", "streamed", "buffered")
INTERVALS = (1, 8, 32)
TARGET_RATIO, TARGET_INTERVAL = (
    0.1,
    32,
)  # per-token cost at interval 32 against interval 1, keep-alive and streamed modes


def path(mode: str, interval: int) -> str:
    return f"/i{interval}/{mode}/v1/chat/completions"


def interval_routes(config: dict[str, Any], keepalive_seconds: float) -> None:
    """A converting route per (mode, interval), all ``profile: vllm``."""
    table = routes(config)
    chat = next(r for r in table if r["name"] == "chat_completions")
    for mode in MODES:
        for interval in INTERVALS:
            route = copy.deepcopy(chat)
            route["name"] = f"chat_{mode}_i{interval}"
            route["match"] = {"path": path(mode, interval)}
            route["route"]["prefix_rewrite"] = "/v1/chat/completions"
            settings = route["metadata"]["filter_metadata"]["buffered_stream"]
            settings.update(profile="vllm", mode="buffered" if mode == "buffered" else "streamed")
            if interval > 1:
                settings["upstream_stream_interval"] = interval
            if mode == "keepalive":
                enable_keepalive(route, keepalive_seconds)
            table.insert(0, route)


class IntervalStack(BenchStack):
    """The bench stack with the per-interval routes."""

    def _start_envoy(self) -> None:
        import stack as bench_stack

        original = bench_stack.bench_envoy_config

        def config(*args: Any, **kwargs: Any) -> dict[str, Any]:
            built = original(*args, **kwargs)
            interval_routes(built, self.keepalive_seconds)
            self.buffer_limit = built["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"]
            return built

        bench_stack.bench_envoy_config = config
        try:
            super()._start_envoy()
        finally:
            bench_stack.bench_envoy_config = original


def request(tokens: int, *, kind: str = "vllm", stream: bool = False, interval: int = 0) -> bytes:
    body: dict[str, Any] = {"model": f"{kind}-{tokens}", "messages": [{"role": "user", "content": "Say something."}]}
    if stream:
        body["stream"] = True
    if interval > 1:
        body["stream_interval"] = interval
    return orjson.dumps(body)


def check_answers(stack: BenchStack, tokens: int) -> list[str]:
    native = http_request(f"{stack.backend_url}/v1/chat/completions", "POST", request(tokens)).json()
    problems = []
    for mode in MODES:
        for interval in INTERVALS:
            got = http_request(f"{stack.envoy_url}{path(mode, interval)}", "POST", request(tokens), timeout=60)
            if got.status != 200 or got.json() != native:
                problems.append(f"{mode} i{interval}: {got.status} {got.body[:200]!r}")
    return problems


def sse_bytes(tokens: int, interval: int) -> int:
    """The de-chunked SSE body the backend sends for this answer (what Envoy buffers)."""
    chunks, _, _ = bench_backend.vllm_rendered.__wrapped__(tokens, interval)
    total = 0
    for chunk in chunks:
        while chunk and chunk != bench_backend.CHUNKED_END:
            size_end = chunk.index(b"\r\n")
            size = int(chunk[:size_end], 16)
            total += size
            chunk = chunk[size_end + 2 + size + 2 :]
    return total


def largest_fitting(limit: int, interval: int) -> int:
    lo, hi = 1, bench_backend.MAX_VLLM_TOKENS
    if sse_bytes(hi, interval) <= limit:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if sse_bytes(mid, interval) <= limit else (lo, mid)
    return lo


def buffer_fit(stack: IntervalStack) -> list[str]:
    limit = stack.buffer_limit
    lines = [
        f"{'interval':>8} {'SSE B/token':>11} {'largest answer (tokens)':>23} {'x interval 1':>12} "
        f"{'at it':>6} {'at +2 %':>8}"
    ]
    base = None
    for interval in INTERVALS:
        fits = largest_fitting(limit, interval)
        base = base or fits
        native = http_request(
            f"{stack.backend_url}/v1/chat/completions", "POST", request(fits, kind="vllmburst")
        ).json()
        at = http_request(
            f"{stack.envoy_url}{path('buffered', interval)}", "POST", request(fits, kind="vllmburst"), timeout=120
        )
        over = http_request(
            f"{stack.envoy_url}{path('buffered', interval)}",
            "POST",
            request(int(fits * 1.02), kind="vllmburst"),
            timeout=120,
        )
        verdict = "200 ok" if at.status == 200 and at.json() == native else f"{at.status} WRONG"
        lines.append(
            f"{interval:>8} {sse_bytes(1024, interval) / 1024:>11.1f} {fits:>23,} {fits / base:>12.1f} {verdict:>6} "
            f"{over.status:>8}"
        )
    lines.append(
        f"(Envoy's per_connection_buffer_limit_bytes and the buffered routes' max_body_bytes: {limit:,} bytes of SSE)"
    )
    return lines


def per_answer_ms(cell: Cell, role: str) -> float:
    return 1e3 * cell.cpu_s[role] / cell.load.requests if cell.load.requests else float("nan")


def table(cells: dict[tuple[str, int], list[Cell]], tokens: int) -> tuple[str, list[str]]:
    header = (
        f"{'mode':<15} {'interval':>8} {'answers':>7} {'svc ms/ans':>10} {'envoy ms/ans':>12} {'us/token':>8} "
        f"{'x i1':>6} {'msg/ans':>7} {'chunks/ans':>10} {'p50 ms':>7}"
    )
    lines, verdicts = [header, "-" * len(header)], []
    for mode in (*MODES, "keepalive floor", "streamed floor", "envoy"):
        base = None
        for interval in INTERVALS:
            measured = cells.get((mode, interval))
            if not measured:
                continue
            svc = statistics.median(per_answer_ms(c, "service") for c in measured) if mode != "envoy" else 0.0
            envoy = statistics.median(per_answer_ms(c, "envoy") for c in measured)
            per_token = 1e3 * (svc + envoy) / tokens
            base = base or per_token
            ratio = per_token / base
            answers = sum(c.load.requests for c in measured)
            messages = statistics.median(c.messages_per_request for c in measured) if mode != "envoy" else 0.0
            chunks = statistics.median(c.chunks_per_request for c in measured) if mode != "envoy" else 0.0
            p50 = statistics.median(c.load.p50_ms for c in measured)
            label = mode if mode != "envoy" else "envoy alone"
            lines.append(
                f"{label:<15} {interval:>8} {answers:>7} {svc:>10.2f} {envoy:>12.2f} {per_token:>8.2f} {ratio:>6.3f} "
                f"{messages:>7.1f} {chunks:>10.1f} {p50:>7.0f}"
            )
            if mode in ("keepalive", "streamed") and interval == TARGET_INTERVAL:
                verdicts.append(
                    f"{mode}: per-token cost (Envoy + service) at interval {interval} is {ratio:.3f}x interval 1 "
                    f"(target <= {TARGET_RATIO}): {'MET' if ratio <= TARGET_RATIO else 'MISSED'}"
                )
    return "\n".join(lines), verdicts


def main() -> None:
    global INTERVALS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per cell (default 6)")
    parser.add_argument("--quick", action="store_true", help="2 s per cell")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--repeat", type=int, default=1, help="measure each cell this many times, interleaved (medians)"
    )
    parser.add_argument("--loader", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--no-fit", dest="fit", action="store_false", help="skip the buffer-fit probes")
    parser.add_argument(
        "--intervals", type=int, nargs="+", default=list(INTERVALS), help="tokens per chunk (default 1 8 32)"
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also measure bench/floor.py (a minimal servicer, constant replies) on the keep-alive and streamed "
        "routes: what any Python ext_proc service pays for the same messages",
    )
    args = parser.parse_args()
    INTERVALS = tuple(sorted(set(args.intervals) | {1}))
    if args.quick:
        args.seconds = 2.0
    args.loader = pick_loader(args.loader)
    with tempfile.TemporaryDirectory(prefix="bench-interval-") as work_dir:
        directory = Path(work_dir, "stack")
        directory.mkdir()
        floor_directory = Path(work_dir, "floor")
        floor_directory.mkdir()
        with (
            closing(IntervalStack(directory, Placement())) as stack,
            closing(IntervalStack(floor_directory, Placement(), floor=True)) as floor,
        ):
            stack.start()
            if args.floor:
                floor.start()
            problems = check_answers(stack, args.tokens)
            print(
                "converted answers equal the native ones: "
                + ("yes" if not problems else "NO\n  " + "\n  ".join(problems)),
                flush=True,
            )
            print(
                f"{args.tokens}-token answers at 1 token/ms, {args.concurrency} concurrent, {args.seconds:g} s per cell, "
                f"loader {args.loader}",
                flush=True,
            )
            cells: dict[tuple[str, int], list[Cell]] = {}
            for _ in range(args.repeat):
                for interval in INTERVALS:
                    for mode in (*MODES, "envoy"):
                        if mode == "envoy":
                            url, body = (
                                f"{stack.envoy_url}/direct/v1/chat/completions",
                                request(args.tokens, stream=True, interval=interval),
                            )
                        else:
                            url, body = f"{stack.envoy_url}{path(mode, interval)}", request(args.tokens)
                        cell = measure(stack, args, mode, url, body, args.tokens, args.concurrency, paced=True)
                        cells.setdefault((mode, interval), []).append(cell)
                        print(
                            f"  measured {mode} i{interval}: {cell.load.requests} answers, {cell.load.errors} errors",
                            flush=True,
                        )
                        if args.floor and mode in ("keepalive", "streamed"):
                            url = f"{floor.envoy_url}{path(mode, interval)}"
                            cell = measure(
                                floor, args, mode, url, body, args.tokens, args.concurrency, paced=True, variant="floor"
                            )
                            cell.counted = cells[(mode, interval)][-1].counted
                            cells.setdefault((f"{mode} floor", interval), []).append(cell)
            text, verdicts = table(cells, args.tokens)
            print()
            print(text)
            print(
                "\nsvc/envoy ms/ans: CPU per answer (user+system, all threads, from /proc); us/token: both together per "
                "token; x i1: against interval 1 of the same mode in this run; msg/ans: gRPC messages the service got "
                "per answer; chunks/ans: upstream body messages per answer."
            )
            print("\n".join(verdicts))
            if args.fit:
                print("\nlargest answer that fits in buffered mode, per interval:", flush=True)
                print("\n".join(buffer_fit(stack)))


if __name__ == "__main__":
    main()
