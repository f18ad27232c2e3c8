"""What TLS on the Envoy → service link costs: service and Envoy CPU per converted request.

One stack (scripted backend, service, Envoy with the shipped config) per configuration, all
running at once, all in front of the same answer:

- ``tcp``: plaintext gRPC on 127.0.0.1 (the reference: ratios are to it);
- ``tls``: ``serve --tls-cert --tls-key``, Envoy verifies the service (``ServiceTls``);
- ``mtls``: the same with ``--tls-client-ca`` and Envoy's client certificate (what
  deploy/envoy-gateway runs);
- ``mtls-1/conn``: mutual TLS with one ext_proc stream per connection (a full handshake per
  request: the worst case; Envoy normally keeps its connections to the service);
- ``unix``: plaintext on a Unix socket (what the sidecar deployments run).

Each round sends ``--requests`` sequential converted chat requests (``stream: false``, buffered
mode) through each stack's Envoy on one keep-alive client connection, and reads the service's
and Envoy's user+system CPU from ``/proc/<pid>/stat`` before and after. Rounds alternate between
configurations so that background load spreads over all of them; the table shows, per
configuration, the median over the rounds of the CPU per request, and its ratio to ``tcp``'s
median (``best``: the lowest round, which background load inflates least).

    .venv/bin/python bench/tls_cost.py [--requests 300] [--rounds 5] [--tokens 256]

Loopback only, certificates made on the spot (``cryptography``); everything started is stopped.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / "filter"), str(REPO_ROOT / "tests")]

import orjson  # noqa: E402

from buffered_stream.envoy_config import SERVICE_CLUSTER, ServiceTls, cluster, enable_service_tls  # noqa: E402
from procstat import ProcStat  # noqa: E402
from support.backend import Completion  # noqa: E402
from support.certs import CertificateAuthority, write_pair  # noqa: E402
from support.stack import Harness, Stack, find_envoy_binary  # noqa: E402

CONFIGS = ("tcp", "tls", "mtls", "mtls-1/conn", "unix")
MODEL = "bench-tls"


@dataclass
class Measured:
    requests: int = 0
    service_cpu: float = 0.0
    envoy_cpu: float = 0.0
    handshakes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def one_stream_per_connection(cfg: dict[str, Any]) -> None:
    options = cluster(cfg, SERVICE_CLUSTER)["typed_extension_protocol_options"]
    options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["common_http_protocol_options"] = {
        "max_requests_per_connection": 1
    }


def no_access_log(cfg: dict[str, Any]) -> None:
    """Access log writes would be measured as Envoy CPU in every configuration alike: drop them."""
    for listener in cfg["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                f.get("typed_config", {}).pop("access_log", None)


def build_stacks(harness: Harness, pki_dir: Path, tokens: int) -> dict[str, Stack]:
    ca = CertificateAuthority("bench CA")
    pki_dir.mkdir(parents=True, exist_ok=True)
    (pki_dir / "ca.crt").write_bytes(ca.cert_pem)
    server = write_pair(pki_dir, "server", ca.issue("buffered-stream", server_names=("localhost", "127.0.0.1")))
    client = write_pair(pki_dir, "client", ca.issue("envoy", client=True))
    ca_file = str(pki_dir / "ca.crt")
    server_args = ("--tls-cert", str(server[0]), "--tls-key", str(server[1]))
    mutual = ServiceTls(ca_file, "localhost", str(client[0]), str(client[1]))

    backend = harness.backend()
    backend.on(Completion(tokens=tuple(f" tok{i}" for i in range(tokens))), model=MODEL)

    def customize(*extra: Any):
        def apply(cfg: dict[str, Any]) -> None:
            no_access_log(cfg)
            for step in extra:
                step(cfg)

        return apply

    tls = lambda t: lambda cfg: enable_service_tls(cfg, t)  # noqa: E731
    specs = {
        "tcp": ({}, customize()),
        "tls": ({"extra_args": server_args}, customize(tls(ServiceTls(ca_file, "localhost")))),
        "mtls": ({"extra_args": (*server_args, "--tls-client-ca", ca_file)}, customize(tls(mutual))),
        "mtls-1/conn": (
            {"extra_args": (*server_args, "--tls-client-ca", ca_file)},
            customize(tls(mutual), one_stream_per_connection),
        ),
        "unix": ({"unix_socket": True}, customize()),
    }
    return {name: harness.stack(backend=backend, customize=apply, **kwargs) for name, (kwargs, apply) in specs.items()}


def send(connection: http.client.HTTPConnection, body: bytes) -> None:
    connection.request("POST", "/v1/chat/completions", body=body, headers={"content-type": "application/json"})
    response = connection.getresponse()
    payload = response.read()
    if response.status != 200:
        raise RuntimeError(f"status {response.status}: {payload[:300]!r}")
    if orjson.loads(payload)["object"] != "chat.completion":
        raise RuntimeError(f"not converted: {payload[:300]!r}")


def handshakes(stack: Stack) -> int:
    return stack.envoy.stats().get(f"cluster.{SERVICE_CLUSTER}.ssl.handshake", 0)


def run_round(stack: Stack, requests: int, into: Measured) -> None:
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Say something long."}]})
    port = int(stack.url.rpartition(":")[2])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        send(connection, body)  # the client connection is open before measuring
        service_pid, envoy_pid = stack.service.process.pid, stack.envoy.process.pid
        shakes = handshakes(stack)
        service_before, envoy_before = ProcStat.of(service_pid), ProcStat.of(envoy_pid)
        for _ in range(requests):
            send(connection, body)
        service_after, envoy_after = ProcStat.of(service_pid), ProcStat.of(envoy_pid)
    finally:
        connection.close()
    into.requests += requests
    into.service_cpu += service_after.cpu_s - service_before.cpu_s
    into.envoy_cpu += envoy_after.cpu_s - envoy_before.cpu_s
    into.handshakes += handshakes(stack) - shakes


def table(results: dict[str, list[Measured]]) -> str:
    """Median (and best) µs of CPU per request over the rounds, and the medians' ratios to tcp."""

    def per_request(rounds: list[Measured], what: str) -> list[float]:
        return [
            getattr(m, what) / m.requests * 1e6 if what != "both" else (m.service_cpu + m.envoy_cpu) / m.requests * 1e6
            for m in rounds
        ]

    base = {what: statistics.median(per_request(results["tcp"], what)) for what in ("service_cpu", "envoy_cpu", "both")}
    rows = [
        "| link | service µs/req (best) | ratio | Envoy µs/req (best) | ratio | both µs/req (best) | ratio | handshakes/req |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rounds in results.items():
        cells = []
        for what in ("service_cpu", "envoy_cpu", "both"):
            values = per_request(rounds, what)
            median = statistics.median(values)
            cells.append(f"{median:,.0f} ({min(values):,.0f}) | {median / base[what]:.2f}")
        shakes = sum(m.handshakes for m in rounds) / sum(m.requests for m in rounds)
        rows.append(f"| {name} | {' | '.join(cells)} | {shakes:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--requests", type=int, default=300, help="sequential converted requests per round and configuration"
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds, alternating the configurations")
    parser.add_argument("--warmup", type=int, default=30, help="requests per configuration before measuring")
    parser.add_argument("--tokens", type=int, default=256, help="tokens in the answer")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bs-tls-cost-") as work:
        harness = Harness(Path(work), find_envoy_binary())
        try:
            stacks = build_stacks(harness, Path(work) / "pki", args.tokens)
            for stack in stacks.values():  # connections up, code paths warm
                run_round(stack, args.warmup, Measured())
            results: dict[str, list[Measured]] = {name: [] for name in CONFIGS}
            for _ in range(args.rounds):
                for name in CONFIGS:
                    results[name].append(Measured())
                    run_round(stacks[name], args.requests, results[name][-1])
        finally:
            harness.close()
    print(
        f"{args.rounds} x {args.requests} sequential converted chat requests per link, {args.tokens}-token answers "
        "(buffered), one client connection; CPU of the service and of Envoy from /proc/<pid>/stat; median (best) "
        "over the rounds, ratios of the medians to tcp"
    )
    print(table(results))


if __name__ == "__main__":
    main()
