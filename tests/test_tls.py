"""TLS and mutual TLS on the gRPC listener: real Envoy → service over mutual TLS (converted and
passed-through requests), clients without a trusted certificate or without TLS refused while the
good one keeps being served, certificates rotated under load (atomic renames, and the kubelet's
Secret-volume symlink swap, on a one-process service and on a two-worker SO_REUSEPORT pool),
startup errors as one line naming the file, and the Envoy side of the link.

Every certificate is made by the test (``support.certs``): a CA, server certificates for
127.0.0.1/localhost, a client certificate, and a client certificate from an untrusted CA.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from buffered_stream.cli import _worker_flags, build_parser
from buffered_stream.envoy_config import (
    SERVICE_CLUSTER,
    ServiceTls,
    build_envoy_config,
    cluster,
    enable_service_tls,
    service_tls_transport_socket,
    write_envoy_config,
)
from buffered_stream.settings import SettingsError, load_service_settings
from buffered_stream.tls import TlsFileError, TlsFiles, load_tls_material
from support.backend import Completion
from support.certs import (
    CertificateAuthority,
    KeyPair,
    SecretVolume,
    replace_files,
    served_certificate_serial,
    write_pair,
)
from support.net import free_port, http_request, wait_until
from support.stack import SOURCE_ROOT, Harness, Stack

REPO_ROOT = Path(__file__).resolve().parents[1]
MESSAGES = [{"role": "user", "content": "Say something."}]
TEXT = "Encrypted between Envoy and the service, the answer arrives whole."
SERVER_NAMES = ("localhost", "127.0.0.1")
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass
class Pki:
    """Files of one test PKI: a trusted CA with a server and a client certificate, and a rogue client."""

    directory: Path
    ca: CertificateAuthority
    server_pair: KeyPair
    ca_file: Path
    server: tuple[Path, Path]
    client: tuple[Path, Path]
    rogue_client: tuple[Path, Path]

    def tls_args(self, *, mutual: bool = True) -> tuple[str, ...]:
        args = ("--tls-cert", str(self.server[0]), "--tls-key", str(self.server[1]))
        return args + ("--tls-client-ca", str(self.ca_file)) if mutual else args

    def envoy_tls(self, server_name: str = "localhost", *, mutual: bool = True) -> ServiceTls:
        client = self.client if mutual else (None, None)
        return ServiceTls(
            trusted_ca=str(self.ca_file),
            server_name=server_name,
            client_cert=client[0] and str(client[0]),
            client_key=client[1] and str(client[1]),
        )


def make_pki(directory: Path) -> Pki:
    ca = CertificateAuthority("buffered-stream test CA")
    ca_file = directory / "ca.crt"
    directory.mkdir(parents=True, exist_ok=True)
    ca_file.write_bytes(ca.cert_pem)
    server_pair = ca.issue("buffered-stream", server_names=SERVER_NAMES)
    rogue = CertificateAuthority("someone else's CA")
    return Pki(
        directory,
        ca,
        server_pair,
        ca_file,
        server=write_pair(directory, "server", server_pair),
        client=write_pair(directory, "client", ca.issue("envoy", client=True)),
        rogue_client=write_pair(directory, "rogue", rogue.issue("envoy", client=True)),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def service_port(stack: Stack) -> int:
    return int(stack.service.target.rpartition(":")[2])


def envoy_stat(stack: Stack, name: str) -> int:
    return stack.envoy.stats().get(f"cluster.{SERVICE_CLUSTER}.{name}", 0)


def chat(stack: Stack, model: str, path: str = "/v1/chat/completions", **extra: Any) -> Any:
    return http_request(f"{stack.url}{path}", "POST", {"model": model, "messages": MESSAGES, **extra})


def stable(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k not in ("id", "created")}


# --- real Envoy → service over mutual TLS ------------------------------------------------------


@pytest.fixture(scope="module")
def mtls_stack(module_harness: Harness, pki: Pki) -> Stack:
    return module_harness.stack(
        extra_args=pki.tls_args(), customize=lambda cfg: enable_service_tls(cfg, pki.envoy_tls("localhost"))
    )


@pytest.mark.e2e
def test_converted_chat_over_mutual_tls_equals_the_backends_native_answer(mtls_stack: Stack) -> None:
    mtls_stack.backend.on(Completion(TEXT, token_delay=0.01), model="tls-convert")
    converted = chat(mtls_stack, "tls-convert")
    reference = chat(mtls_stack, "tls-convert", path="/direct/v1/chat/completions")

    assert converted.status == 200, converted.body[:300]
    assert converted.headers["content-type"] == "application/json"
    assert stable(converted.json()) == stable(reference.json())
    assert converted.json()["choices"][0]["message"]["content"] == TEXT
    upstream, direct = [r for r in mtls_stack.backend.requests if r.model == "tls-convert"]
    assert (upstream.stream, direct.stream) == (True, False)
    # The ext_proc stream really went over TLS.
    assert envoy_stat(mtls_stack, "ssl.handshake") >= 1
    assert envoy_stat(mtls_stack, "ssl.connection_error") == 0


@pytest.mark.e2e
def test_stream_true_passes_through_over_mutual_tls(mtls_stack: Stack) -> None:
    mtls_stack.backend.on(Completion(TEXT), model="tls-stream")
    result = chat(mtls_stack, "tls-stream", stream=True)
    (upstream,) = [r for r in mtls_stack.backend.requests if r.model == "tls-stream"]
    assert result.status == 200
    assert result.headers["content-type"] == "text/event-stream"
    assert result.body == upstream.response_body
    assert "stream_options" not in upstream.json


def health(port: int, credentials: grpc.ChannelCredentials | None) -> int:
    """The gRPC health status through a fresh channel (``None``: plaintext)."""
    target = f"127.0.0.1:{port}"
    options = [("grpc.ssl_target_name_override", "localhost")]
    channel = (
        grpc.insecure_channel(target) if credentials is None else grpc.secure_channel(target, credentials, options)
    )
    with channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status


def credentials(root: Path, client: tuple[Path, Path] | None) -> grpc.ChannelCredentials:
    chain = key = None
    if client is not None:
        chain, key = client[0].read_bytes(), client[1].read_bytes()
    return grpc.ssl_channel_credentials(root.read_bytes(), key, chain)


@pytest.mark.e2e
def test_clients_without_a_trusted_certificate_or_without_tls_are_refused(
    mtls_stack: Stack, pki: Pki, tmp_path: Path
) -> None:
    port = service_port(mtls_stack)
    good = credentials(pki.ca_file, pki.client)
    assert health(port, good) == SERVING

    other_root = tmp_path / "other-root.crt"
    other_root.write_bytes(CertificateAuthority("not the service's CA").cert_pem)
    refused = {
        "no client certificate": credentials(pki.ca_file, None),
        "a client certificate from an untrusted CA": credentials(pki.ca_file, pki.rogue_client),
        "plaintext": None,
        "a client that does not trust the service": credentials(other_root, pki.client),
    }
    for what, bad in refused.items():
        with pytest.raises(grpc.RpcError) as error:
            health(port, bad)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE, what

    # The refusals cost the good client nothing: gRPC health, and conversions through Envoy.
    mtls_stack.service.process.assert_running()
    assert health(port, good) == SERVING
    mtls_stack.backend.on(Completion(TEXT), model="after-refusals")
    result = chat(mtls_stack, "after-refusals")
    assert result.status == 200 and result.json()["choices"][0]["message"]["content"] == TEXT


@pytest.mark.e2e
def test_tls_without_client_ca_serves_clients_without_certificates_but_not_plaintext(
    harness: Harness, pki: Pki
) -> None:
    # Server-side TLS only; Envoy verifies the service by its IP address SAN (no SNI for an IP).
    stack = harness.stack(
        extra_args=pki.tls_args(mutual=False),
        customize=lambda cfg: enable_service_tls(cfg, pki.envoy_tls("127.0.0.1", mutual=False)),
    )
    port = service_port(stack)
    assert health(port, credentials(pki.ca_file, None)) == SERVING
    with pytest.raises(grpc.RpcError) as error:
        health(port, None)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    stack.backend.on(Completion(TEXT), model="server-tls")
    result = chat(stack, "server-tls")
    assert result.status == 200 and result.json()["choices"][0]["message"]["content"] == TEXT
    assert envoy_stat(stack, "ssl.handshake") >= 1


# --- rotation under load ------------------------------------------------------------------------


def one_request_per_connection(cfg: dict[str, Any]) -> None:
    """Every ext_proc stream on a new connection: each request after a rotation is a new handshake."""
    options = cluster(cfg, SERVICE_CLUSTER)["typed_extension_protocol_options"]
    http = options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    http["common_http_protocol_options"] = {"max_requests_per_connection": 1}


def in_flight(stack: Stack) -> float:
    for line in stack.service.metrics().splitlines():
        if line.startswith("buffered_stream_in_flight_requests "):
            return float(line.split()[1])
    return -1.0


@pytest.mark.e2e
@pytest.mark.parametrize(("how", "workers"), [("rename", 1), ("kubernetes", 1), ("kubernetes", 2)])
def test_rotated_certificates_are_served_to_new_connections_while_streams_in_flight_finish(
    harness: Harness, pki: Pki, tmp_path: Path, how: str, workers: int
) -> None:
    first, second = (pki.ca.issue("buffered-stream", server_names=SERVER_NAMES) for _ in range(2))
    contents = {"tls.crt": first.cert_pem, "tls.key": first.key_pem, "ca.crt": pki.ca.cert_pem}
    if how == "rename":
        directory = tmp_path / "tls"
        directory.mkdir()
        for name, data in contents.items():
            (directory / name).write_bytes(data)
        rotate = lambda: replace_files({directory / "tls.crt": second.cert_pem, directory / "tls.key": second.key_pem})  # noqa: E731
    else:
        volume = SecretVolume(tmp_path / "secret", contents)
        directory = volume.directory
        rotate = lambda: volume.swap({**contents, "tls.crt": second.cert_pem, "tls.key": second.key_pem})  # noqa: E731
    tls_args = (
        "--tls-cert",
        str(directory / "tls.crt"),
        "--tls-key",
        str(directory / "tls.key"),
        "--tls-client-ca",
        str(directory / "ca.crt"),
    )

    def customize(cfg: dict[str, Any]) -> None:
        enable_service_tls(cfg, pki.envoy_tls("localhost"))
        one_request_per_connection(cfg)

    backend = harness.backend()
    slow = Completion(TEXT, token_delay=0.15)  # ~1.6 s per answer: in flight across the rotation
    backend.on(slow, model="slow")
    backend.on(Completion(TEXT), model="fast")
    stack = harness.stack(backend=backend, extra_args=tls_args, workers=workers, customize=customize)
    port = service_port(stack)
    serial = lambda: served_certificate_serial(port, ca=pki.ca_file, client=pki.client)  # noqa: E731
    assert serial() == first.serial
    native = stable(slow.pair("/v1/chat/completions", {"model": "slow", "messages": MESSAGES})[1])

    with ThreadPoolExecutor(16) as pool:
        in_flight_at_rotation = [pool.submit(chat, stack, "slow") for _ in range(8)]
        wait_until(lambda: in_flight(stack) >= 8, 15, message="8 slow requests in flight")
        rotate()
        # New connections present the new certificate (with a pool: whichever worker takes them).
        wait_until(lambda: serial() == second.serial, 10, message="the rotated certificate served")
        assert {serial() for _ in range(12)} == {second.serial}
        after_rotation = [pool.submit(chat, stack, "fast") for _ in range(24)]
        for future in in_flight_at_rotation:
            result = future.result(timeout=60)
            assert result.status == 200, result.body[:300]
            assert stable(result.json()) == native
        for future in after_rotation:
            result = future.result(timeout=60)
            assert result.status == 200, result.body[:300]
            assert result.json()["choices"][0]["message"]["content"] == TEXT

    # Every request after the rotation opened a new connection, and every handshake succeeded.
    assert envoy_stat(stack, "ssl.handshake") >= 8 + 24
    assert envoy_stat(stack, "ssl.connection_error") == 0
    assert envoy_stat(stack, "upstream_cx_connect_fail") == 0
    logs = stack.service.process.stderr()
    assert "TLS certificate reloaded" in logs
    stack.service.process.assert_running()


def test_a_half_rotated_set_is_not_used_until_it_is_consistent(pki: Pki, tmp_path: Path) -> None:
    """The new certificate beside the old key (a rename rotation half done) keeps the old set."""
    from buffered_stream.tls import CertificateReloader

    first, second = (pki.ca.issue("buffered-stream", server_names=SERVER_NAMES) for _ in range(2))
    cert, key = write_pair(tmp_path, "tls", first)
    files = TlsFiles(str(cert), str(key), str(pki.ca_file))
    reloader = CertificateReloader(files, load_tls_material(files))
    assert reloader() is None  # unchanged
    replace_files({cert: second.cert_pem})
    assert reloader() is None and reloader.reloads == 0  # mismatched: not used
    replace_files({key: second.key_pem})
    assert reloader() is not None and reloader.reloads == 1
    assert reloader() is None
    os.unlink(cert)  # a file gone: keep serving what is loaded
    assert reloader() is None and reloader.reloads == 1


# --- startup errors -----------------------------------------------------------------------------


def _garbage(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _encrypted_key(pki: Pki, tmp: Path) -> Path:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.server[1].read_bytes(), None)
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"secret")
    )
    return _garbage(tmp, "encrypted.key", data)


def _dangling(tmp: Path) -> Path:
    path = tmp / "dangling.key"
    os.symlink(tmp / "..data" / "tls.key", path)
    return path


BAD_BLOCK = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
BAD_KEY = b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"

# (id, (cert, key, client CA) as functions of (pki, tmp), what the line says, the file it names: 0 cert, 1 key, 2 CA)
STARTUP_ERRORS = [
    ("missing certificate", lambda p, t: (t / "missing.crt", p.server[1], None), "cannot read TLS certificate file", 0),
    ("certificate is a directory", lambda p, t: (t, p.server[1], None), "Is a directory", 0),
    ("dangling key symlink", lambda p, t: (p.server[0], _dangling(t), None), "cannot read TLS key file", 1),
    ("key of another certificate", lambda p, t: (p.server[0], p.client[1], None), "does not match the certificate", 1),
    (
        "certificate not PEM",
        lambda p, t: (_garbage(t, "g.crt", b"\x00\x01garbage"), p.server[1], None),
        "is not PEM",
        0,
    ),
    (
        "certificate PEM that does not parse",
        lambda p, t: (_garbage(t, "b.crt", BAD_BLOCK), p.server[1], None),
        "does not parse",
        0,
    ),
    ("key not PEM", lambda p, t: (p.server[0], _garbage(t, "g.key", b"garbage"), None), "is not a PEM private key", 1),
    ("a certificate given as the key", lambda p, t: (p.server[0], p.server[0], None), "is not a PEM private key", 1),
    (
        "key PEM that does not parse",
        lambda p, t: (p.server[0], _garbage(t, "b.key", BAD_KEY), None),
        "does not hold a usable private key",
        1,
    ),
    ("encrypted key", lambda p, t: (p.server[0], _encrypted_key(p, t), None), "is encrypted", 1),
    ("client CA not PEM", lambda p, t: (*p.server, _garbage(t, "g-ca.crt", b"garbage")), "TLS client CA file", 2),
    ("missing client CA", lambda p, t: (*p.server, t / "missing-ca.crt"), "cannot read TLS client CA file", 2),
]


def serve(args: list[str], workers: int = 1) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "buffered_stream",
        "serve",
        "--workers",
        str(workers),
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--metrics-listen",
        f"127.0.0.1:{free_port()}",
        *args,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SOURCE_ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize(("make", "says", "names"), [c[1:] for c in STARTUP_ERRORS], ids=[c[0] for c in STARTUP_ERRORS])
def test_bad_tls_files_stop_serve_with_one_line_naming_the_file(
    pki: Pki, tmp_path: Path, make: Any, says: str, names: int
) -> None:
    files = make(pki, tmp_path)
    args = ["--tls-cert", str(files[0]), "--tls-key", str(files[1])]
    if files[2] is not None:
        args += ["--tls-client-ca", str(files[2])]
    result = serve(args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("buffered-stream: ") and says in lines[0], lines[0]
    assert str(files[names]) in lines[0]


def test_a_pool_refuses_bad_files_before_it_starts_a_worker(pki: Pki) -> None:
    result = serve(["--tls-cert", str(pki.server[0]), "--tls-key", str(pki.client[1])], workers=2)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"buffered-stream: TLS key file {pki.client[1]} does not match the certificate in {pki.server[0]}"
    ]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--tls-cert", "a.crt"], "tls_cert and tls_key (--tls-cert, --tls-key) go together"),
        (["--tls-key", "a.key"], "tls_cert and tls_key (--tls-cert, --tls-key) go together"),
        (["--tls-client-ca", "ca.crt"], "tls_client_ca (--tls-client-ca) needs tls_cert and tls_key"),
    ],
)
def test_incomplete_tls_options_stop_serve(args: list[str], says: str) -> None:
    result = serve(args)
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert says in line


@pytest.mark.parametrize("service_listen", [None, "127.0.0.1:0"])
def test_run_refuses_tls_settings(pki: Pki, tmp_path: Path, service_listen: str | None) -> None:
    """`run` starts its own Envoy next to its service and reaches it in plaintext (a private Unix socket by default)."""
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"tls_cert": str(pki.server[0]), "tls_key": str(pki.server[1])}))
    command = [
        sys.executable,
        "-m",
        "buffered_stream",
        "run",
        "--settings",
        str(settings),
        "--admin-port",
        str(free_port()),
    ]
    if service_listen:
        command += ["--service-listen", service_listen]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SOURCE_ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert "tls_cert" in line and "run" in line


# --- settings and options -----------------------------------------------------------------------


def test_settings_file_tls_keys(tmp_path: Path, pki: Pki) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "listen": "0.0.0.0:50051",
                "tls_cert": str(pki.server[0]),
                "tls_key": str(pki.server[1]),
                "tls_client_ca": str(pki.ca_file),
            }
        )
    )
    settings = load_service_settings(str(path))
    assert settings.tls and TlsFiles.from_settings(settings) == TlsFiles(*map(str, (*pki.server, pki.ca_file)))
    # Command-line options override the file, key by key.
    assert load_service_settings(str(path), tls_cert="other.crt").tls_cert == "other.crt"
    assert not load_service_settings(None).tls and TlsFiles.from_settings(load_service_settings(None)) is None


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"tls_client_ca": "ca.crt"}, "tls_client_ca .* needs tls_cert and tls_key"),
        ({"tls_cert": "a.crt"}, "go together"),
        ({"tls_key": "a.key"}, "go together"),
        ({"tls_cert": 5, "tls_key": "a.key"}, "tls_cert must be the path of a PEM file"),
        ({"tls_cert": "", "tls_key": "a.key"}, "tls_cert must be the path of a PEM file"),
        ({"listen": "unix:/run/bs.sock", "tls_cert": "a.crt", "tls_key": "a.key"}, "TLS needs a TCP listen address"),
        ({"tls_certificate": "a.crt"}, "unknown key"),
    ],
)
def test_bad_tls_settings_name_the_problem(tmp_path: Path, values: dict[str, Any], says: str) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(SettingsError, match=says):
        load_service_settings(str(path))


def test_a_pool_passes_the_tls_options_on_to_its_workers() -> None:
    args = build_parser().parse_args(
        ["serve", "--workers", "2", "--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-client-ca", "ca.pem"]
    )
    assert _worker_flags(args) == ["--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-client-ca", "ca.pem"]
    run = build_parser().parse_args(["run"])
    assert _worker_flags(run) == []


def test_check_reports_the_leaf_serial(pki: Pki) -> None:
    material = load_tls_material(TlsFiles(str(pki.server[0]), str(pki.server[1]), str(pki.ca_file)))
    assert int(material.serial, 16) == pki.server_pair.serial
    assert material.client_ca == pki.ca.cert_pem
    with pytest.raises(TlsFileError):
        load_tls_material(TlsFiles(str(pki.server[0]), str(pki.client[1])))


# --- the Envoy side -----------------------------------------------------------------------------


def envoy_validate(envoy_binary: Path, cfg: dict[str, Any], path: Path) -> None:
    write_envoy_config(cfg, path)
    result = subprocess.run(
        [str(envoy_binary), "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"envoy rejected {path}:\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize(("server_name", "mutual"), [("buffered-stream.llm.svc", True), ("127.0.0.1", False)])
def test_tls_configs_pass_envoy_validation(
    envoy_binary: Path, pki: Pki, tmp_path: Path, server_name: str, mutual: bool
) -> None:
    cfg = build_envoy_config(
        backend_url="http://127.0.0.1:8000",
        ext_proc_target="127.0.0.1:50051",
        ext_proc_tls=pki.envoy_tls(server_name, mutual=mutual),
    )
    context = cluster(cfg, SERVICE_CLUSTER)["transport_socket"]["typed_config"]
    assert context.get("sni") == (None if server_name == "127.0.0.1" else server_name)
    (san,) = context["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"]
    assert san == {"san_type": "IP_ADDRESS" if server_name == "127.0.0.1" else "DNS", "matcher": {"exact": server_name}}
    assert ("tls_certificates" in context["common_tls_context"]) is mutual
    envoy_validate(envoy_binary, cfg, tmp_path / "envoy.json")


def test_tls_to_a_unix_socket_or_half_a_client_certificate_is_refused() -> None:
    with pytest.raises(ValueError, match="TCP endpoints"):
        build_envoy_config(
            backend_url="http://127.0.0.1:8000",
            ext_proc_target="unix:/tmp/bs.sock",
            ext_proc_tls=ServiceTls(trusted_ca="ca.crt", server_name="localhost"),
        )
    with pytest.raises(ValueError, match="go together"):
        ServiceTls(trusted_ca="ca.crt", server_name="localhost", client_cert="c.crt")


def test_shipped_envoy_yaml_shows_the_cluster_enable_service_tls_writes() -> None:
    lines = (REPO_ROOT / "filter" / "buffered_stream" / "envoy.yaml").read_text().splitlines()
    start = lines.index("      # --- service TLS (begin)")
    end = lines.index("      # --- service TLS (end)")
    shown = yaml.safe_load("\n".join(line.replace("# ", "", 1) for line in lines[start + 1 : end]))
    expected = service_tls_transport_socket(
        ServiceTls(
            trusted_ca="/etc/buffered-stream-tls/ca.crt",
            server_name="buffered-stream.llm.svc",
            client_cert="/etc/buffered-stream-tls/tls.crt",
            client_key="/etc/buffered-stream-tls/tls.key",
        )
    )
    assert shown == {"transport_socket": expected}
