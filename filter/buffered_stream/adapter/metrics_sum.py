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


def _sample_name(line: str) -> str:
    """The metric name of a sample line or key: what comes before its labels or value."""
    return line.split("{", 1)[0].split(" ", 1)[0]


def sum_expositions(texts: Iterable[str]) -> str:
    """One Prometheus text exposition whose samples are those of ``texts`` added up.

    Families keep the order in which they first appear, each with its ``# HELP``/``# TYPE``
    lines then its samples (histogram buckets stay in order), so a family seen first in one text
    and sampled in another stays contiguous. Each worker renders labels in the same order (same
    code), so a sample's text before its value is its identity.
    """
    families: dict[str, tuple[list[str], list[str]]] = {}  # name -> (comment lines, sample keys)
    values: dict[str, float] = {}
    for text in texts:
        family = ""
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                family = parts[2] if len(parts) > 2 else family
                comments = families.setdefault(family, ([], []))[0]
                if line not in comments:
                    comments.append(line)
                continue
            key, _, raw = line.rpartition(" ")
            value = float(raw)
            if key in values:
                values[key] = _combine(_sample_name(key), values[key], value)
            else:
                values[key] = value
                families.setdefault(family or _sample_name(key), ([], []))[1].append(key)
    lines = []
    for comments, keys in families.values():
        lines += comments
        lines += [f"{key} {_render(values[key])}" for key in keys]
    return "\n".join(lines) + "\n"


def cumulative_samples(text: str) -> str:
    """Only the samples that count up (counters, histograms, summaries; no ``*_created``).

    What a worker that exits leaves behind: the pool keeps adding it, so the pool's counters
    never go down when a worker is replaced (its gauges leave with it).
    """
    kept, kind = [], ""
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            kind = line.split()[-1]
            kept.append(line)
        elif line.startswith("#"):
            kept.append(line)
        elif line and kind in ("counter", "histogram", "summary") and not _sample_name(line).endswith("_created"):
            kept.append(line)
    return "\n".join(kept) + "\n"


def _render(value: float) -> str:
    # prometheus_client's own spelling: repr for floats, +Inf/-Inf/NaN spelled out.
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
