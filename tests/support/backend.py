"""A scriptable OpenAI-compatible backend: real HTTP/1.1 on loopback, in a background thread.

Every e2e test points Envoy at one of these. Script what it answers with ``on(reply, model=...)``
(newest matching rule wins) and inspect what it received in ``requests``::

    backend = ScriptedBackend().start()
    backend.on(Completion("Hello there", token_delay=0.1), model="slow")
    backend.on(Json({"error": {"message": "busy"}}, status=429), model="busy")
    ...
    assert backend.requests[-1].json["stream"] is True
    backend.stop()

Replies:
- ``Completion``: a generation that answers like a real server in both modes: SSE chunks
  (vLLM-like) for ``stream: true``, the matching native JSON for ``stream: false``.
- ``Sse``: exactly these events, then end the body, close the connection, or hang.
- ``Json``: one JSON (or bytes) body with any status: errors (429/500), ``{"error":...}`` with 200.
- ``Raw``: bytes written to the socket as they are (a broken response), then close.
- ``Silence``: say nothing for N seconds, then close.
A rule's reply may also be a function ``RecordedRequest -> reply`` for stateful scripts.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import orjson

from buffered_stream import demo_backend as http
from buffered_stream.demo_backend import GENERATION_PATHS, completion_pair, models_body, sse_event

from .net import wait_until

DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog."


@dataclass
class RecordedRequest:
    """A request the backend received, and what it did with it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    received_at: float = field(default_factory=time.monotonic)
    #: body bytes sent back (de-chunked), for comparing with what the client got
    response_body: bytearray = field(default_factory=bytearray)
    #: "complete" (answered), "closed" (closed on purpose), "client_gone" (peer left first)
    outcome: str | None = None
    finished: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def model(self) -> str | None:
        return self.json.get("model") if isinstance(self.json, dict) else None

    @property
    def stream(self) -> bool:
        return isinstance(self.json, dict) and bool(self.json.get("stream"))


def tokens_of(text: str) -> list[str]:
    """Split ``text`` into word tokens that join back to it ("a b" → ["a", " b"])."""
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


