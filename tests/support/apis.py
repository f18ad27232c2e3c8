"""An API's ``Api`` from what a test names it by (``StreamConverter`` takes an ``Api`` only)."""

from __future__ import annotations

from typing import Any

from buffered_stream.apis import api_named
from buffered_stream.core.api import Api


def api_of(schema: str | Api[Any]) -> Api[Any]:
    return schema if isinstance(schema, Api) else api_named(schema)
