"""The metrics/health listener cannot be starved: idle floods, slowloris, oversized requests.

The incident: 1,100 idle TCP connections to the metrics port took every file descriptor of the
service process (RLIMIT_NOFILE 1024), ``/healthz`` hung and every conversion failed with 504. Here
a real service runs behind real Envoy with its RLIMIT_NOFILE lowered to 1024 while the port is
flooded; ``/healthz`` and conversions must keep working, and the listener must never hold more
than its cap (counted in ``/proc/<pid>/fd``).
"""

from __future__ import annotations

import os
import resource
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from buffered_stream.adapter.metrics import HEAD_TIMEOUT, MAX_HEAD_BYTES, connection_cap
from support.backend import Completion
from support.net import http_request, wait_until
from support.stack import Harness, Service, Stack

pytestmark = pytest.mark.e2e

TEXT = "alpha beta gamma"
CHAT = {"model": "ok", "messages": [{"role": "user", "content": "hi"}]}
FLOOD = 1100  # the incident's count: more than a 1024 RLIMIT_NOFILE
INCIDENT_NOFILE = 1024
# Descriptors the service may open besides the listener's connections while it is flooded and used:
# Envoy's gRPC connections (one per Envoy worker), the files prometheus_client reads per scrape.
FD_SLACK = 8

HEALTHZ_200 = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\nConnection: close\r\n\r\nSERVING\n"
NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n"
)


@pytest.fixture(scope="module")
def stack(module_harness: Harness) -> Stack:
    backend = module_harness.backend()
    backend.on(Completion(TEXT, token_delay=0.0), model="ok")
    return module_harness.stack(backend=backend)


@pytest.fixture(scope="module", autouse=True)
def enough_descriptors() -> None:
    """This process holds the flood's client sockets: raise its own soft RLIMIT_NOFILE if needed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = FLOOD + 1024
    if soft != resource.RLIM_INFINITY and soft < want:
        assert hard == resource.RLIM_INFINITY or hard >= want, f"RLIMIT_NOFILE hard limit {hard} < {want}"
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def address(service: Service) -> tuple[str, int]:
    host, _, port = service.metrics_url.removeprefix("http://").rpartition(":")
    return host, int(port)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def held(service: Service) -> int:
    """Connections the service process holds on its metrics port (its sockets, by inode, in /proc/net/tcp*)."""
    pid, port = service.process.pid, address(service)[1]
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local_port, state, inode = int(fields[1].rpartition(":")[2], 16), fields[3], fields[9]
                count += local_port == port and state != "0A" and inode in inodes  # 0A: LISTEN
    return count


def cap_of(pid: int) -> int:
    """The listener's cap in process ``pid``: computed at its start from the RLIMIT_NOFILE it had."""
    return connection_cap(resource.prlimit(pid, resource.RLIMIT_NOFILE)[0])


