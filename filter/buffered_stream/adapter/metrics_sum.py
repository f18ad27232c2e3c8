"""Add up the Prometheus text of several worker processes into one exposition.

Samples with the same name and labels are added (counters, gauges, histogram buckets alike: the
pool's in-flight gauge is the sum of the workers'). A few samples are points in time or constant
facts, where a sum means nothing: those keep the earliest value (``*_created``,
``process_start_time_seconds``) or the first worker's (``*_info``).
"""

from __future__ import annotations

from collections.abc import Iterable

_EARLIEST = ("_created", "process_start_time_seconds")


def _combine(name: str, old: float, new: float) -> float:
    if name.endswith(_EARLIEST):
        return min(old, new)
    if name.endswith("_info"):
        return old
    return old + new


def _sample_name(key: str) -> str:
    return key.split("{", 1)[0]


def sum_expositions(texts: Iterable[str]) -> str:
    """One Prometheus text exposition whose samples are those of ``texts`` added up.

    Comment lines (``# HELP``/``# TYPE``) and samples keep the order in which they first appear,
    so families stay contiguous and histogram buckets ordered. Each worker renders its labels in
    the same order (same code), so a sample's text before the value is its identity.
    """
    order: list[str] = []  # comment lines and sample keys, first-seen order
    values: dict[str, float] = {}
    comments: set[str] = set()
    for text in texts:
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("#"):
                if line not in comments:
                    comments.add(line)
                    order.append(line)
                continue
            key, _, raw = line.rpartition(" ")
            value = float(raw)
            if key in values:
                values[key] = _combine(_sample_name(key), values[key], value)
            else:
                values[key] = value
                order.append(key)
    lines = [entry if entry in comments else f"{entry} {_render(values[entry])}" for entry in order]
    return "\n".join(lines) + "\n"


def _render(value: float) -> str:
    # prometheus_client's own spelling: repr for floats, +Inf/-Inf/NaN spelled out.
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
