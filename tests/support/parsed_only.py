"""An API's assembler with its fast path turned off: the reference the fast paths must equal."""

from __future__ import annotations

from typing import Any

from buffered_stream.apis import spec_named
from buffered_stream.core.spec import SchemaSpec


class ParsedOnly:
    """Every payload parsed and folded (``add_raw`` always declines, no whole-body runs)."""

    def __init__(self, schema: Any = "chat", profile: str = "auto") -> None:
        spec = schema if isinstance(schema, SchemaSpec) else spec_named(schema)
        self._inner = spec.assembler(profile, None)
        self.add = self._inner.add
        self.result = self._inner.result

    def add_raw(self, payload: bytes) -> bool:
        return False

    @property
    def finished(self) -> bool:
        return self._inner.finished

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._inner.usage
