"""Where does the live service spend its CPU? A py-spy profile of the service under bench load.

Run by hand (needs ``pip install py-spy``; attaching needs ptrace rights, e.g. root):
``python bench/profile_service.py --path buffered --tokens 256 --concurrency 16 --seconds 10``.
Starts the bench stack (bench/stack.py), drives one path with the closed-loop loader, records the
service process with py-spy meanwhile and prints the share of samples per source area (our
modules by name, grpc, protobuf, the event loop, ...) plus the hottest leaf functions. ``--out``
keeps the collapsed stacks (flamegraph.pl / speedscope input).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import threading
from collections import Counter
from pathlib import Path

from load import pick_loader, run_load
from run import PATHS, chat_request
from stack import BenchStack, Placement

AREAS = (
    ("buffered_stream/core/", "core"),
    ("buffered_stream/schemas/", "schemas"),
    ("buffered_stream/adapter/", "adapter"),
    ("grpc/_cython", "grpc (cython)"),
    ("grpc/aio", "grpc aio"),
    ("grpc/", "grpc"),
    ("google/protobuf", "protobuf"),
    ("prometheus_client", "prometheus_client"),
    ("uvloop", "uvloop"),
    ("asyncio", "asyncio"),
)


def area_of(frame: str) -> str:
    for needle, name in AREAS:
        if needle in frame:
            return name
    return "other"


def summarise(collapsed: str, top: int) -> str:
    """Self time per area (leaf frame) and inclusive time per area (any frame), from collapsed stacks."""
    leaf_area, inclusive, leaves, total = Counter(), Counter(), Counter(), 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf_area[area_of(frames[-1])] += n
        leaves[frames[-1]] += n
        for name in {area_of(f) for f in frames}:
            inclusive[name] += n
    lines = [f"{total} samples", f"{'area':<20}{'self %':>8}{'incl %':>8}"]
    for name, n in leaf_area.most_common():
        lines.append(f"{name:<20}{100 * n / total:>8.1f}{100 * inclusive[name] / total:>8.1f}")
    lines.append("hottest leaves (self %):")
    lines += [f"{100 * n / total:6.1f}  {frame}" for frame, n in leaves.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", choices=[p for p in PATHS if p != "envoy"], default="buffered")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="include native (C) frames")
    parser.add_argument("--idle", action="store_true", help="also count samples of idle threads")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=None, help="also keep the collapsed stacks here")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy")
    if not py_spy:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        stack = BenchStack(Path(tmp), Placement()).start()
        try:
            url = stack.envoy_url + PATHS[args.path]
            result: dict = {}
            loader = threading.Thread(
                target=lambda: result.update(
                    load=run_load(
                        pick_loader("auto"), url, chat_request(args.tokens), args.concurrency, args.seconds + 3
                    )
                )
            )
            loader.start()
            out = Path(tmp) / "stacks.txt"
            pid = stack.service_pids()[0]
            command = [
                py_spy,
                "record",
                "-p",
                str(pid),
                "-r",
                str(args.rate),
                "-d",
                str(int(args.seconds)),
                "-f",
                "raw",
                "-o",
                str(out),
                *(["--native"] if args.native else ["--nonblocking"]),
                *(["--idle"] if args.idle else []),
            ]
            spy = subprocess.run(command, capture_output=True, text=True)
            if spy.returncode:
                raise SystemExit(f"py-spy failed: {spy.stderr.strip()}")
            loader.join()
            collapsed = out.read_text()
            if args.out:
                args.out.write_text(collapsed)
        finally:
            stack.close()
    load = result.get("load")
    if load:
        print(
            f"{args.path} {args.tokens} tokens, {args.concurrency} concurrent: {load.rps:.0f} req/s, errors {load.errors}"
        )
    print(summarise(collapsed, args.top))


if __name__ == "__main__":
    main()
