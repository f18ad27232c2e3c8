"""Is the service ever Envoy's bottleneck? Envoy alone against Envoy + buffered-stream, under load.

Run by hand: ``make bench`` (``ARGS=--quick`` for a short run, ``ARGS='--inflight 5000'`` to add the
in-flight test). One Envoy, one pre-rendered backend and the service are started; a closed-loop
loader drives, for each answer size and concurrency, the same non-stream chat request through:

- ``envoy``: Envoy alone (the route with ext_proc disabled; the backend answers native JSON),
- ``buffered``: converted, response body BUFFERED (one gRPC message for the whole stream),
- ``streamed``: converted, response body STREAMED (one gRPC message per upstream chunk),
- ``keepalive``: converted with keep-alive, response body FULL_DUPLEX_STREAMED (one gRPC message
  per upstream chunk in, one reply per answer plus one per keep-alive byte out),

and the backend directly (its capacity, so a reader can see it was never the limit). The backend
answers instantly, so these rows are the worst case for the service: all of its work per request
against none from the backend. The ``paced`` rows are the realistic case: one upstream chunk per
token, 1 ms apart (Envoy alone then passes the same SSE through, ``stream: true``).

CPU is read from ``/proc/<pid>/stat`` of every process, so costs are per 1,000 requests whatever the
throughput; gRPC messages per request come from the service's own counters. ``--inflight N``
holds N converted requests open at once in each mode and reports the memory each one costs.
Options to compare variants (pinning, Envoy workers, several service processes, plain asyncio, a
patched copy of the package) are listed by ``--help``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import orjson

from counters import MESSAGE_PHASES, delta, service_counters
from inflight import format_inflight, measure_inflight
from load import LoadResult, pick_loader, run_load
from procstat import machine_busy_seconds
from stack import BenchStack, Placement
from support.net import http_request

PATHS = {
    "envoy": "/direct/v1/chat/completions",
    "buffered": "/v1/chat/completions",
    "streamed": "/streamed/v1/chat/completions",
    "keepalive": "/keepalive/v1/chat/completions",
}
CONVERTED = ("buffered", "streamed", "keepalive")
BACKEND_PATHS = {"backend-json": False, "backend-sse": True}  # path label -> stream
ROLES = ("service", "envoy", "backend")
CPUS = 2


def chat_request(tokens: int, *, stream: bool = False, kind: str = "bench") -> bytes:
    """A chat request whose ``model`` tells the bench backend how to answer (see backend.py)."""
    request = {"model": f"{kind}-{tokens}", "messages": [{"role": "user", "content": "Say something."}]}
    if stream:
        request["stream"] = True
    return orjson.dumps(request)


@dataclass
class Cell:
    """One measured (path, answer size, concurrency)."""

    path: str
    tokens: int
    concurrency: int
    paced: bool
    load: LoadResult
    cpu_s: dict[str, float]
    service_peak_rss: int
    counted: dict[str, float]
    machine_cpu_s: float  # every process on the machine, ours included
    variant: str = ""  # "floor": the minimal servicer of bench/floor.py instead of the service

    @property
    def label(self) -> str:
        return self.path + (" paced" if self.paced else "") + (f" {self.variant}" if self.variant else "")

    @property
    def foreign_busy(self) -> float:
        """Share of the machine used by processes this bench did not start (should be ~0)."""
        return max(0.0, self.machine_cpu_s - sum(self.cpu_s.values())) / (CPUS * self.load.duration_s)

    def cpu_per_1k(self, role: str) -> float:
        return 1000 * self.cpu_s[role] / self.load.requests if self.load.requests else float("nan")

    @property
    def machine_busy(self) -> float:
        return sum(self.cpu_s.values()) / (CPUS * self.load.duration_s)

    @property
    def messages_per_request(self) -> float:
        return self.counted.get("messages", 0) / self.load.requests if self.load.requests else 0.0

    @property
    def chunks_per_request(self) -> float:
        return self.counted.get("chunks", 0) / self.load.requests if self.load.requests else 0.0


def measure(
    stack: BenchStack,
    args: argparse.Namespace,
    path: str,
    url: str,
    body: bytes,
    tokens: int,
    concurrency: int,
    paced: bool = False,
    variant: str = "",
) -> Cell:
    before, counted_before = stack.stats(), service_counters(stack)
    stack.reset_peak_memory()
    machine_before = machine_busy_seconds()
    load = run_load(args.loader, url, body, concurrency, args.seconds, stack.placement.loader)
    machine_cpu = machine_busy_seconds() - machine_before
    after, counted_after = stack.stats(), service_counters(stack)
    cpu = {role: after[role].cpu_s - before[role].cpu_s for role in ROLES}
    cpu["loader"] = load.loader_cpu_s
    return Cell(
        path,
        tokens,
        concurrency,
        paced,
        load,
        cpu,
        after["service"].peak_rss,
        delta(counted_after, counted_before),
        machine_cpu,
        variant,
    )


def measure_floor(
    floor: BenchStack,
    args: argparse.Namespace,
    path: str,
    body: bytes,
    tokens: int,
    concurrency: int,
    shipped: Cell,
    paced: bool = False,
) -> Cell:
    """The floor's cell beside the shipped one just measured. The floor counts nothing: the same
    requests bring the same messages and chunks, so the shipped cell's counts are scaled."""
    cell = measure(
        floor, args, path, f"{floor.envoy_url}{PATHS[path]}", body, tokens, concurrency, paced=paced, variant="floor"
    )
    scale = cell.load.requests / shipped.load.requests if shipped.load.requests else 0.0
    cell.counted = Counter({key: value * scale for key, value in shipped.counted.items()})
    return cell


