"""The service's own Prometheus counters, summed over its processes."""

from __future__ import annotations

from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

from stack import BenchStack, http_get

MESSAGE_PHASES = ("request_headers", "request_body", "response_headers", "response_body")


def service_counters(stack: BenchStack) -> Counter[str]:
    """``messages:<phase>``, ``messages``, ``chunks``, ``keepalive_bytes``, ``outcome:<name>``, ``in_flight``,
    ``assembly_s`` and ``assembled`` (time in the converter, answers that had one)."""
    totals: Counter[str] = Counter()
    for url in stack.metrics_urls:
        for family in text_string_to_metric_families(http_get(f"{url}/metrics").decode()):
            for sample in family.samples:
                if sample.name == "buffered_stream_grpc_messages_total":
                    totals[f"messages:{sample.labels['phase']}"] += sample.value
                    totals["messages"] += sample.value
                elif sample.name == "buffered_stream_response_chunks_total":
                    totals["chunks"] += sample.value
                elif sample.name == "buffered_stream_keepalive_bytes_total":
                    totals["keepalive_bytes"] += sample.value
                elif sample.name == "buffered_stream_requests_total":
                    totals[f"outcome:{sample.labels['outcome']}"] += sample.value
                elif sample.name == "buffered_stream_in_flight_requests":
                    totals["in_flight"] += sample.value
                elif sample.name == "buffered_stream_assembly_seconds_sum":
                    totals["assembly_s"] += sample.value
                elif sample.name == "buffered_stream_assembly_seconds_count":
                    totals["assembled"] += sample.value
    return totals


def delta(after: Counter[str], before: Counter[str]) -> Counter[str]:
    return Counter({key: after[key] - before[key] for key in after if after[key] != before[key]})
