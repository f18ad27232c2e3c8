"""``serve --workers N``: one address, N processes; exact answers, summed metrics, restarts, drain."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from buffered_stream.adapter.metrics_sum import cumulative_samples, sum_expositions
from buffered_stream.adapter.workers import available_cpus, worker_targets
from support.backend import Completion, ScriptedBackend
from support.net import http_request, wait_until
from support.stack import Harness, Service, Stack

PATHS = ("/v1/chat/completions", "/v1/completions")
MODELS = 6
FAILED_STATUS = 502  # the shipped status_on_error: the worker holding the request died


def text_for(model: int) -> str:
    return " ".join(f"w{model}-{i}" for i in range(5 + 3 * model))


def request_for(path: str, model: int) -> dict[str, Any]:
    if path == "/v1/chat/completions":
        return {"model": f"m{model}", "messages": [{"role": "user", "content": "hi"}]}
    return {"model": f"m{model}", "prompt": "hi"}


def blank(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k not in ("id", "created")}


def expected(path: str, model: int, completion: Completion) -> dict[str, Any]:
    return blank(completion.pair(path, request_for(path, model))[1])


def scripted(backend: ScriptedBackend, token_delay: float = 0.0) -> tuple[ScriptedBackend, dict[int, Completion]]:
    completions = {m: Completion(text_for(m), token_delay=token_delay) for m in range(MODELS)}
    for model, completion in completions.items():
        backend.on(completion, model=f"m{model}")
    return backend, completions


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def per_worker_requests(service: Service) -> list[float]:
    found = samples(service.metrics())
    return [v for (name, _), v in sorted(found.items()) if name == "buffered_stream_worker_requests_total"]


def worker_pids(service: Service) -> list[int]:
    pid = service.process.pid
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def worker_metrics_urls(service: Service) -> list[str]:
    urls = []
    for pid in worker_pids(service):
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        urls.append("http://" + args[args.index(b"--metrics-listen") + 1].decode())
    return urls


def gauge(service: Service, name: str) -> float:
    return samples(service.metrics()).get((name, ()), -1.0)


def send_mix(
    stack: Stack, completions: dict[int, Completion], count: int, concurrency: int
) -> list[tuple[str, int, Any]]:
    """``count`` requests over both paths and every model; (path, model, result) each."""
    jobs = [(PATHS[i % 2], i % MODELS) for i in range(count)]

    def send(job: tuple[str, int]) -> tuple[str, int, Any]:
        path, model = job
        return path, model, http_request(f"{stack.url}{path}", "POST", request_for(path, model), timeout=30)

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(send, jobs))


def assert_exact(results: list[tuple[str, int, Any]], completions: dict[int, Completion]) -> None:
    for path, model, result in results:
        assert result.status == 200, (path, model, result.status, result.body[:300])
        assert blank(result.json()) == expected(path, model, completions[model]), (path, model)


# --- fast: the parts that need no process ------------------------------------------------------


def test_expositions_add_up_by_name_and_labels() -> None:
    a = (
        "# HELP r_total Requests\n# TYPE r_total counter\n"
        'r_total{outcome="converted"} 3.0\nr_created{outcome="converted"} 100.0\n'
        '# TYPE g gauge\ng 2.0\nprocess_start_time_seconds 50.0\npython_info{v="3"} 1.0\n'
    )
    b = (
        "# HELP r_total Requests\n# TYPE r_total counter\n"
        'r_total{outcome="converted"} 4.0\nr_total{outcome="aborted"} 1.0\nr_created{outcome="converted"} 90.0\n'
        '# TYPE g gauge\ng 5.0\nprocess_start_time_seconds 40.0\npython_info{v="3"} 1.0\n'
    )
    summed = samples(sum_expositions([a, b]))
    assert summed[("r_total", (("outcome", "converted"),))] == 7
    assert summed[("r_total", (("outcome", "aborted"),))] == 1
    assert summed[("r_created", (("outcome", "converted"),))] == 90  # the earliest, not a sum
    assert summed[("g", ())] == 7  # gauges add up too: the pool's in-flight is the workers' sum
    assert summed[("process_start_time_seconds", ())] == 40
    assert summed[("python_info", (("v", "3"),))] == 1


def test_an_exited_workers_counters_stay_in_the_sums_and_families_stay_contiguous() -> None:
    worker = (
        "# HELP r_total Requests\n# TYPE r_total counter\nr_total 5.0\nr_created 100.0\n"
        "# HELP g In flight\n# TYPE g gauge\ng 3.0\n"
        '# HELP h Seconds\n# TYPE h histogram\nh_bucket{le="1.0"} 2.0\nh_bucket{le="+Inf"} 2.0\nh_count 2.0\nh_sum 0.5\n'
    )
    retired = cumulative_samples(worker)
    assert "g 3.0" not in retired and "r_created" not in retired
    replacement = worker.replace("r_total 5.0", "r_total 1.0")
    text = sum_expositions([retired, replacement])
    summed = samples(text)  # the parser rejects a family whose samples are not contiguous
    assert summed[("r_total", ())] == 6
    assert summed[("g", ())] == 3  # the replacement's gauge only
    assert summed[("h_bucket", (("le", "+Inf"),))] == 4
    assert text.index("# TYPE g gauge") < text.index("\ng 3.0") < text.index("# HELP h Seconds")


def test_available_cpus_is_bounded_by_the_cgroup_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    quota.write_text("max 100000\n")
    assert available_cpus(str(quota)) == affinity
    quota.write_text("50000 100000\n")  # half a CPU still gets one worker
    assert available_cpus(str(quota)) == 1
    quota.write_text(f"{150000 * affinity} 100000\n")  # a quota above the affinity: the affinity
    assert available_cpus(str(quota)) == affinity
    assert available_cpus(str(tmp_path / "absent")) == affinity


def test_a_unix_socket_pool_has_one_path_per_worker_and_tcp_one_address() -> None:
    assert worker_targets("unix:/run/bs.sock", 3) == [
        "unix:/run/bs.sock.0",
        "unix:/run/bs.sock.1",
        "unix:/run/bs.sock.2",
    ]
    assert worker_targets("unix:/run/bs.sock", 1) == ["unix:/run/bs.sock"]
    assert worker_targets("127.0.0.1:50051", 4) == ["127.0.0.1:50051"]


# --- through real Envoy -----------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("unix_socket", [False, True], ids=["tcp-reuseport", "unix-per-worker"])
def test_two_workers_answer_a_mix_exactly_both_serve_and_metrics_sum(harness: Harness, unix_socket: bool) -> None:
    backend, completions = scripted(harness.backend())
    stack = harness.stack(backend=backend, workers=2, unix_socket=unix_socket)
    results = send_mix(stack, completions, count=192, concurrency=48)
    assert_exact(results, completions)

    wait_until(lambda: gauge(stack.service, "buffered_stream_in_flight_requests") == 0, 10)
    per_worker = per_worker_requests(stack.service)
    assert len(per_worker) == 2 and sum(per_worker) == 192
    assert min(per_worker) > 0, f"one worker served everything: {per_worker}"

    # The pool's /metrics is the sum of what each worker serves on its own loopback port.
    pool = samples(stack.service.metrics())
    workers = [samples(http_request(f"{url}/metrics").body.decode()) for url in worker_metrics_urls(stack.service)]
    for key in [k for k in pool if k[0].startswith("buffered_stream_") and not k[0].endswith("_created")]:
        if key[0].startswith(("buffered_stream_worker", "buffered_stream_workers")):
            continue
        assert pool[key] == sum(w.get(key, 0.0) for w in workers), key
    assert pool[("buffered_stream_requests_total", (("outcome", "converted"),))] == 192
    assert pool[("buffered_stream_workers", ())] == 2
    assert pool[("buffered_stream_workers_ready", ())] == 2


@pytest.mark.e2e
def test_a_killed_worker_loses_only_its_requests_and_is_restarted(harness: Harness) -> None:
    backend, completions = scripted(harness.backend(), token_delay=0.05)  # ~0.3-1.1 s per answer: many in flight
    stack = harness.stack(backend=backend, workers=2)
    send_mix(stack, completions, count=24, concurrency=24)  # connections to both workers
    victim = worker_pids(stack.service)[0]
    converted = ("buffered_stream_requests_total", (("outcome", "converted"),))
    assert samples(stack.service.metrics())[converted] == 24

    with ThreadPoolExecutor(1) as background:
        load = background.submit(send_mix, stack, completions, 96, 24)
        wait_until(lambda: gauge(stack.service, "buffered_stream_in_flight_requests") >= 8, 10)
        os.kill(victim, signal.SIGKILL)
        results = load.result(timeout=120)

    failed = [r for r in results if r[2].status != 200]
    assert all(r[2].status == FAILED_STATUS for r in failed), [r[2].status for r in failed]
    assert len(failed) <= 24, "more requests failed than were in flight when the worker died"
    assert_exact([r for r in results if r[2].status == 200], completions)

    wait_until(lambda: gauge(stack.service, "buffered_stream_workers_ready") == 2, 30, interval=0.2)
    assert gauge(stack.service, "buffered_stream_worker_restarts_total") == 1
    assert victim not in worker_pids(stack.service)
    assert_exact(send_mix(stack, completions, count=48, concurrency=16), completions)
    # The dead worker's counts stay in the pool's totals (as last scraped: 24 before the kill).
    assert samples(stack.service.metrics())[converted] >= 24 + 48


@pytest.mark.e2e
def test_sigterm_drains_every_worker_then_exits_0(harness: Harness) -> None:
    backend, completions = scripted(harness.backend(), token_delay=0.1)  # 0.5-2.2 s per answer
    stack = harness.stack(backend=backend, workers=2)
    send_mix(stack, completions, count=24, concurrency=24)
    pids = worker_pids(stack.service)

    with ThreadPoolExecutor(1) as background:
        load = background.submit(send_mix, stack, completions, 24, 24)
        wait_until(lambda: gauge(stack.service, "buffered_stream_in_flight_requests") >= 12, 10)
        stack.service.process.signal(signal.SIGTERM)
        wait_until(lambda: http_request(f"{stack.service.metrics_url}/healthz").status == 503, 5)
        results = load.result(timeout=60)
    assert_exact(results, completions)  # nothing in flight was cut
    assert stack.service.process.wait(30) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


@pytest.mark.e2e
def test_not_serving_until_every_worker_has_started(harness: Harness) -> None:
    socket_dir = tempfile.mkdtemp(prefix="bs-")
    try:
        blocker = Path(socket_dir, "ext_proc.sock.1")
        blocker.mkdir()  # worker 1 cannot bind its socket: it exits and is restarted, again and again
        listen = f"unix:{socket_dir}/ext_proc.sock"
        service = harness._own(Service(harness.work_dir, workers=2, extra_args=("--listen", listen)))

        def health(target: str) -> int:
            with grpc.insecure_channel(target) as channel:
                return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status

        wait_until(lambda: gauge(service, "buffered_stream_worker_restarts_total") >= 1, 30, interval=0.2)
        assert http_request(f"{service.metrics_url}/healthz").status == 503
        assert health(f"{listen}.0") == health_pb2.HealthCheckResponse.NOT_SERVING

        blocker.rmdir()
        wait_until(lambda: http_request(f"{service.metrics_url}/healthz").status == 200, 30, interval=0.2)
        for target in worker_targets(listen, 2):
            wait_until(lambda: health(target) == health_pb2.HealthCheckResponse.SERVING, 10)
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)