def check_answers(stack: BenchStack, sizes: list[int]) -> list[str]:
    """Each converted answer must equal the backend's native one; the differences, if any."""
    problems = []
    for tokens in sizes:
        native = http_request(f"{stack.envoy_url}{PATHS['envoy']}", "POST", chat_request(tokens))
        for path in CONVERTED:
            got = http_request(f"{stack.envoy_url}{PATHS[path]}", "POST", chat_request(tokens))
            if got.status != 200 or got.headers.get("content-type") != "application/json":
                problems.append(f"{path} {tokens}: {got.status} {got.headers.get('content-type')} {got.body[:200]!r}")
            elif got.json() != native.json():
                problems.append(f"{path} {tokens}: answer differs from the native one")
    return problems


def message_costs(stack: BenchStack, repeat: int = 20) -> list[tuple[str, dict[str, float], float]]:
    """gRPC messages per request (by phase) and upstream chunks per request, for each kind of request."""
    base = stack.envoy_url
    kinds = [
        ("converted chat, buffered, 256 tok", "POST", PATHS["buffered"], chat_request(256)),
        ("converted chat, buffered, 4096 tok", "POST", PATHS["buffered"], chat_request(4096)),
        ("converted chat, streamed, 256 tok", "POST", PATHS["streamed"], chat_request(256)),
        ("converted chat, streamed, 4096 tok", "POST", PATHS["streamed"], chat_request(4096)),
        ("stream:true on converting route", "POST", PATHS["buffered"], chat_request(256, stream=True)),
        ("GET on converting route (not LLM)", "GET", PATHS["buffered"], None),
        ("GET /v1/models (ext_proc disabled)", "GET", "/v1/models", None),
        ("/direct/ chat (ext_proc disabled)", "POST", PATHS["envoy"], chat_request(256)),
    ]
    costs = []
    for label, method, path, body in kinds:
        before = service_counters(stack)
        for _ in range(repeat):
            http_request(f"{base}{path}", method, body)
        spent = delta(service_counters(stack), before)
        by_phase = {phase: spent[f"messages:{phase}"] / repeat for phase in MESSAGE_PHASES}
        costs.append((label, by_phase, spent["chunks"] / repeat))
    return costs


def format_table(cells: list[Cell]) -> str:
    alone = {(c.paced, c.tokens, c.concurrency): c for c in cells if c.path == "envoy"}
    header = (
        f"{'path':<15} {'tok':>4} {'conc':>4} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'err':>4} "
        f"{'svc s/1k':>8} {'envoy s/1k':>10} {'bknd s/1k':>9} {'load s/1k':>9} {'busy':>5} {'other':>5} "
        f"{'svc MB':>6} {'msg/req':>7} {'xthr':>5} {'+p50 ms':>7} {'+p99 ms':>7}"
    )
    lines = [header, "-" * len(header)]
    for c in cells:
        base = alone.get((c.paced, c.tokens, c.concurrency))
        converted = c.path in CONVERTED and base is not None
        service = c.path in CONVERTED
        lines.append(
            f"{c.label:<15} {c.tokens:>4} {c.concurrency:>4} {c.load.rps:>7.0f} {c.load.p50_ms:>7.2f} {c.load.p99_ms:>7.2f} "
            f"{c.load.errors:>4} "
            f"{c.cpu_per_1k('service') if service else 0:>8.3f} {c.cpu_per_1k('envoy'):>10.3f} "
            f"{c.cpu_per_1k('backend'):>9.3f} {c.cpu_per_1k('loader'):>9.3f} {c.machine_busy:>5.0%} {c.foreign_busy:>5.0%} "
            f"{c.service_peak_rss / 2**20 if service else 0:>6.1f} {c.messages_per_request if service else 0:>7.1f} "
            + (
                f"{c.load.rps / base.load.rps:>5.2f} {c.load.p50_ms - base.load.p50_ms:>7.2f} {c.load.p99_ms - base.load.p99_ms:>7.2f}"
                if converted
                else f"{'':>5} {'':>7} {'':>7}"
            )
        )
    return "\n".join(lines)


