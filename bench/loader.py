"""A closed-loop HTTP/1.1 load generator: N keep-alive connections, each sending back to back.

The fallback when ``wrk`` is not installed (``wrk`` costs several times less CPU per request, which
matters on a small machine where the loader shares the cores with what it measures). Run it in
its own process; it prints one JSON line: requests, errors, duration and latency percentiles.

    python bench/loader.py --url http://127.0.0.1:10000/v1/chat/completions --body '{...}' -c 16 -d 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit

from http1 import body_framing


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.stop_at = 0.0


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one response (Content-Length or chunked) and return its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked = body_framing(lines[1:])
    if not chunked:
        await reader.readexactly(length)
        return status
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return status


async def connection(host: str, port: int, request: bytes, tally: Tally) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < tally.stop_at:
            started = time.perf_counter()
            writer.write(request)
            status = await read_response(reader)
            tally.latencies.append(time.perf_counter() - started)
            if status != 200:
                tally.errors += 1
    except (ConnectionError, asyncio.IncompleteReadError):
        tally.errors += 1
    finally:
        writer.close()


async def run(url: str, body: bytes, concurrency: int, duration: float) -> dict:
    parts = urlsplit(url)
    method = b"POST" if body else b"GET"
    request = b"%s %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        method,
        (parts.path or "/").encode(),
        parts.netloc.encode(),
        len(body),
        body,
    )
    tally = Tally()
    started = time.monotonic()
    tally.stop_at = started + duration
    await asyncio.gather(*(connection(parts.hostname, parts.port, request, tally) for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    lat = sorted(tally.latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1e6 if lat else 0.0

    return {"requests": len(lat), "errors": tally.errors, "duration_s": elapsed, "p50_us": pct(50), "p99_us": pct(99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", default="", help="request body (POST when given, else GET)")
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        pass
    else:
        uvloop.install()
    print(json.dumps(asyncio.run(run(args.url, args.body.encode(), args.concurrency, args.duration))))


if __name__ == "__main__":
    main()
