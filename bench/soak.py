"""Soak: many converted requests through real Envoy + service + a fast scripted backend.

Run by hand (not in CI): ``PYTHONPATH=filter python bench/soak.py [--requests 10000]``.
Answers of mixed sizes (1 to 4000 tokens, chat and legacy completions) are requested at a fixed
concurrency over keep-alive connections; every answer is checked against the text the backend
generated. The backend never fails, so every error counted here is the stack's own. Reports the
service's resident memory after the warm-up and at the end (a leak shows as growth between them),
its CPU time, latency and the outcomes the service counted.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.backend import Completion, RecordedRequest  # noqa: E402
from support.probes import cpu_seconds, rss_bytes, service_samples, wait_service_idle  # noqa: E402
from support.stack import Harness, Stack, find_envoy_binary  # noqa: E402

# Answer sizes in tokens, cycled through: mostly short answers, some long ones.
SIZES = (1, 5, 20, 50, 100, 200, 20, 50, 500, 5, 1000, 100, 4000)
PATHS = ("/v1/chat/completions", "/v1/chat/completions", "/v1/completions")
MiB = 1 << 20
SLICES = 5


def text_of(size: int) -> str:
    return " ".join(f"t{i}" for i in range(size))


def backend_reply(request: RecordedRequest) -> Completion:
    """The model name carries the answer size: ``soak-<tokens>``."""
    return Completion(text_of(int((request.model or "soak-1").rpartition("-")[2])), prompt_tokens=3)


class Client:
    """One keep-alive connection to Envoy per worker thread."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._local = threading.local()

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection("127.0.0.1", self._port, timeout=120)
        try:
            conn.request("POST", path, body=body, headers={"content-type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()
        except Exception:
            conn.close()
            self._local.conn = None
            raise


def one_request(client: Client, n: int) -> tuple[float, str]:
    """Send request ``n``; the latency and ``"ok"`` or what went wrong."""
    size, path = SIZES[n % len(SIZES)], PATHS[n % len(PATHS)]
    if path.endswith("chat/completions"):
        request = {"model": f"soak-{size}", "messages": [{"role": "user", "content": f"request {n}"}]}
    else:
        request = {"model": f"soak-{size}", "prompt": f"request {n}"}
    started = time.perf_counter()
    try:
        status, body = client.post(path, orjson.dumps(request))
    except Exception as exc:  # noqa: BLE001 - every failure is a result here
        return time.perf_counter() - started, f"exception {type(exc).__name__}"
    elapsed = time.perf_counter() - started
    if status != 200:
        return elapsed, f"status {status}"
    choice = orjson.loads(body)["choices"][0]
    got = choice["message"]["content"] if "message" in choice else choice["text"]
    return elapsed, "ok" if got == text_of(size) else "wrong answer"


def run_batch(stack: Stack, first: int, count: int, concurrency: int) -> tuple[list[float], Counter[str]]:
    client = Client(int(stack.url.rpartition(":")[2]))
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda n: one_request(client, n), range(first, first + count)))
    return [r[0] for r in results], Counter(r[1] for r in results)


def soak(stack: Stack, requests: int, warmup: int, concurrency: int) -> None:
    pid = stack.service.process.pid
    _, warm_results = run_batch(stack, 0, warmup, concurrency)
    wait_service_idle(stack.service)
    rss_warm, cpu_warm = rss_bytes(pid), cpu_seconds(pid)

    # In slices, to see whether memory levels off (allocator caches) or keeps growing (a leak).
    latencies: list[float] = []
    results: Counter[str] = Counter()
    trend = []
    started = time.perf_counter()
    step = max(1, requests // SLICES)
    for first in range(warmup, warmup + requests, step):
        count = min(step, warmup + requests - first)
        slice_latencies, slice_results = run_batch(stack, first, count, concurrency)
        latencies += slice_latencies
        results += slice_results
        trend.append(rss_bytes(pid))
    duration = time.perf_counter() - started
    wait_service_idle(stack.service)
    rss_end, cpu_end = rss_bytes(pid), cpu_seconds(pid)

    outcomes = {
        key.partition('outcome="')[2].rstrip('"}'): int(value)
        for key, value in service_samples(stack.service).items()
        if key.startswith("buffered_stream_requests_total{")
    }
    latencies.sort()
    rows = [
        ("requests (after warm-up)", f"{requests} ({warmup} warm-up)"),
        ("concurrency", str(concurrency)),
        ("duration", f"{duration:.1f} s"),
        ("throughput", f"{requests / duration:.0f} req/s"),
        (
            "latency p50 / p99 / max",
            f"{statistics.median(latencies) * 1e3:.1f} / "
            f"{latencies[int(len(latencies) * 0.99)] * 1e3:.1f} / {latencies[-1] * 1e3:.1f} ms",
        ),
        ("results", ", ".join(f"{k}: {v}" for k, v in sorted((results + warm_results).items()))),
        ("service outcomes (/metrics)", ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()))),
        ("service RSS after warm-up", f"{rss_warm / MiB:.1f} MiB"),
        ("service RSS after each fifth", " / ".join(f"{rss / MiB:.0f}" for rss in trend) + " MiB"),
        ("service RSS at the end", f"{rss_end / MiB:.1f} MiB ({(rss_end - rss_warm) / MiB:+.1f})"),
        ("service CPU", f"{cpu_end - cpu_warm:.1f} s ({(cpu_end - cpu_warm) / requests * 1e3:.2f} ms/request)"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if set(results) != {"ok"}:
        raise SystemExit("soak: some requests failed (the backend never does)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--mode", choices=("buffered", "streamed"), default="buffered")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-") as work_dir:
        harness = Harness(Path(work_dir), find_envoy_binary())
        try:
            stack = harness.stack(mode=args.mode)
            stack.backend.on(backend_reply)
            print(f"soak: {args.mode} mode, Envoy at {stack.url}")
            soak(stack, args.requests, args.warmup, args.concurrency)
        finally:
            harness.close()


if __name__ == "__main__":
    main()
