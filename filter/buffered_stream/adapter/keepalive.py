"""Keep-alive bytes of a full-duplex answer: one clock, moved by the exchange and read by a loop timer.

A keep-alive route's 200 leaves Envoy before the answer exists; a newline every ``interval`` of
silence keeps clients and proxies from timing the request out. The exchange says when the upstream
body started (Envoy accepts a body of ours only after the upstream's first chunk) and when the answer
went; the timer writes the bytes that fall due in between.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from . import metrics

KEEPALIVE_BYTE = b"\n"
KEEPALIVE_GRID_SECONDS = 0.25
KEEPALIVE_CHUNK = pb.ProcessingResponse(
    response_body=pb.BodyResponse(
        response=pb.CommonResponse(
            body_mutation=pb.BodyMutation(streamed_response=pb.StreamedBodyResponse(body=KEEPALIVE_BYTE))
        )
    )
)


class Keepalive:
    """The keep-alive of one full-duplex answer: its clock, and the loop timer that writes its bytes.

    Reading Envoy's messages costs nothing extra per upstream chunk (no task or timeout per read):
    the timer wakes once per byte, and while no byte is due a stream costs one entry in the loop's
    timer heap. Writes never overlap: the stream's own replies first wait for a keep-alive write in
    flight (``writing``), and a byte falls due only while the answer is still open.
    """

    __slots__ = (
        "interval",
        "_grid",
        "last_sent",
        "body_started",
        "answered",
        "bytes_sent",
        "writing",
        "_write",
        "_loop",
        "_timer",
    )

    def __init__(self, interval: float) -> None:
        self.interval = interval
        # Due times snap down to this grid (a byte goes out at most a quarter interval early), so
        # the requests held at once wake the process together instead of one wakeup per byte.
        self._grid = min(KEEPALIVE_GRID_SECONDS, interval / 4)
        self.last_sent = time.monotonic()  # of the last byte downstream: the 200's headers, at first
        self.body_started = False
        self.answered = False
        self.bytes_sent = 0
        self.writing: asyncio.Task[None] | None = None
        self._write: Callable[[pb.ProcessingResponse], Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def due(self) -> float | None:
        """Monotonic time the next byte is due, or None when none may be sent now."""
        if not self.body_started or self.answered:
            return None
        due = self.last_sent + self.interval
        return due - due % self._grid

    def chunk(self) -> pb.ProcessingResponse:
        """The keep-alive chunk, counted as sent: the caller writes it now."""
        self.last_sent = time.monotonic()
        self.bytes_sent += 1
        metrics.KEEPALIVES.value += 1
        return KEEPALIVE_CHUNK

    def stop(self) -> None:
        """The final reply (the answer or an error) is going out: no byte falls due after it."""
        self.answered = True
        self.last_sent = time.monotonic()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the timer -----------------------------------------------------------------------------------

    def start(self, write: Callable[[pb.ProcessingResponse], Any]) -> None:
        """Write the bytes that fall due from now on with ``write`` (the stream's, on this loop)."""
        self._write = write
        self._loop = asyncio.get_running_loop()
        self._arm()

    def _arm(self) -> None:
        due = self.due
        if due is not None:
            assert self._loop is not None
            self._timer = self._loop.call_later(max(0.0, due - time.monotonic()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        assert self._loop is not None
        self.writing = self._loop.create_task(self._send())

    async def _send(self) -> None:
        assert self._write is not None
        try:
            due = self.due
            if due is not None and due <= time.monotonic():
                await self._write(self.chunk())
        except Exception:  # the stream broke: its reader sees that too and ends the exchange
            return
        finally:
            self.writing = None
        self._arm()

    def close(self) -> None:
        """The stream ended: nothing more is written."""
        if self._timer is not None:
            self._timer.cancel()
        if self.writing is not None:
            self.writing.cancel()
