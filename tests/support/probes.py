"""Observing a running stack from outside: service gauges, process memory and CPU, raw HTTP.

Reliability tests need what the friendly helpers hide: the bytes a client really received when
a response is cut off, whether the service let go of a request, and what a request cost the
service process.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from .net import wait_until
from .stack import Service

IN_FLIGHT = "buffered_stream_in_flight_requests"
CONVERTING = "buffered_stream_converting_requests"


def service_samples(service: Service) -> dict[str, float]:
    """Every sample of the service's /metrics, keyed ``name{label="value",...}`` (or ``name``)."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(service.metrics()):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def outcome_count(service: Service, outcome: str) -> float:
    return service_samples(service).get(f'buffered_stream_requests_total{{outcome="{outcome}"}}', 0.0)


def wait_service_idle(service: Service, timeout: float = 10.0) -> None:
    """Poll /metrics until no request is in flight or converting: the service let go of everything."""

    def gauges() -> tuple[float, float]:
        samples = service_samples(service)
        return samples[IN_FLIGHT], samples[CONVERTING]

    wait_until(
        lambda: gauges() == (0, 0),
        timeout,
        interval=0.1,
        message=lambda: f"in-flight and converting gauges back to 0 (now {gauges()})",
    )


def _status_field(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(name)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process now (VmRSS)."""
    return _status_field(pid, "VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class RawResponse:
    """Everything a client received on one connection, however the response ended.

    ``complete`` is True only when the body ended as HTTP says it must (content-length reached or
    the last chunk seen); a reset or an early close leaves it False with whatever came before.
    """

    raw: bytes
    status: int | None
    headers: dict[str, str]
    body: bytes
    complete: bool
    reset: bool

    def json(self) -> Any:
        return orjson.loads(self.body)


def raw_post(url: str, body: Any, *, timeout: float = 60.0) -> RawResponse:
    """POST on a fresh connection and read until the server closes or resets it."""
    return read_response(open_post(url, body), timeout=timeout)


def read_response(sock: socket.socket, *, timeout: float = 60.0) -> RawResponse:
    """Read a response from ``sock`` (see ``open_post``) until it is complete, closed or reset."""
    sock.settimeout(timeout)
    chunks: list[bytes] = []
    reset = False
    try:
        while data := sock.recv(65536):
            chunks.append(data)
            if _parse(b"".join(chunks), reset=False).complete:
                break
    except ConnectionResetError:
        reset = True
    finally:
        sock.close()
    return _parse(b"".join(chunks), reset=reset)


def open_post(url: str, body: Any) -> socket.socket:
    """Send a POST (``Connection: close``) and return the socket, response unread."""
    hostport, _, path = url.removeprefix("http://").partition("/")
    host, _, port = hostport.partition(":")
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    head = (
        f"POST /{path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode()
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(head + data)
    return sock


def _parse(raw: bytes, *, reset: bool) -> RawResponse:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        return RawResponse(raw, None, {}, b"", False, reset)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    status = int(status_line.split()[1])
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body, complete = _dechunk(rest)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        body, complete = rest[:length], len(rest) >= length
    else:
        body, complete = rest, not reset
    return RawResponse(raw, status, headers, body, complete, reset)


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    parts: list[bytes] = []
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        if not sep:
            return b"".join(parts), False
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            return b"".join(parts), True
        parts.append(data[:size])
        if len(data) < size + 2:
            return b"".join(parts), False
        data = data[size + 2 :]