def exchange(target: tuple[str, int], data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    with socket.create_connection(target, timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def closed_by_peer(sock: socket.socket) -> bool:
    """True when the server closed ``sock`` (a non-blocking socket that never sent anything)."""
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def convert(stack: Stack) -> None:
    result = http_request(f"{stack.url}/v1/chat/completions", "POST", CHAT, timeout=30)
    assert result.status == 200, result
    assert result.json()["choices"][0]["message"]["content"] == TEXT


def healthz(service: Service) -> int:
    return http_request(f"{service.metrics_url}/healthz", timeout=3).status


class IdleFlood:
    """Up to ``size`` idle connections to ``target`` held from a thread; those the server closes are
    reopened (at most ``refill`` per round), so the listener stays full of idle connections."""

    def __init__(self, target: tuple[str, int], size: int, refill: int = 100) -> None:
        self.target, self.size, self.refill = target, size, refill
        self.held: list[socket.socket] = []
        self.opened = self.failed = self.closed_by_server = 0
        self.first_burst = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> IdleFlood:
        self._thread.start()
        assert self.first_burst.wait(120), "the first burst of connections never ended"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        for sock in self.held:
            sock.close()

    def _connect(self, count: int) -> None:
        for _ in range(count):
            try:
                sock = socket.create_connection(self.target, timeout=3)
            except OSError:
                self.failed += 1
                continue
            sock.setblocking(False)
            self.held.append(sock)
            self.opened += 1

    def _run(self) -> None:
        try:
            self._connect(self.size)
        finally:
            self.first_burst.set()
        while not self._stop.wait(0.25):
            still = []
            for sock in self.held:
                if closed_by_peer(sock):
                    sock.close()
                    self.closed_by_server += 1
                else:
                    still.append(sock)
            self.held = still
            self._connect(min(self.refill, self.size - len(self.held)))


@contextmanager
def peak_fds(pid: int) -> Iterator[list[int]]:
    """Samples ``pid``'s open descriptors from a thread; the peak is ``[0]`` of what it yields."""
    peak = [open_fds(pid)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            try:
                peak[0] = max(peak[0], open_fds(pid))
            except FileNotFoundError:  # a descriptor closed while listed
                continue

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        sampler.join(5)


@contextmanager
def nofile_limit(pid: int, soft: int) -> Iterator[None]:
    """Run with ``pid``'s soft RLIMIT_NOFILE at ``soft`` (the incident's), then put it back."""
    before = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, before)


def test_paths_and_answers_are_unchanged(stack: Stack) -> None:
    target = address(stack.service)
    assert exchange(target, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") == HEALTHZ_200
    # The supervisor's own scrape of its workers: HTTP/1.0, read to the close; query strings ignored.
    assert exchange(target, b"GET /healthz?probe=1 HTTP/1.0\r\n\r\n") == HEALTHZ_200
    assert exchange(target, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n") == HEALTHZ_200.removesuffix(b"SERVING\n")
    assert exchange(target, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n") == NOT_FOUND

    response = exchange(target, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 200 OK",
        b"Content-Type: " + CONTENT_TYPE_LATEST.encode(),
        b"Content-Length: %d" % len(body),
        b"Connection: close",
    ]
    assert "buffered_stream_requests" in {f.name for f in text_string_to_metric_families(body.decode())}
    head_only = exchange(target, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head_only.startswith(b"HTTP/1.1 200 OK\r\n") and head_only.endswith(b"\r\n\r\n")


def test_only_get_and_head_and_no_body(stack: Stack) -> None:
    target = address(stack.service)
    for method in (b"POST", b"PUT", b"DELETE", b"OPTIONS"):
        response = exchange(target, method + b" /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(response) == 405 and b"\r\nAllow: GET, HEAD\r\n" in response, response
    body = b"x" * 100_000
    response = exchange(
        target, b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    assert status_of(response) == 413, response
    response = exchange(
        target, b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    assert status_of(response) == 413, response
    assert healthz(stack.service) == 200


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /" + b"a" * 64 * 1024 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # request line
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 1) + b"\r\n\r\n",  # one header
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Many: aaaaaaaaaaaaaaaa\r\n" * 400 + b"\r\n",  # many headers
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: " + b"a" * 4 * 1024 * 1024,  # never ends
    ],
    ids=["request-line", "header", "many-headers", "unterminated"],
)
def test_an_oversized_request_head_is_refused(stack: Stack, request_head: bytes) -> None:
    try:
        response = exchange(address(stack.service), request_head)
    except (BrokenPipeError, ConnectionResetError):
        response = b""  # closed while we were still sending: refused too
    assert response == b"" or 400 <= status_of(response) < 500, response[:200]
    if response:
        assert status_of(response) == 431
    assert healthz(stack.service) == 200


def test_a_slowloris_client_is_closed_within_the_head_timeout(stack: Stack) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100 + b"\r\n\r\n"  # ~2 min at 1 byte/s
    with socket.create_connection(address(stack.service), timeout=5) as sock:
        started = time.monotonic()
        received, closed = b"", False
        for byte in head:
            try:
                sock.send(bytes([byte]))
            except OSError:  # reset by the server
                closed = True
                break
            if select.select([sock], [], [], 1.0)[0]:  # one byte a second, watching for the close meanwhile
                try:
                    chunk = sock.recv(4096)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    closed = True
                    break
                received += chunk
        elapsed = time.monotonic() - started
    assert closed and received == b"", received
    assert elapsed < HEAD_TIMEOUT + 2, f"closed after {elapsed:.1f} s"


def test_idle_connections_are_released_after_the_head_timeout(stack: Stack) -> None:
    pid = stack.service.process.pid
    baseline = open_fds(pid)
    idle = [socket.create_connection(address(stack.service), timeout=5) for _ in range(10)]
    try:
        wait_until(lambda: held(stack.service) >= 10, 10, message="the service accepted the idle connections")
        for sock in idle:
            sock.setblocking(False)
        wait_until(lambda: all(closed_by_peer(s) for s in idle), HEAD_TIMEOUT + 5, message="idle connections closed")
        wait_until(lambda: held(stack.service) == 0, 5, message="the service let go of them")
        assert open_fds(pid) <= baseline
    finally:
        for sock in idle:
            sock.close()


def test_an_idle_flood_is_capped_while_healthz_and_conversions_go_on(stack: Stack) -> None:
    service = stack.service
    pid = service.process.pid
    cap = cap_of(pid)
    assert cap < INCIDENT_NOFILE // 8
    convert(stack)  # Envoy's gRPC connections to the service are open before the baseline
    baseline = open_fds(pid)

    with nofile_limit(pid, INCIDENT_NOFILE), peak_fds(pid) as peak, IdleFlood(address(service), FLOOD) as flood:
        # The listener is full of idle connections, and stays so (the flood reopens those it closes).
        wait_until(lambda: held(service) >= cap // 2, 10, message="the flood reached the listener")
        for _ in range(20):
            assert healthz(service) == 200
            convert(stack)
            assert http_request(f"{service.metrics_url}/metrics", timeout=5).status == 200
        wait_until(lambda: flood.closed_by_server >= FLOOD - cap, 10, message=lambda: f"excess closed: {vars(flood)}")
        assert held(service) <= cap + 1 and open_fds(pid) <= baseline + cap + 1 + FD_SLACK
    assert peak[0] <= baseline + cap + 1 + FD_SLACK, f"peak {peak[0]} fds, {baseline} before, cap {cap}"
    assert peak[0] >= baseline + cap // 2, "the flood never filled the listener"

    wait_until(lambda: held(service) == 0, HEAD_TIMEOUT + 5, message="the flood's connections released")
    logs = service.process.logs()
    assert "out of system resource" not in logs and "accept failed" not in logs, logs
    convert(stack)


def test_a_worker_pool_supervisor_caps_its_listener_too(harness: Harness) -> None:
    backend = harness.backend()
    backend.on(Completion(TEXT, token_delay=0.0), model="ok")
    stack = harness.stack(backend=backend, workers=2)
    service = stack.service
    pid = service.process.pid  # the supervisor: it serves the pool's /metrics and /healthz
    cap = cap_of(pid)
    convert(stack)
    baseline = open_fds(pid)

    with peak_fds(pid) as peak, IdleFlood(address(service), 4 * cap) as flood:
        wait_until(lambda: held(service) >= cap // 2, 10, message="the flood reached the listener")
        for _ in range(10):
            assert healthz(service) == 200
            convert(stack)
            pool = http_request(f"{service.metrics_url}/metrics", timeout=5)
            assert pool.status == 200 and b"\nbuffered_stream_workers_ready 2.0\n" in pool.body
        wait_until(lambda: flood.closed_by_server >= 3 * cap, 10, message=lambda: f"excess closed: {vars(flood)}")
    assert peak[0] <= baseline + cap + 1 + FD_SLACK, f"peak {peak[0]} fds, {baseline} before, cap {cap}"
    wait_until(lambda: held(service) == 0, HEAD_TIMEOUT + 5, message="the flood's connections released")