@dataclass(frozen=True)
class Completion:
    """A generation of ``text`` (or explicit ``tokens``), one token per ``token_delay`` seconds.

    ``stream: true`` gets SSE (with a usage chunk when the request asks for it and ``usage`` is
    not False); ``stream: false`` gets the matching native JSON after the same generation time
    in silence, as a real server would.
    """

    text: str = DEFAULT_TEXT
    token_delay: float = 0.0
    first_token_delay: float = 0.0
    tokens: tuple[str, ...] | None = None
    finish_reason: str = "stop"
    prompt_tokens: int = 7
    usage: bool = True
    model: str | None = None  # default: echo the request's model
    #: explicit seconds before each SSE chunk (overrides the two delays above; missing ones are 0)
    chunk_delays: tuple[float, ...] | None = None

    def pair(self, path: str, request: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The stream chunks and native answer this completion gives for ``request`` on ``path``."""
        request = request if isinstance(request, dict) else {}
        include_usage = self.usage and bool((request.get("stream_options") or {}).get("include_usage"))
        return completion_pair(
            path,
            list(self.tokens) if self.tokens is not None else tokens_of(self.text),
            model=self.model or request.get("model") or "test-model",
            prompt_tokens=self.prompt_tokens,
            finish_reason=self.finish_reason,
            include_usage=include_usage,
        )


@dataclass(frozen=True)
class Sse:
    """Exactly ``events`` as an SSE body: dicts become ``data: {json}``, str ``data: str``
    (``"[DONE]"``), bytes are sent raw. ``delay`` before each event (one value or one per event).

    ``then``: ``"end"`` finishes the chunked body cleanly; ``"close"`` drops the connection
    mid-body; ``"hang"`` keeps it open and silent for ``hang_seconds``, then closes.
    """

    events: Sequence[dict[str, Any] | str | bytes]
    delay: float | Sequence[float] = 0.0
    status: int = 200
    content_type: str = "text/event-stream"
    then: Literal["end", "close", "hang"] = "end"
    hang_seconds: float = 3600.0


@dataclass(frozen=True)
class Json:
    """One complete response after ``delay`` seconds of silence; ``body`` is JSON-able or bytes."""

    body: Any
    status: int = 200
    delay: float = 0.0
    content_type: str = "application/json"


@dataclass(frozen=True)
class Raw:
    """``data`` written to the socket verbatim after ``delay`` seconds, then the connection closes."""

    data: bytes
    delay: float = 0.0


@dataclass(frozen=True)
class Silence:
    """No answer at all for ``seconds``, then the connection closes."""

    seconds: float


Reply = Union[Completion, Sse, Json, Raw, Silence]
ReplyOrScript = Union[Reply, Callable[[RecordedRequest], Reply]]


@dataclass(frozen=True)
class _Rule:
    reply: ReplyOrScript
    model: str | None
    path: str | None
    method: str | None

    def matches(self, request: RecordedRequest) -> bool:
        return (
            (self.model is None or self.model == request.model)
            and (self.path is None or self.path == request.path)
            and (self.method is None or self.method == request.method)
        )


_DEFAULT_RULES = [
    _Rule(Json(orjson.loads(models_body(["test-model"]))), None, "/v1/models", "GET"),
    *(_Rule(Completion(), None, p, "POST") for p in GENERATION_PATHS),
]


class ScriptedBackend:
    """The test backend; use as a context manager or ``start()``/``stop()``."""

    def __init__(self) -> None:
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    # --- scripting ---------------------------------------------------------------------------

    def on(
        self,
        reply: ReplyOrScript,
        *,
        model: str | None = None,
        path: str | None = None,
        method: str | None = None,
    ) -> ScriptedBackend:
        """Answer requests matching all given criteria with ``reply`` (newest rule wins).

        Without rules: ``GET /v1/models`` lists ``test-model``; both generation paths answer with
        ``Completion()``; anything else is 404.
        """
        with self._lock:
            self._rules.append(_Rule(reply, model, path, method))
        return self

    def reset(self) -> None:
        """Forget rules and recorded requests (for a backend shared by several tests)."""
        with self._lock:
            self._rules.clear()
            self.requests.clear()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """The first ``count`` recorded requests, once that many have arrived."""
        wait_until(
            lambda: len(self.requests) >= count,
            timeout,
            message=lambda: f"{count} backend requests (got {len(self.requests)}: {self.requests})",
        )
        return self.requests[:count]

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> ScriptedBackend:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="scripted-backend", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("scripted backend did not start")
        return self

    def stop(self) -> None:
        """Close the listener and every open connection; idempotent."""
        if self._loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            asyncio.get_running_loop().stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        self._thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> ScriptedBackend:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- serving -----------------------------------------------------------------------------

    def _choose(self, request: RecordedRequest) -> Reply | None:
        with self._lock:
            rules = [*_DEFAULT_RULES, *self._rules]
        for rule in reversed(rules):
            if rule.matches(request):
                return rule.reply(request) if callable(rule.reply) else rule.reply
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while (parsed := await http.read_request(reader, writer)) is not None:
                request = RecordedRequest(parsed.method, parsed.path, parsed.headers, parsed.body, parsed.json())
                with self._lock:
                    self.requests.append(request)
                try:
                    completed = await self._reply(request, self._choose(request), writer, parsed.keep_alive)
                    request.outcome = "complete" if completed else "closed"
                except (ConnectionError, asyncio.IncompleteReadError):
                    request.outcome = "client_gone"
                    return
                finally:
                    request.finished.set()
                if not (completed and parsed.keep_alive):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): end quietly, the connection closes below
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _reply(
        self, request: RecordedRequest, reply: Reply | None, writer: asyncio.StreamWriter, keep_alive: bool
    ) -> bool:
        """Send ``reply``; False if it closes the connection on purpose instead of completing."""
        if reply is None:
            body = http.error_body(f"no scripted reply for {request.method} {request.path}")
            request.response_body += body
            await http.send_response(writer, 404, body, keep_alive=keep_alive)
            return True
        if isinstance(reply, Completion):
            chunks, native = reply.pair(request.path, request.json)
            if reply.chunk_delays is not None:
                delays = list(reply.chunk_delays)
            else:
                delays = [reply.first_token_delay] + [reply.token_delay] * len(chunks)
            if not request.stream:
                await asyncio.sleep(sum(delays))
                reply = Json(native)
            else:
                reply = Sse([*chunks, "[DONE]"], delay=delays)
        if isinstance(reply, Json):
            await asyncio.sleep(reply.delay)
            body = reply.body if isinstance(reply.body, bytes) else orjson.dumps(reply.body)
            request.response_body += body
            await http.send_response(writer, reply.status, body, reply.content_type, keep_alive=keep_alive)
            return True
        if isinstance(reply, Sse):
            return await self._send_sse(request, reply, writer, keep_alive)
        if isinstance(reply, Raw):
            await asyncio.sleep(reply.delay)
            writer.write(reply.data)
            await writer.drain()
            return False
        if isinstance(reply, Silence):
            await asyncio.sleep(reply.seconds)
            return False
        raise TypeError(f"not a reply: {reply!r}")

    async def _send_sse(
        self, request: RecordedRequest, reply: Sse, writer: asyncio.StreamWriter, keep_alive: bool
    ) -> bool:
        if isinstance(reply.delay, (int, float)):
            delays = [float(reply.delay)] * len(reply.events)
        else:
            delays = [*reply.delay, *[0.0] * (len(reply.events) - len(reply.delay))]
        await http.start_chunked(writer, reply.status, reply.content_type, keep_alive=keep_alive)
        for event, delay in zip(reply.events, delays):
            await asyncio.sleep(delay)
            data = event if isinstance(event, bytes) else sse_event(event)
            request.response_body += data
            await http.send_chunk(writer, data)
        if reply.then == "end":
            await http.end_chunked(writer)
            return True
        if reply.then == "hang":
            await asyncio.sleep(reply.hang_seconds)
        return False
