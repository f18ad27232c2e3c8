"""Fault matrix, part 3: the service process itself (killed, drained, under load, where it listens).

Each test builds its own stack, since most of them stop or kill the service.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from buffered_stream.cli import build_parser
from buffered_stream.settings import load_service_settings
from support.backend import DEFAULT_TEXT, Completion, RecordedRequest
from support.net import http_request, port_open, wait_until
from support.probes import open_post, read_response, wait_service_idle
from support.processes import ManagedProcess
from support.stack import SOURCE_ROOT, Harness, Service

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Say something."}]
EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"


def body(model: str) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES}


def content(result: Any) -> str:
    return result.json()["choices"][0]["message"]["content"]


def restart(service: Service, work_dir: Path) -> None:
    """Start the service again with the same arguments (same ports); the old process must be gone."""
    assert service.process.returncode is not None
    service.process.stop()  # already dead: only forgets it
    args = service.process.args
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(SOURCE_ROOT), os.environ.get("PYTHONPATH")]))}
    service.process = ManagedProcess("service-restarted", args, work_dir, env=env)
    service.wait_ready()


# --- SIGKILL mid-request ------------------------------------------------------------------


def kill(service: Service) -> None:
    service.process.signal(signal.SIGKILL)
    service.process.wait(10)


@pytest.mark.parametrize("mode", ["buffered", "streamed"])
def test_service_killed_mid_request_fails_that_request_cleanly_and_recovers(
    harness: Harness, tmp_path: Path, mode: str
) -> None:
    stack = harness.stack(mode=mode)
    victim_text = " ".join(f"w{i}" for i in range(100))
    stack.backend.on(Completion(victim_text, token_delay=0.02), model="victim")

    client = open_post(f"{stack.url}/v1/chat/completions", body("victim"))
    (upstream,) = stack.backend.wait_for_requests(1)
    wait_until(lambda: len(upstream.response_body) > 0, 10, message="the generation to start")
    kill(stack.service)

    victim = read_response(client, timeout=30)
    assert b"data:" not in victim.raw and b" w1 " not in victim.raw, (
        f"stream bytes reached the client: {victim.raw[:500]!r}"
    )
    if mode == "buffered":
        # Nothing was committed: Envoy answers status_on_error as OpenAI-style JSON.
        assert victim.status == 502, victim.raw[:500]
        assert victim.headers["content-type"] == "application/json", victim.raw[:500]
        error = victim.json()["error"]
        assert error["type"] == "envoy_error" and error["code"].startswith("ext_proc_error"), error
    else:
        # The 200 went out with the response headers: the only signal left is the cut-off.
        assert (victim.status, victim.complete) == (200, False), victim.raw[:500]
        assert victim.body == b""
    wait_until(upstream.finished.is_set, 5, message="the backend to see its connection closed")
    assert upstream.outcome == "client_gone"

    down = http_request(f"{stack.url}/v1/chat/completions", "POST", body("while-down"))
    assert down.status == 502, down.body
    assert down.headers["content-type"] == "application/json"
    assert down.json()["error"]["code"].startswith("ext_proc_error"), down.body

    restart(stack.service, tmp_path)
    for i in range(5):
        result = http_request(f"{stack.url}/v1/chat/completions", "POST", body(f"after-{i}"))
        assert result.status == 200, f"request {i} after the restart: {result.status} {result.body[:300]!r}"
        assert content(result) == DEFAULT_TEXT
    wait_service_idle(stack.service)


def test_envoys_reply_for_an_unreachable_service_has_a_message(harness: Harness) -> None:
    """SDKs show ``error.message``; the config promises "a real message" for Envoy's own replies."""
    stack = harness.stack()
    kill(stack.service)
    error = http_request(f"{stack.url}/v1/chat/completions", "POST", body("while-down")).json()["error"]
    assert error["message"], (
        f"Envoy's 502 for a dead service has an empty message: {error}; envoy.yaml's local_reply_config "
        "formats message from %LOCAL_REPLY_BODY%, which ext_proc failures leave empty"
    )


# --- SIGTERM during traffic ---------------------------------------------------------------


