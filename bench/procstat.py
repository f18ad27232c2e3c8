"""CPU time and memory of a process from ``/proc`` (Linux), all threads included."""

from __future__ import annotations

import os
from dataclasses import dataclass

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    """user+system CPU seconds, current and peak resident set (bytes)."""

    cpu_s: float
    rss: int
    peak_rss: int

    @classmethod
    def of(cls, pid: int) -> ProcStat:
        with open(f"/proc/{pid}/stat") as f:
            # The command name may contain spaces: fields are counted after its closing parenthesis.
            fields = f.read().rpartition(")")[2].split()
        utime, stime = int(fields[11]), int(fields[12])
        memory = {}
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    memory[key] = int(value.split()[0]) * 1024
        return cls((utime + stime) / TICKS_PER_SECOND, memory["VmRSS"], memory["VmHWM"])

    def __add__(self, other: ProcStat) -> ProcStat:
        return ProcStat(self.cpu_s + other.cpu_s, self.rss + other.rss, self.peak_rss + other.peak_rss)

    @staticmethod
    def reset_peak(pid: int) -> bool:
        """Start a new peak-RSS window (``VmHWM``); False where the kernel does not allow it."""
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return False
        return True


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (``/proc/stat``), to spot foreign load."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / TICKS_PER_SECOND
