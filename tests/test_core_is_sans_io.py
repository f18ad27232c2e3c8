"""The core never imports grpc or asyncio, so it can be tested, benchmarked and reused without I/O."""

from __future__ import annotations

import importlib.util
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

# Every module in these folders is core; the adapter and the tools live elsewhere.
CORE_PACKAGES = ("core", "schemas")
FORBIDDEN = ("grpc", "asyncio")

PROBE = """
import importlib, json, sys
offenders = {}
for name in sys.argv[1:]:
    importlib.import_module(name)
    loaded = sorted({m.split(".")[0] for m in sys.modules} & set(%r))
    if loaded:
        offenders[name] = loaded
        break
print(json.dumps(offenders))
""" % (FORBIDDEN,)


def core_modules() -> tuple[Path, list[str]]:
    package_dir = Path(importlib.util.find_spec("buffered_stream").origin).parent
    names = []
    for folder in CORE_PACKAGES:
        names.append(f"buffered_stream.{folder}")
        prefix = f"buffered_stream.{folder}."
        names += [info.name for info in pkgutil.walk_packages([str(package_dir / folder)], prefix)]
    return package_dir.parent, sorted(names)


def test_core_modules_are_found() -> None:
    _, names = core_modules()
    for expected in ("core.sse", "core.convert", "core.errors", "core.assembler", "core.request", "schemas.chat.fold"):
        assert f"buffered_stream.{expected}" in names


def test_core_imports_neither_grpc_nor_asyncio() -> None:
    source_root, names = core_modules()
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, *names],
        cwd=source_root,
        env={**os.environ, "PYTHONPATH": str(source_root)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == {}
