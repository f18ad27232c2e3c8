"""Shared fixtures: the Envoy binary, the scriptable backend, and real service + Envoy stacks.

Every process a fixture starts is stopped at its teardown; when a test fails, the logs of the
processes still running are attached to its report.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "filter"))

from buffered_stream.envoy_config import build_envoy_config  # noqa: E402
from support import ast_guard  # noqa: E402,F401  (installs itself: see its docstring)
from support.backend import ScriptedBackend  # noqa: E402
from support.processes import LIVE  # noqa: E402
from support.stack import Envoy, Harness, Service, Stack, find_envoy_binary  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for process in LIVE:
            report.sections.append((f"process {process.name}", process.logs()))


@pytest.fixture(scope="session")
def envoy_binary() -> Path:
    """The Envoy binary; a missing one fails the run (e2e tests are never skipped)."""
    try:
        return find_envoy_binary()
    except FileNotFoundError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def backend() -> Iterator[ScriptedBackend]:
    """A fresh scriptable backend for one test."""
    with ScriptedBackend() as b:
        yield b


@pytest.fixture
def harness(tmp_path: Path, envoy_binary: Path) -> Iterator[Harness]:
    """Starts processes for one test (``harness.stack(...)``, ``.service()``, ``.envoy(cfg)``, ``.hop(url)``)."""
    h = Harness(tmp_path, envoy_binary)
    yield h
    h.close()


@pytest.fixture(scope="module")
def module_harness(tmp_path_factory: pytest.TempPathFactory, envoy_binary: Path) -> Iterator[Harness]:
    """Like ``harness``, shared by the tests of one module (processes started once)."""
    h = Harness(tmp_path_factory.mktemp("stack"), envoy_binary)
    yield h
    h.close()


@pytest.fixture
def service(harness: Harness) -> Service:
    """A ready buffered-stream service (gRPC on ``service.target``, metrics on ``service.metrics_url``)."""
    return harness.service()


@pytest.fixture
def envoy(harness: Harness, backend: ScriptedBackend, service: Service) -> Envoy:
    """Envoy with the packaged config, pointed at ``backend`` and ``service``, ready to serve."""
    config = build_envoy_config(
        backend_url=backend.url, listen=("127.0.0.1", 0), admin_port=0, ext_proc_target=service.target
    )
    return harness.envoy(config)


@pytest.fixture(scope="module")
def stack(module_harness: Harness) -> Stack:
    """The default stack (buffered mode) shared by a module; script ``stack.backend`` per test
    with distinct model names, or call ``stack.backend.reset()``."""
    return module_harness.stack()