def health(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as channel:
        return (
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
        )


def test_sigterm_drains_requests_in_flight_reports_not_serving_and_exits_0(harness: Harness) -> None:
    stack = harness.stack(extra_args=("--drain-seconds", "30"))
    text = " ".join(f"w{i}" for i in range(20))
    stack.backend.on(Completion(text, token_delay=0.3), model="long")
    stack.backend.on(Completion("quick answer"), model="quick")
    service = stack.service
    assert health(service.target) == health_pb2.HealthCheckResponse.SERVING

    with ThreadPoolExecutor(8) as pool:
        in_flight = [
            pool.submit(http_request, f"{stack.url}/v1/chat/completions", "POST", body("long")) for _ in range(8)
        ]
        stack.backend.wait_for_requests(8)
        service.process.signal(signal.SIGTERM)

        wait_until(lambda: http_request(f"{service.metrics_url}/healthz").status == 503, 5, message="/healthz 503")
        for name in ("", EXT_PROC_SERVICE):
            assert health(service.target, name) == health_pb2.HealthCheckResponse.NOT_SERVING, name
        # Envoy does not health-check the service here: work it is still handed while draining is served.
        late = http_request(f"{stack.url}/v1/chat/completions", "POST", body("quick"))
        assert (late.status, content(late)) == (200, "quick answer"), late.body
        assert service.process.returncode is None, "exited with requests still in flight"

        for future in in_flight:
            result = future.result()
            assert result.status == 200, result.body[:300]
            assert content(result) == text
    assert service.process.wait(15) == 0, service.process.logs()
    assert not port_open(int(service.target.rpartition(":")[2])), "the gRPC port is still open after exit"


# --- 200 concurrent conversions -----------------------------------------------------------


def text_for(model: str) -> str:
    """A distinct answer per request, from 1 to 60 words."""
    n = int(model.rpartition("-")[2])
    return " ".join(f"r{n}w{i}" for i in range(1 + n % 60))


@pytest.mark.parametrize("mode", ["buffered", "streamed"])
def test_200_concurrent_conversions_are_all_correct(harness: Harness, mode: str) -> None:
    stack = harness.stack(mode=mode)

    def reply(request: RecordedRequest) -> Completion:
        return Completion(text_for(request.model or ""), token_delay=0.005, prompt_tokens=3)

    stack.backend.on(reply)
    models = [f"concurrent-{uuid.uuid4().hex[:6]}-{n}" for n in range(200)]
    with ThreadPoolExecutor(200) as pool:
        results = list(pool.map(lambda m: http_request(f"{stack.url}/v1/chat/completions", "POST", body(m)), models))

    wrong = [
        (m, r.status, r.body[:200]) for m, r in zip(models, results) if r.status != 200 or content(r) != text_for(m)
    ]
    assert not wrong, f"{len(wrong)} of 200 wrong, e.g. {wrong[:3]}"
    for model, result in zip(models, results):
        usage = result.json()["usage"]
        assert usage["completion_tokens"] == len(text_for(model).split()), model
    assert sum(r.stream for r in stack.backend.requests) == 200
    wait_service_idle(stack.service)


# --- where the service listens by default -------------------------------------------------

DEFAULT_GRPC = ("127.0.0.1", 50051)
DEFAULT_METRICS = ("127.0.0.1", 9464)


def test_defaults_are_loopback_addresses() -> None:
    args = build_parser().parse_args(["serve"])
    assert (args.listen, args.metrics_listen) == (None, None)  # no flag: the settings' defaults apply
    settings = load_service_settings(None, listen=args.listen, metrics_listen=args.metrics_listen)
    assert settings.listen == "127.0.0.1:50051"
    assert settings.metrics_listen == "127.0.0.1:9464"


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket ``pid`` listens on, IPv4 and IPv6."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    found = set()
    for table, family in (("tcp", 4), ("tcp6", 6)):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                address, port = local.split(":")
                found.add((_decode_address(address, family), int(port, 16)))
    return found


def _decode_address(hex_address: str, family: int) -> str:
    raw = bytes.fromhex(hex_address)
    # /proc writes each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    # gRPC listens on a dual-stack socket bound to ::ffff:127.0.0.1: still IPv4 loopback only.
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def test_serve_without_addresses_listens_on_loopback_only(tmp_path: Path) -> None:
    # A private network namespace (``unshare``: util-linux) has the default ports free whatever
    # runs on this machine, and its own /proc/<pid>/net tables show only the service's sockets.
    env = {"PYTHONPATH": str(SOURCE_ROOT)}
    command = ["unshare", "--map-root-user", "--net", sys.executable, "-m", "buffered_stream", "serve"]
    with ManagedProcess("serve-defaults", command, tmp_path, env=env) as serve:

        def both_listening() -> set[tuple[str, int]]:
            serve.assert_running()
            # With several CPUs the default is a worker pool: the supervisor and its workers.
            children = Path(f"/proc/{serve.pid}/task/{serve.pid}/children").read_text().split()
            sockets = set().union(*(listening_sockets(pid) for pid in (serve.pid, *map(int, children))))
            return sockets if {DEFAULT_GRPC, DEFAULT_METRICS} <= sockets else set()

        sockets = wait_until(both_listening, 30, message=serve.logs)
        # Beyond the two defaults, only the workers' own metrics ports, on loopback too.
        assert {address for address, _ in sockets} == {"127.0.0.1"}, f"listening beyond loopback: {sockets}"
