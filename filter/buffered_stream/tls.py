"""TLS on the gRPC listener: the PEM files, checked before the service starts, reloaded when they change.

``serve --tls-cert FILE --tls-key FILE [--tls-client-ca FILE]`` (or ``tls_cert``, ``tls_key``,
``tls_client_ca`` in the settings file). With a client CA every client must present a certificate
it signed (mutual TLS); the gRPC health service on the same port is behind the same check.

Start: ``load_tls_material`` reads the files and checks them with the standard ``ssl`` module (no
gRPC import: the pool supervisor checks them too, before it starts any worker) so that a bad file
stops the process with one line that names it: unreadable or missing, not PEM, a PEM block that
does not parse, an encrypted key, or a key that does not belong to the certificate.

Reload: ``CertificateReloader`` is the fetcher of ``grpc.dynamic_ssl_server_credentials``. gRPC's
core calls it before the handshake of every new connection (on one of its own threads); it
compares the files' identity (``os.stat`` through the symlinks: device, inode, size, mtime, ctime,
and the resolved path) with the set it serves and, when they changed, loads and checks the new
set and hands it to gRPC. New connections then present the new certificate; connections already
up keep theirs, so streams in flight are never cut. Both ways secrets are rotated work:

- a file replaced by an atomic rename, or rewritten in place: new inode, or new mtime/size;
- Kubernetes Secret volumes: ``tls.crt -> ..data/tls.crt``, and the kubelet swaps the ``..data``
  symlink to a new timestamped directory in one rename; ``os.stat`` follows the links, so every
  file's identity changes at once. (A ``subPath`` mount is never updated by the kubelet: mount
  the whole Secret.)

A set caught half-way (the new certificate beside the old key) fails its check and is not used:
gRPC keeps serving the previous set, a warning is logged once per distinct state, and the next
connection tries again. Each worker of a ``--workers`` pool is its own process with its own
reloader on the shared (SO_REUSEPORT) port; each picks the new files up at its next connection.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import threading
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

_CERTIFICATE_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)
_KEY_BLOCK = re.compile(rb"-----BEGIN (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----")
_ATTEMPTS = 3  # reads of a set that keeps changing under us (a rotation in progress)


class TlsFileError(ValueError):
    """A TLS file that cannot be used; the message names the file and is meant for the operator."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the listener's certificate, key and (for mutual TLS) client CA are."""

    cert: str
    key: str
    client_ca: str | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> TlsFiles | None:
        """The files a ``ServiceSettings`` names, or None without TLS."""
        if settings.tls_cert is None:
            return None
        return cls(settings.tls_cert, settings.tls_key, settings.tls_client_ca)

    def roles(self) -> list[tuple[str, str]]:
        """(what, path) for every file, as error messages name them."""
        found = [("TLS certificate", self.cert), ("TLS key", self.key)]
        if self.client_ca is not None:
            found.append(("TLS client CA", self.client_ca))
        return found


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """One consistent, checked set of PEM bytes, and the identity of the files it came from."""

    cert_chain: bytes
    key: bytes
    client_ca: bytes | None
    signature: tuple
    serial: str = ""
    not_after: str = ""


