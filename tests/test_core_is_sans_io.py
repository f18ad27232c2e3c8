"""The core never imports grpc or asyncio, so it can be tested, benchmarked and reused without I/O."""

from __future__ import annotations

import importlib.util
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

# Modules that talk to Envoy, the network or the process: everything else is core.
ADAPTER_MODULES = {
    "__main__",
    "service",
    "extproc",
    "cli",
    "metrics",
    "health",
    "envoy_config",
    "demo_backend",
    "server",
}
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
    names = [
        f"buffered_stream.{info.name}"
        for info in pkgutil.iter_modules([str(package_dir)])
        if info.name not in ADAPTER_MODULES
    ]
    return package_dir.parent, sorted(names)


def test_core_modules_are_found() -> None:
    _, names = core_modules()
    for expected in ("sse", "convert", "errors", "assembler", "request"):
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