def format_message_costs(costs: list[tuple[str, dict[str, float], float]]) -> str:
    short = {
        "request_headers": "req hdr",
        "request_body": "req body",
        "response_headers": "resp hdr",
        "response_body": "resp body",
    }
    lines = [
        f"{'request':<36} "
        + " ".join(f"{short[p]:>9}" for p in MESSAGE_PHASES)
        + f" {'total':>7} {'upstream chunks':>15}"
    ]
    for label, by_phase, chunks in costs:
        lines.append(
            f"{label:<36} "
            + " ".join(f"{by_phase[p]:>9.1f}" for p in MESSAGE_PHASES)
            + f" {sum(by_phase.values()):>7.1f} {chunks:>15.1f}"
        )
    return "\n".join(lines)


def floor_verdicts(cells: list[Cell]) -> list[str]:
    """Service CPU of the shipped service against the floor (bench/floor.py), medians of the
    interleaved repeats: per conversion (buffered) and per upstream chunk (streamed, keep-alive;
    the paced rows, one chunk per token, are where that cost shows)."""
    out = []
    keys = sorted(
        {(c.path, c.tokens, c.concurrency, c.paced) for c in cells if c.variant == "floor"},
        key=lambda k: (k[3], k[1], k[2], PATHS_ORDER[k[0]]),
    )
    for path, tokens, concurrency, paced in keys:
        shipped = [
            c
            for c in cells
            if (c.path, c.tokens, c.concurrency, c.variant, c.paced) == (path, tokens, concurrency, "", paced)
        ]
        floor = [
            c
            for c in cells
            if (c.path, c.tokens, c.concurrency, c.variant, c.paced) == (path, tokens, concurrency, "floor", paced)
        ]
        if not shipped or not floor or not all(c.load.requests for c in shipped + floor):
            continue
        ms = statistics.median(1e3 * c.cpu_s["service"] / c.load.requests for c in shipped)
        floor_ms = statistics.median(1e3 * c.cpu_s["service"] / c.load.requests for c in floor)
        line = (
            f"{path}{' paced' if paced else ''}, {tokens} tok, {concurrency} conc: service CPU per conversion {ms:.2f} ms, "
            f"floor {floor_ms:.2f} ms, +{ms - floor_ms:.2f} ms (median of {len(shipped)}/{len(floor)})"
        )
        if path == "buffered" and tokens == 256 and not paced:
            line += f" (target <= floor + 0.3): {'MET' if ms - floor_ms <= 0.3 else 'MISSED'}"
        assembled = sum(c.counted.get("assembled", 0) for c in shipped)
        if assembled:
            line += (
                f"; in the converter {1e3 * sum(c.counted.get('assembly_s', 0) for c in shipped) / assembled:.2f} ms"
            )
        chunks = statistics.median(c.chunks_per_request for c in shipped)
        if path != "buffered" and chunks >= 2:
            ratio = ms / floor_ms if floor_ms else float("nan")
            line += (
                f"; per upstream chunk {1e3 * ms / chunks:.0f} us, floor {1e3 * floor_ms / chunks:.0f} us, {ratio:.2f}x"
                f" (target <= 1.3x): {'MET' if ratio <= 1.3 else 'MISSED'}"
            )
        out.append(line)
    return out


PATHS_ORDER = {path: i for i, path in enumerate(PATHS)}


