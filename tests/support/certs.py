"""Certificates made on the spot (the ``cryptography`` package) and the two ways files get rotated.

``CertificateAuthority("ca").issue("server", server_names=("localhost", "127.0.0.1"))`` gives a
``KeyPair`` (PEM bytes and the serial number); ``write_pair`` puts one in files, ``replace_files``
swaps files by atomic renames, and ``SecretVolume`` lays files out the way the kubelet mounts a
Secret (``tls.crt -> ..data/tls.crt``, ``..data -> ..<timestamp>``) and rotates them the way it
does (a new timestamped directory, then one rename of the ``..data`` symlink).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
from dataclasses import dataclass
from itertools import count
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID = datetime.timedelta(days=2)
_BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes
    serial: int


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class CertificateAuthority:
    """A self-signed CA that issues server and client certificates."""

    def __init__(self, common_name: str) -> None:
        self._key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALID)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, *, server_names: tuple[str, ...] = (), client: bool = False) -> KeyPair:
        """A leaf certificate: a server one for ``server_names`` (DNS names or IP addresses), or a client one."""
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALID)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server_names:
            sans = [x509.IPAddress(ipaddress.ip_address(n)) if _is_ip(n) else x509.DNSName(n) for n in server_names]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), serial)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def write_pair(directory: Path, stem: str, pair: KeyPair) -> tuple[Path, Path]:
    """``directory/stem.crt`` and ``directory/stem.key``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert.write_bytes(pair.cert_pem)
    key.write_bytes(pair.key_pem)
    return cert, key


def replace_files(contents: dict[Path, bytes]) -> None:
    """Each file replaced by an atomic rename, one after the other (as `mv new old` would)."""
    for path, data in contents.items():
        staged = path.with_name(f".{path.name}.new")
        staged.write_bytes(data)
        os.replace(staged, path)


class SecretVolume:
    """A directory laid out and updated like the kubelet's Secret volume (its AtomicWriter)."""

    _generation = count()

    def __init__(self, directory: Path, files: dict[str, bytes]) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._current = self._write_generation(files)
        os.symlink(self._current, directory / "..data")
        for name in files:
            os.symlink(f"..data/{name}", directory / name)

    def path(self, name: str) -> Path:
        return self.directory / name

    def swap(self, files: dict[str, bytes]) -> None:
        """New files in a new timestamped directory, ``..data`` re-pointed in one rename, old directory removed."""
        previous = self._current
        self._current = self._write_generation(files)
        staged = self.directory / "..data_tmp"
        os.symlink(self._current, staged)
        os.rename(staged, self.directory / "..data")
        shutil.rmtree(self.directory / previous)

    def _write_generation(self, files: dict[str, bytes]) -> str:
        name = f"..2026_01_01_00_00_00.{next(self._generation)}"
        target = self.directory / name
        target.mkdir()
        for file_name, data in files.items():
            (target / file_name).write_bytes(data)
        return name


def served_certificate_serial(
    port: int, *, ca: Path, client: tuple[Path, Path] | None = None, host: str = "127.0.0.1"
) -> int:
    """The serial number of the certificate a TLS server on ``port`` presents to a new connection."""
    import socket

    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    context.set_alpn_protocols(["h2"])
    if client is not None:
        context.load_cert_chain(str(client[0]), str(client[1]))
    with socket.create_connection((host, port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number
