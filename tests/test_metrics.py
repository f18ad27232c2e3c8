"""The service's own metric types expose exactly what prometheus_client's would."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from buffered_stream.adapter.metrics import ASSEMBLY_SECONDS, TallyHistogram

BUCKETS = ASSEMBLY_SECONDS.bounds


class _One:
    def __init__(self, histogram: TallyHistogram) -> None:
        self.histogram = histogram

    def collect(self):  # noqa: ANN201 - the registry's collector protocol
        yield self.histogram.metric()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(BUCKETS) | st.floats(0, 3) | st.just(0.0), max_size=60))
def test_the_plain_histogram_exposes_what_prometheus_client_would(values: list[float]) -> None:
    """Same buckets (a value equal to a bound counts in that bound's bucket), counts and sum."""
    reference, ours = CollectorRegistry(), CollectorRegistry()
    histogram = Histogram("x_seconds", "doc", buckets=BUCKETS, registry=reference)
    tally = TallyHistogram("x_seconds", "doc", BUCKETS)
    ours.register(_One(tally))
    for value in values:
        histogram.observe(value)
        tally.observe(value)
    expected = [line for line in generate_latest(reference).decode().splitlines() if "_created" not in line]
    assert generate_latest(ours).decode().splitlines() == expected
