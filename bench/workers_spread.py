"""How evenly Envoy's ext_proc streams spread over N service processes, per way of listing them.

- ``reuseport``: one ``serve --workers N``; every worker binds the same TCP port (SO_REUSEPORT)
  and the kernel hands each new connection to one of them; Envoy sees one endpoint.
- ``endpoints``: N ``serve --workers 1`` on their own ports, listed as N endpoints of the
  ext_proc cluster; Envoy's load balancer picks an endpoint per stream.

Each variant runs on a fresh stack (fresh Envoy connections) with the same load, then reads each
process's request counter and Envoy's connection count to the ext_proc cluster.

    python bench/workers_spread.py --workers 2 --concurrency 1 16 64 --seconds 3 --repeat 3
"""

from __future__ import annotations

import argparse
import tempfile
from contextlib import closing
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families

import stack as stack_module
from load import pick_loader, run_load
from run import PATHS, chat_request
from stack import BenchStack, Placement, http_get

_shipped_config = stack_module.bench_envoy_config


def capped_streams(limit: int) -> None:
    """Make Envoy open a new ext_proc connection per ``limit`` streams (more connections to spread)."""

    def config(*args, **kwargs):
        cfg = _shipped_config(*args, **kwargs)
        service = stack_module.cluster(cfg, stack_module.SERVICE_CLUSTER)
        options = service["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        options["explicit_http_config"]["http2_protocol_options"]["max_concurrent_streams"] = limit
        return cfg

    stack_module.bench_envoy_config = config


def per_process_requests(stack: BenchStack) -> list[float]:
    """HTTP requests each worker (or each endpoint process) saw."""
    counts: list[float] = []
    for url in stack.metrics_urls:
        by_worker: dict[str, float] = {}
        total = 0.0
        for family in text_string_to_metric_families(http_get(f"{url}/metrics").decode()):
            for sample in family.samples:
                if sample.name == "buffered_stream_worker_requests_total":
                    by_worker[sample.labels["worker"]] = sample.value
                elif sample.name == "buffered_stream_requests_total":
                    total += sample.value
        counts += [by_worker[k] for k in sorted(by_worker, key=int)] if by_worker else [total]
    return counts


def envoy_connections(stack: BenchStack) -> int:
    stats = orjson.loads(
        http_get(f"{stack.envoy_admin}/stats?format=json&filter=cluster.buffered_stream.upstream_cx_total")
    )
    return int(next(s["value"] for s in stats["stats"] if s["name"] == "cluster.buffered_stream.upstream_cx_total"))


def run_variant(work_dir: Path, variant: str, args: argparse.Namespace, concurrency: int, run: int) -> str:
    services, workers = (1, args.workers) if variant == "reuseport" else (args.workers, 1)
    directory = Path(work_dir, f"{variant}-{concurrency}-{run}")
    directory.mkdir()
    placement = Placement(envoy_workers=args.envoy_workers)
    with closing(BenchStack(directory, placement, services, workers)) as stack:
        stack.start()
        url = f"{stack.envoy_url}{PATHS['buffered']}"
        load = run_load(args.loader, url, chat_request(args.tokens), concurrency, args.seconds)
        counts = per_process_requests(stack)
        share = max(counts) / sum(counts) if sum(counts) else 0.0
        return (
            f"{variant:9} conc {concurrency:3} run {run}: {load.rps:7.0f} req/s, {load.errors} errors, "
            f"{envoy_connections(stack)} Envoy connection(s); per process {[int(c) for c in counts]}, busiest {share:.0%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--envoy-workers", type=int, default=2, help="Envoy --concurrency (each Envoy worker has its own connections)"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3, help="fresh stacks per cell (the kernel's choice is random)")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--variants", nargs="+", default=["reuseport", "endpoints"], choices=["reuseport", "endpoints"])
    parser.add_argument("--loader", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument(
        "--streams-per-connection", type=int, default=0, help="Envoy's own cap per ext_proc connection (0: none)"
    )
    args = parser.parse_args()
    if args.streams_per_connection:
        capped_streams(args.streams_per_connection)
    args.loader = pick_loader(args.loader)
    with tempfile.TemporaryDirectory(prefix="bench-spread-") as work_dir:
        for concurrency in args.concurrency:
            for variant in args.variants:
                for run in range(args.repeat):
                    print(run_variant(Path(work_dir), variant, args, concurrency, run), flush=True)


if __name__ == "__main__":
    main()
