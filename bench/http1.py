"""The one HTTP/1.1 detail the bench's raw client and server share: how a message body is framed."""

from __future__ import annotations


def body_framing(header_lines: list[bytes]) -> tuple[int, bool]:
    """``(content_length, chunked)`` from a message's header lines (the start line excluded)."""
    length, chunked = 0, False
    for line in header_lines:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    return length, chunked
