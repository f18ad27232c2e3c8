"""Subprocesses that log to files, are always stopped, and show their logs when a test fails."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

# Every process started and not yet stopped; conftest attaches their logs to a failed test report.
LIVE: list[ManagedProcess] = []

LOG_TAIL_CHARS = 8000


class ManagedProcess:
    """One child process with stdout/stderr in ``log_dir/<name>.{out,err}``.

    ``stop()`` sends SIGTERM, waits, then SIGKILLs; it is idempotent, and fixtures call it at
    teardown whatever happened.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_dir: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.args = list(args)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = unique_path(log_dir / f"{name}.out")
        self.stderr_path = self.stdout_path.with_suffix(".err")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(
                self.args,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=cwd,
            )
        LIVE.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def logs(self, tail: int = LOG_TAIL_CHARS) -> str:
        """The last ``tail`` characters of stdout and stderr, labelled, for assertion messages."""
        state = "running" if self.returncode is None else f"exited with {self.returncode}"
        return (
            f"--- {self.name} ({state}): {' '.join(self.args)}\n"
            f"--- stdout:\n{self.stdout()[-tail:]}\n--- stderr:\n{self.stderr()[-tail:]}"
        )

    def assert_running(self) -> None:
        assert self.returncode is None, f"{self.name} died\n{self.logs()}"

    def signal(self, signum: int = signal.SIGTERM) -> None:
        if self.returncode is None:
            self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def stop(self, grace: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit code."""
        try:
            if self.returncode is None:
                self.popen.terminate()
                try:
                    self.popen.wait(grace)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait(grace)
            return self.popen.returncode
        finally:
            if self in LIVE:
                LIVE.remove(self)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def unique_path(path: Path) -> Path:
    """``path``, or ``path`` with a counter when a process of the same name already logged there."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate
