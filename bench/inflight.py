"""How many converted requests the service holds at once, and what each one costs in memory.

N clients each send a ``hold-<tokens>`` request, at a steady arrival rate (a burst of thousands of
new requests in one instant measures the arrival rate the service can take, which the load table
already shows): the backend streams the whole answer except the finish chunk, then waits. Once the service reports N requests in flight (and the backend holds N
streams), the memory of the service and of Envoy is read, the backend is released, and every
client must receive the complete converted answer.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson

from backend import answer_text
from counters import service_counters
from stack import BenchStack, http_get

FILL_TIMEOUT = 60.0  # beyond the time the arrivals take
HOLD_WINDOW = 10.0  # seconds of service CPU read while everything is held (keep-alive timers run)
DRAIN_TIMEOUT = 120.0


@dataclass(frozen=True)
class InflightResult:
    mode: str
    requested: int
    held_by_service: int
    fill_seconds: float
    ok: int
    failed: int
    left_open: int  # service streams still open after every client had its answer
    failures: dict[str, int]  # why, for the requests that did not get the right answer
    service_rss_before: int
    service_rss_held: int
    envoy_rss_before: int
    envoy_rss_held: int
    answer_bytes: int
    held_cpu_share: float  # service CPU / wall time while the requests were held (1.0 = one core)
    held_keepalives: int  # keep-alive bytes sent meanwhile

    @property
    def service_bytes_per_request(self) -> float:
        return (self.service_rss_held - self.service_rss_before) / max(1, self.held_by_service)

    @property
    def envoy_bytes_per_request(self) -> float:
        return (self.envoy_rss_held - self.envoy_rss_before) / max(1, self.held_by_service)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:] if line)}
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append((await reader.readexactly(size + 2))[:-2])
        await reader.readuntil(b"\r\n")
        return status, b"".join(parts)
    return status, await reader.readexactly(int(headers.get(b"content-length", b"0")))


async def _one(url: str, body: bytes, start_at: float) -> tuple[int, bytes]:
    parts = urlsplit(url)
    await asyncio.sleep(start_at - time.monotonic())
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(
            b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (parts.path.encode(), parts.netloc.encode(), len(body), body)
        )
        return await _read_response(reader)
    finally:
        writer.close()


async def _blocking(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def _hold(stack: BenchStack, path: str, mode: str, n: int, tokens: int, rate: float) -> InflightResult:
    before = stack.stats()
    baseline_in_flight = service_counters(stack)["in_flight"]
    body = orjson.dumps({"model": f"hold-{tokens}", "messages": [{"role": "user", "content": "hi"}]})
    started = time.monotonic()
    clients = [asyncio.create_task(_one(f"{stack.envoy_url}{path}", body, started + i / rate)) for i in range(n)]
    deadline = started + n / rate + FILL_TIMEOUT
    while time.monotonic() < deadline and not all(c.done() for c in clients):
        # Only the backend is asked while filling: scraping the service would load what is measured.
        if int(await _blocking(http_get, f"{stack.backend_url}/held")) >= n:
            break
        await asyncio.sleep(0.25)
    fill_seconds = time.monotonic() - started
    held_by_service = int(service_counters(stack)["in_flight"] - baseline_in_flight)
    await asyncio.sleep(1.0)  # let allocations settle before reading memory
    held = stack.stats()
    ticks_before = service_counters(stack)["keepalive_bytes"]
    await asyncio.sleep(HOLD_WINDOW)
    held_cpu_share = (stack.stats()["service"].cpu_s - held["service"].cpu_s) / HOLD_WINDOW
    held_keepalives = int(service_counters(stack)["keepalive_bytes"] - ticks_before)
    await _blocking(http_get, f"{stack.backend_url}/release")
    done, pending = await asyncio.wait(clients, timeout=DRAIN_TIMEOUT)
    for task in pending:
        task.cancel()
    drain_deadline = time.monotonic() + DRAIN_TIMEOUT
    while service_counters(stack)["in_flight"] > baseline_in_flight and time.monotonic() < drain_deadline:
        await asyncio.sleep(0.1)
    left_open = int(service_counters(stack)["in_flight"] - baseline_in_flight)
    expected = answer_text(tokens)
    outcomes: Counter[str] = Counter({"no answer in time": len(pending)})
    for task in done:
        if task.exception() is not None:
            outcomes[type(task.exception()).__name__] += 1
            continue
        status, answer = task.result()
        if status != 200:
            outcomes[f"{status}: {answer[:120].decode(errors='replace')}"] += 1
        elif orjson.loads(answer)["choices"][0]["message"]["content"] != expected:
            outcomes["wrong answer"] += 1
        else:
            outcomes["ok"] += 1
    ok = outcomes.pop("ok", 0)
    return InflightResult(
        mode=mode,
        requested=n,
        held_by_service=held_by_service,
        fill_seconds=fill_seconds,
        ok=ok,
        failed=n - ok,
        left_open=left_open,
        failures={k: v for k, v in outcomes.items() if v},
        service_rss_before=before["service"].rss,
        service_rss_held=held["service"].rss,
        envoy_rss_before=before["envoy"].rss,
        envoy_rss_held=held["envoy"].rss,
        answer_bytes=len(expected),
        held_cpu_share=held_cpu_share,
        held_keepalives=held_keepalives,
    )


def measure_inflight(stack: BenchStack, path: str, mode: str, n: int, tokens: int, rate: float) -> InflightResult:
    """Start ``n`` held requests, ``rate`` per second, then release them all."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_hold(stack, path, mode, n, tokens, rate))
    return uvloop.run(_hold(stack, path, mode, n, tokens, rate))


def format_inflight(results: list[InflightResult]) -> str:
    lines = [
        f"{'mode':<9} {'requests':>8} {'held':>6} {'fill s':>6} {'ok':>6} {'failed':>6} "
        f"{'left open':>9} {'svc RSS MB':>10} {'svc KB/req':>10} {'envoy KB/req':>12} {'answer KB':>9} {'svc CPU held':>12}"
    ]
    for r in results:
        lines.append(
            f"{r.mode:<9} {r.requested:>8} {r.held_by_service:>6} {r.fill_seconds:>6.1f} {r.ok:>6} {r.failed:>6} "
            f"{r.left_open:>9} {r.service_rss_held / 2**20:>10.1f} {r.service_bytes_per_request / 1024:>10.1f} "
            f"{r.envoy_bytes_per_request / 1024:>12.1f} {r.answer_bytes / 1024:>9.1f} {r.held_cpu_share:>12.1%}"
        )
    for r in results:
        budget = 40 * 1024 + 1.2 * r.answer_bytes
        verdict = "MET" if r.service_bytes_per_request <= budget else "MISSED"
        lines.append(
            f"  {r.mode}: service {r.service_bytes_per_request / 1024:.1f} KB per request in flight "
            f"(target <= 40 KB + 1.2 x answer = {budget / 1024:.1f} KB): {verdict}; "
            f"{r.ok} of {r.requested} answered correctly; service CPU while held {r.held_cpu_share:.1%} of a core"
            + (
                f" ({r.held_keepalives} keep-alive bytes in {HOLD_WINDOW:g} s: "
                f"{1e6 * r.held_cpu_share * HOLD_WINDOW / r.held_keepalives:.0f} us each)"
                if r.held_keepalives
                else ""
            )
        )
        for why, count in r.failures.items():
            lines.append(f"  {r.mode} failed: {count} x {why}")
    return "\n".join(lines)