def verdicts(cells: list[Cell]) -> list[str]:
    """The targets, with where this run landed."""
    cells = [c for c in cells if not c.variant]
    find = {(c.path, c.tokens, c.concurrency): c for c in cells if not c.paced}
    out = []
    b16, e16 = find.get(("buffered", 256, 16)), find.get(("envoy", 256, 16))
    if b16 and e16:
        p50, p99 = b16.load.p50_ms - e16.load.p50_ms, b16.load.p99_ms - e16.load.p99_ms
        out.append(
            f"buffered, 256 tok, 16 conc: added p50 {p50:.2f} ms (target <= 1.5): {'MET' if p50 <= 1.5 else 'MISSED'}; "
            f"added p99 {p99:.2f} ms (target <= 5): {'MET' if p99 <= 5 else 'MISSED'}"
        )
    for tokens in sorted({c.tokens for c in cells}):
        for path in CONVERTED:
            conv, base = find.get((path, tokens, 64)), find.get(("envoy", tokens, 64))
            if conv and base and base.load.rps:
                ratio = conv.load.rps / base.load.rps
                out.append(
                    f"{path}, {tokens} tok, 64 conc: throughput ratio {ratio:.2f} (target >= 0.8): {'MET' if ratio >= 0.8 else 'MISSED'}"
                )
    for tokens in sorted({c.tokens for c in cells}):
        # Only where chunks are many: a burst answer arrives in one chunk, so it says nothing per chunk.
        streamed = [c for c in cells if c.path == "streamed" and c.tokens == tokens and c.chunks_per_request >= 2]
        buffered = {(c.paced, c.concurrency): c for c in cells if c.path == "buffered" and c.tokens == tokens}
        for c in streamed:
            per_chunk = 1e6 * c.cpu_s["service"] / c.counted["chunks"]
            line = (
                f"streamed{' paced' if c.paced else ''}, {tokens} tok, {c.concurrency} conc: {c.chunks_per_request:.1f} "
                f"chunks/request, service {per_chunk:.0f} us CPU per chunk (all-in)"
            )
            b = buffered.get((c.paced, c.concurrency))
            if b:
                extra_cpu = c.cpu_s["service"] / c.load.requests - b.cpu_s["service"] / b.load.requests
                line += f", {1e6 * extra_cpu / (c.chunks_per_request - b.chunks_per_request):.0f} us per extra chunk over buffered"
            out.append(line)
    for c in cells:
        # Keep-alive against streamed mode, same size, concurrency and pacing: CPU per answer.
        if c.path != "keepalive":
            continue
        s = next(
            (
                x
                for x in cells
                if x.path == "streamed" and (x.tokens, x.concurrency, x.paced) == (c.tokens, c.concurrency, c.paced)
            ),
            None,
        )
        if s is None or not c.load.requests or not s.load.requests:
            continue
        ratio = (c.cpu_s["service"] / c.load.requests) / (s.cpu_s["service"] / s.load.requests)
        if c.chunks_per_request >= 2:
            out.append(
                f"keepalive{' paced' if c.paced else ''}, {c.tokens} tok, {c.concurrency} conc: service CPU per answer "
                f"{ratio:.2f}x streamed mode (target <= 1.05): {'MET' if ratio <= 1.05 else 'MISSED'}; "
                f"{1e6 * c.cpu_s['service'] / c.counted['chunks']:.0f} us per upstream chunk"
            )
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per cell (default 6)")
    parser.add_argument("--quick", action="store_true", help="2 s per cell")
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 4096], help="answer sizes")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--loader", choices=("auto", "wrk", "python"), default="auto", help="auto: wrk when installed")
    parser.add_argument(
        "--inflight", type=int, default=0, metavar="N", help="also hold N converted requests at once (per mode)"
    )
    parser.add_argument("--inflight-tokens", type=int, default=256)
    parser.add_argument("--inflight-rate", type=float, default=250.0, help="new held requests per second (default 250)")
    parser.add_argument(
        "--keepalive-seconds", type=float, default=5.0, help="keep-alive interval of the keepalive route (default 5)"
    )
    parser.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="skip the floor: bench/floor.py (a minimal servicer, constant replies) run as a second stack "
        "whose cells interleave with the service's",
    )
    parser.add_argument(
        "--compare-workers",
        type=int,
        default=2,
        metavar="N",
        help="also compare 1 against N workers (serve --workers N) on buffered 256-token answers (0: skip)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="measure each converted cell this many times (medians reported)"
    )
    parser.add_argument("--skip-backend", action="store_true", help="do not measure the backend's own capacity")
    parser.add_argument(
        "--paced-concurrency",
        type=int,
        default=16,
        help="concurrency of the paced-stream cells (one upstream chunk per token, 1 ms apart; 0: skip)",
    )
    placement = parser.add_argument_group("placement and service variants")
    placement.add_argument("--envoy-workers", type=int, default=2, help="Envoy --concurrency (default 2)")
    for role in ("envoy", "service", "backend", "loader"):
        placement.add_argument(f"--{role}-cpus", default=None, help=f"taskset CPU list for the {role} (default: any)")
    placement.add_argument(
        "--services", type=int, default=1, help="service processes, each an endpoint of the ext_proc cluster"
    )
    placement.add_argument(
        "--workers",
        type=int,
        default=1,
        help="serve --workers of each service process: workers sharing one port (default 1)",
    )
    placement.add_argument(
        "--service-asyncio", action="store_true", help="run the service on plain asyncio instead of uvloop"
    )
    placement.add_argument(
        "--service-pythonpath",
        default=None,
        help="put this directory first on the service's PYTHONPATH (try a patched copy)",
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds = 2.0
    args.loader = pick_loader(args.loader)
    return args


def main() -> None:
    args = parse_args()
    placement = Placement(args.envoy_cpus, args.service_cpus, args.backend_cpus, args.loader_cpus, args.envoy_workers)
    with tempfile.TemporaryDirectory(prefix="bench-") as work_dir:

        def new_stack(name: str, floor: bool = False, workers: int | None = None) -> BenchStack:
            directory = Path(work_dir, name)
            directory.mkdir()
            return BenchStack(
                directory,
                placement,
                args.services,
                workers or args.workers,
                args.service_pythonpath,
                not args.service_asyncio,
                args.keepalive_seconds,
                floor,
            )

        foreign = foreign_load()
        print(
            f"before start: {foreign:.0%} of the machine busy with other processes"
            + (" -- the numbers below will be noisy" if foreign > 0.05 else ""),
            flush=True,
        )
        with closing(new_stack("load")) as stack, closing(new_stack("floor", floor=True)) as floor:
            run_load_matrix(stack.start(), args, floor.start() if args.floor else None)
            if args.compare_workers > 1 and args.compare_workers != args.workers:
                with closing(new_stack("workers", workers=args.compare_workers)) as several:
                    compare_workers(args, stack, several.start())
        if args.inflight:
            print(
                f"\nin flight: {args.inflight} converted requests of {args.inflight_tokens} tokens held at once "
                f"(arriving {args.inflight_rate:g}/s), each mode on a freshly started stack:",
                flush=True,
            )
            results = []
            for mode in CONVERTED:
                with closing(new_stack(f"inflight-{mode}")) as stack:
                    stack.start()
                    results.append(
                        measure_inflight(
                            stack, PATHS[mode], mode, args.inflight, args.inflight_tokens, args.inflight_rate
                        )
                    )
            print(format_inflight(results))


def compare_workers(args: argparse.Namespace, one: BenchStack, several: BenchStack) -> None:
    """The same buffered 256-token load on ``args.workers`` and on ``args.compare_workers`` workers,
    interleaved cell by cell (medians of ``--repeat``): what more workers buy on this machine."""
    print(
        f"\n{args.workers} against {args.compare_workers} workers (serve --workers), buffered, 256 tok, "
        f"{args.seconds:g} s per cell, median of {args.repeat}:",
        flush=True,
    )
    header = f"{'workers':>7} {'conc':>4} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'err':>4} {'svc ms/req':>10} {'envoy ms/req':>12} {'xthr':>5}"
    lines = [header, "-" * len(header)]
    body, url = chat_request(256), PATHS["buffered"]
    for concurrency in (16, 64):
        rows: dict[int, list[Cell]] = {args.workers: [], args.compare_workers: []}
        for _ in range(args.repeat):
            for stack, workers in ((one, args.workers), (several, args.compare_workers)):
                rows[workers].append(
                    measure(stack, args, "buffered", f"{stack.envoy_url}{url}", body, 256, concurrency)
                )
        base = statistics.median(c.load.rps for c in rows[args.workers])
        for workers, measured in rows.items():
            rps = statistics.median(c.load.rps for c in measured)

            def per(role: str, measured: list = measured) -> float:
                return statistics.median(1e3 * c.cpu_s[role] / c.load.requests for c in measured if c.load.requests)

            lines.append(
                f"{workers:>7} {concurrency:>4} {rps:>7.0f} {statistics.median(c.load.p50_ms for c in measured):>7.2f} "
                f"{statistics.median(c.load.p99_ms for c in measured):>7.2f} {sum(c.load.errors for c in measured):>4} "
                f"{per('service'):>10.3f} {per('envoy'):>12.3f} {rps / base if base else 0:>5.2f}"
            )
    print("\n".join(lines))
    print(
        f"xthr: throughput against {args.workers} worker(s) in the same run. On {CPUS} cores Envoy, the backend and the loader "
        "share the CPUs with the workers, so more workers buy less here than on a machine with cores to spare."
    )


def foreign_load(seconds: float = 1.0) -> float:
    """Share of the machine busy over ``seconds`` while nothing of ours runs."""
    before = machine_busy_seconds()
    time.sleep(seconds)
    return (machine_busy_seconds() - before) / (CPUS * seconds)


def run_load_matrix(stack: BenchStack, args: argparse.Namespace, floor: BenchStack | None = None) -> None:
    loop = "asyncio" if args.service_asyncio else "uvloop"
    print(
        f"placement: {stack.placement.describe()}; {args.services} service process(es) x {args.workers} worker(s) on {loop}; "
        f"loader {args.loader}; {args.seconds:g} s per cell",
        flush=True,
    )
    problems = check_answers(stack, args.tokens)
    print(
        "converted answers equal the native ones: " + ("yes" if not problems else "NO\n  " + "\n  ".join(problems)),
        flush=True,
    )
    if floor is not None:
        problems = check_answers(floor, args.tokens)  # also builds the floor's constant replies
        print(
            "floor answers equal the native ones: " + ("yes" if not problems else "NO\n  " + "\n  ".join(problems)),
            flush=True,
        )
    for path in args.paths:  # warm every path up (connections, caches) before measuring
        for each in (stack, floor) if floor is not None else (stack,):
            run_load(args.loader, f"{each.envoy_url}{PATHS[path]}", chat_request(args.tokens[0]), 16, 1)
    cells: list[Cell] = []
    if not args.skip_backend:
        for tokens in args.tokens:
            for label, stream in BACKEND_PATHS.items():
                url = f"{stack.backend_url}/v1/chat/completions"
                cells.append(
                    measure(stack, args, label, url, chat_request(tokens, stream=stream), tokens, max(args.concurrency))
                )
                print(f"  measured {label} {tokens} tok", flush=True)
    for tokens in args.tokens:
        for concurrency in args.concurrency:
            for path in args.paths:
                for _ in range(args.repeat if path in CONVERTED else 1):
                    url = f"{stack.envoy_url}{PATHS[path]}"
                    cells.append(measure(stack, args, path, url, chat_request(tokens), tokens, concurrency))
                    if floor is not None and path in CONVERTED:
                        cells.append(
                            measure_floor(floor, args, path, chat_request(tokens), tokens, concurrency, cells[-1])
                        )
            print(f"  measured {tokens} tok, {concurrency} conc", flush=True)
    if args.paced_concurrency:
        # Real servers send one chunk per token: Envoy alone passes the paced SSE through, the
        # converting paths turn it into one JSON answer (streamed mode: one gRPC message per chunk).
        tokens = min(args.tokens)
        for path in args.paths:
            body = chat_request(tokens, stream=path == "envoy", kind="paced")
            for _ in range(args.repeat if path in CONVERTED else 1):
                cells.append(
                    measure(
                        stack,
                        args,
                        path,
                        f"{stack.envoy_url}{PATHS[path]}",
                        body,
                        tokens,
                        args.paced_concurrency,
                        paced=True,
                    )
                )
                if floor is not None and path in CONVERTED:
                    cells.append(
                        measure_floor(floor, args, path, body, tokens, args.paced_concurrency, cells[-1], paced=True)
                    )
        print(f"  measured paced {tokens} tok, {args.paced_concurrency} conc", flush=True)
    print()
    print(format_table(cells))
    print(
        "\ns/1k: CPU seconds per 1,000 requests (user+system, all threads); busy: all four processes' CPU / "
        f"({CPUS} cores x duration); other: CPU used meanwhile by processes this bench did not start; svc MB: service peak RSS; msg/req: gRPC messages per request; "
        "xthr, +p50, +p99: against envoy alone at the same size and concurrency (paced: envoy alone passes "
        "the same paced SSE through, stream: true)."
    )
    print("\n" + "\n".join(verdicts(cells)))
    if floor is not None:
        print("\nagainst the floor (bench/floor.py: the same messages, constant replies):")
        print("\n".join(floor_verdicts(cells)))
    print("\ngRPC messages per HTTP request (the service's own counters):")
    print(format_message_costs(message_costs(stack)))


if __name__ == "__main__":
    main()
