"""Conformance corpora: ``NAME.sse`` (the stream a server sent), ``NAME.meta.json`` (what the case
is, where it comes from, what to skip or the error to expect) and ``NAME.json`` (the server's own
non-stream answer), and the chunkings every case is replayed in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson


def case_names(folder: Path) -> list[str]:
    return sorted(path.name[: -len(".meta.json")] for path in folder.glob("*.meta.json"))


def load_case(folder: Path, name: str) -> tuple[dict[str, Any], bytes, dict[str, Any] | None]:
    """(meta, stream bytes, native answer or None for an error case)."""
    meta = orjson.loads((folder / f"{name}.meta.json").read_bytes())
    expected_path = folder / f"{name}.json"
    expected = orjson.loads(expected_path.read_bytes()) if expected_path.exists() else None
    return meta, (folder / f"{name}.sse").read_bytes(), expected


def whole(body: bytes) -> list[list[bytes]]:
    return [[body]]


def every_split(body: bytes) -> list[list[bytes]]:
    """The body cut in two at every byte: chunk boundaries must never change the answer."""
    return [[body[:cut], body[cut:]] for cut in range(len(body) + 1)]


def byte_by_byte(body: bytes) -> list[list[bytes]]:
    return [[body[i : i + 1] for i in range(len(body))]]
