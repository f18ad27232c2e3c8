"""An API's ``SchemaSpec`` from what a test names it by (``StreamConverter`` takes a spec only)."""

from __future__ import annotations

from buffered_stream.apis import spec_named
from buffered_stream.core.spec import SchemaSpec


def spec_of(schema: str | SchemaSpec) -> SchemaSpec:
    return schema if isinstance(schema, SchemaSpec) else spec_named(schema)
