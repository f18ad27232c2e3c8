"""Closed-loop load at a fixed concurrency for a fixed time, from a separate process.

``wrk`` when it is installed (C, one thread), else ``bench/loader.py`` (asyncio + uvloop). Both keep
N HTTP/1.1 keep-alive connections busy back to back and report every response's latency; the
loader's own CPU time comes back too, so a report can show it was not the bottleneck.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

LOADER = Path(__file__).resolve().parent / "loader.py"

_WRK_SCRIPT = """
wrk.method = "{method}"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH {{"requests":%d,"errors":%d,"duration_s":%f,"p50_us":%d,"p99_us":%d}}\\n',
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    loader_cpu_s: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def pick_loader(name: str) -> str:
    """ "wrk" or "python"; "auto" is wrk when it is on PATH."""
    if name == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if name == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk), use --loader python")
    return name


def run_load(
    loader: str, url: str, body: bytes, concurrency: int, seconds: float, cpus: str | None = None
) -> LoadResult:
    """Drive ``url`` (POST ``body``, or GET when empty) with ``concurrency`` connections."""
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        if loader == "wrk":
            script = Path(tmp, "request.lua")
            script.write_text(_WRK_SCRIPT.format(method="POST" if body else "GET", body=body.decode()))
            args = [
                "wrk",
                "-t1",
                f"-c{concurrency}",
                f"-d{max(1, math.ceil(seconds))}s",
                "--timeout",
                "30s",
                "-s",
                str(script),
                url,
            ]
        else:
            args = [
                sys.executable,
                str(LOADER),
                "--url",
                url,
                "--body",
                body.decode(),
                "-c",
                str(concurrency),
                "-d",
                str(seconds),
            ]
        if cpus:
            args = ["taskset", "-c", cpus, *args]
        out_path = Path(tmp, "out")
        with open(out_path, "wb") as out:
            process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        output = out_path.read_text()
    if process.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({process.returncode}):\n{output}")
    line = next(line for line in output.splitlines() if line.startswith(("BENCH ", "{")))
    result = json.loads(line.removeprefix("BENCH "))
    return LoadResult(
        requests=result["requests"],
        errors=result["errors"],
        duration_s=result["duration_s"],
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        loader_cpu_s=usage.ru_utime + usage.ru_stime,
    )