def file_signature(files: TlsFiles) -> tuple:
    """The identity of every file, through symlinks: it changes whenever any file is replaced."""
    parts = []
    for role, path in files.roles():
        try:
            st = os.stat(path)
        except OSError as exc:
            raise TlsFileError(f"cannot read {role} file {path}: {exc.strerror}") from None
        parts.append((os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(parts)


def load_tls_material(files: TlsFiles) -> TlsMaterial:
    """Read and check the files; ``TlsFileError`` names the first bad one."""
    for _ in range(_ATTEMPTS):
        before = file_signature(files)
        cert = _read("TLS certificate", files.cert)
        key = _read("TLS key", files.key)
        client_ca = _read("TLS client CA", files.client_ca) if files.client_ca is not None else None
        try:
            _check(files, cert, key, client_ca)
        except TlsFileError:
            if file_signature(files) != before:  # replaced while being checked: read the new set
                continue
            raise
        if file_signature(files) == before:  # what was checked by path is what was read
            serial, not_after = _describe(files.cert)
            return TlsMaterial(cert, key, client_ca, before, serial, not_after)
    raise TlsFileError(f"TLS files {files.cert}, {files.key} kept changing while they were read")


def check_tls_files(settings: Any) -> TlsMaterial | None:
    """At start: the settings' TLS files checked (``TlsFileError`` on the first bad one), or None."""
    files = TlsFiles.from_settings(settings)
    return None if files is None else load_tls_material(files)


def _read(role: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise TlsFileError(f"cannot read {role} file {path}: {exc.strerror}") from None


class _Encrypted(Exception):
    pass


def _no_password() -> bytes:
    raise _Encrypted


def _check(files: TlsFiles, cert: bytes, key: bytes, client_ca: bytes | None) -> None:
    _check_certificates("TLS certificate", files.cert, cert)
    if not _KEY_BLOCK.search(key):
        raise TlsFileError(
            f"TLS key file {files.key} is not a PEM private key (no '-----BEGIN PRIVATE KEY-----' block)"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(files.cert, files.key, password=_no_password)
    except _Encrypted:
        raise TlsFileError(f"TLS key file {files.key} is encrypted: give the key without a passphrase") from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise TlsFileError(f"TLS key file {files.key} does not match the certificate in {files.cert}") from None
        raise TlsFileError(f"TLS key file {files.key} does not hold a usable private key ({_reason(exc)})") from None
    except OSError as exc:  # replaced between the read and this check: the caller's signature sees it
        raise TlsFileError(f"cannot read TLS key file {files.key}: {exc.strerror}") from None
    if client_ca is not None:
        _check_certificates("TLS client CA", files.client_ca, client_ca)


def _check_certificates(role: str, path: str, data: bytes) -> None:
    blocks = _CERTIFICATE_BLOCK.findall(data)  # text around the blocks (OpenSSL's "Bag Attributes") is ignored
    if not blocks:
        raise TlsFileError(f"{role} file {path} is not PEM (no '-----BEGIN CERTIFICATE-----' block)")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=b"\n".join(blocks).decode("ascii"))
    except UnicodeDecodeError:
        raise TlsFileError(
            f"{role} file {path} holds a certificate that does not parse (bytes that are not ASCII)"
        ) from None
    except ssl.SSLError as exc:
        raise TlsFileError(f"{role} file {path} holds a certificate that does not parse ({_reason(exc)})") from None


def _reason(exc: ssl.SSLError) -> str:
    return exc.reason or str(exc)


def _describe(cert_path: str) -> tuple[str, str]:
    """The leaf certificate's serial number and expiry, for the logs (best effort)."""
    try:
        decoded = ssl._ssl._test_decode_cert(cert_path)  # the ssl module's own PEM reader
    except Exception:  # noqa: BLE001 - only the log line loses its details
        return "", ""
    return decoded.get("serialNumber", ""), decoded.get("notAfter", "")


# --- gRPC --------------------------------------------------------------------------------------


def _configuration(material: TlsMaterial) -> Any:
    import grpc

    return grpc.ssl_server_certificate_configuration([(material.key, material.cert_chain)], material.client_ca)


class CertificateReloader:
    """The certificate fetcher gRPC calls before each new connection's handshake (see the module)."""

    def __init__(self, files: TlsFiles, material: TlsMaterial) -> None:
        self.files = files
        self.reloads = 0
        self._served = material.signature
        self._refused: object = None  # the state last found unusable: warned about once
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        try:
            return self._fetch()
        except Exception:  # noqa: BLE001 - never let a reload failure fail the handshake
            log.exception("TLS certificate reload failed: keeping the certificate in use")
            return None

    def _fetch(self) -> Any:
        with self._lock:
            try:
                current: object = file_signature(self.files)
            except TlsFileError as exc:
                self._refuse(str(exc), exc)
                return None
            if current == self._served or current == self._refused:
                return None
            try:
                material = load_tls_material(self.files)
            except TlsFileError as exc:
                self._refuse(current, exc)
                return None
            self._served = material.signature
            self._refused = None
            self.reloads += 1
        log.info(
            "TLS certificate reloaded from %s: serial %s, valid until %s",
            self.files.cert,
            material.serial,
            material.not_after,
        )
        return _configuration(material)

    def _refuse(self, state: object, exc: TlsFileError) -> None:
        if state != self._refused:
            self._refused = state
            log.warning(
                "TLS files changed but cannot be used yet, new connections keep the previous certificate: %s", exc
            )


def server_credentials(files: TlsFiles, material: TlsMaterial) -> tuple[Any, CertificateReloader]:
    """gRPC server credentials serving ``material`` first, then whatever the files become."""
    import grpc

    reloader = CertificateReloader(files, material)
    credentials = grpc.dynamic_ssl_server_credentials(
        _configuration(material), reloader, require_client_authentication=files.client_ca is not None
    )
    return credentials, reloader
