"""Loopback ports, polling with deadlines, and tiny HTTP helpers that never raise on a status."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for processes that cannot take 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    *,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Poll ``predicate`` until it returns a truthy value (returned) or ``timeout`` s pass.

    Exceptions from ``predicate`` count as "not yet" (the last one is chained to the
    ``AssertionError`` raised at the deadline), except ``AssertionError``, which means "never"
    (e.g. the process died) and propagates at once. ``message`` may be a callable, evaluated
    only at the deadline (e.g. to attach process logs).
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except AssertionError:
            raise
        except Exception as e:  # noqa: BLE001 - "not ready" can look like anything
            last_error = e
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s waiting for {text}") from last_error
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class HttpResult:
    """A finished HTTP exchange: status, lower-cased headers, raw body."""

    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float

    def json(self) -> Any:
        return orjson.loads(self.body)


def http_request(
    url: str,
    method: str = "GET",
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> HttpResult:
    """One request on a fresh connection; ``body`` may be bytes or JSON-able. Any status returns."""
    scheme, _, rest = url.partition("://")
    assert scheme == "http", url
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    data = body if body is None or isinstance(body, bytes) else orjson.dumps(body)
    all_headers = {"content-type": "application/json"} if data is not None else {}
    all_headers.update(headers or {})
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    started = time.monotonic()
    try:
        conn.request(method, "/" + path, body=data, headers=all_headers)
        response = conn.getresponse()
        payload = response.read()
        return HttpResult(
            status=response.status,
            headers={k.lower(): v for k, v in response.getheaders()},
            body=payload,
            elapsed=time.monotonic() - started,
        )
    finally:
        conn.close()
