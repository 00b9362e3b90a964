"""A private CA and per-node certificates for mutual TLS, made with the ``cryptography`` library.

``make certs`` (or ``python -m services.security certs``) writes into the folder named by ``tls.dir``:
  ca.crt / ca.key              the federation's CA (keep ca.key off the nodes; only ca.crt is distributed)
  aggregator.crt / .key        server certificate; SANs: localhost, 127.0.0.1, ::1, "aggregator" and any --host
  <worker id>.crt / .key       one client certificate per worker in config.yaml, CN = the worker id
An existing CA is reused (new node certificates chain to it); --force makes a new one. Keys are ECDSA P-256 and
written readable by the owner only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
NODE_DAYS = 825
DEFAULT_SERVER_HOSTS = ("localhost", "127.0.0.1", "::1", "aggregator")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedad"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _san(hosts) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def make_ca(folder: Path, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(_name("fedad federation CA")).issuer_name(_name("fedad federation CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write_key(folder / "ca.key", key)
    _write_cert(folder / "ca.crt", cert)
    return cert, key


def make_node(folder: Path, node: str, ca_cert, ca_key, now: dt.datetime, server_hosts=None) -> Path:
    """``server_hosts`` given: a server certificate with those SANs; else a client certificate for ``node``."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_hosts else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder()
               .subject_name(_name(node)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=NODE_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    builder = builder.add_extension(_san(server_hosts or [node]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_key(folder / f"{node}.key", key)
    _write_cert(folder / f"{node}.crt", cert)
    return folder / f"{node}.crt"


def make_certs(folder: Path, workers: list[str], server_hosts=(), force: bool = False) -> list[Path]:
    """The CA (reused unless ``force``), the aggregator's server certificate and one client certificate per worker."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    if not force and (folder / "ca.crt").is_file() and (folder / "ca.key").is_file():
        ca_cert = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
        ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    else:
        ca_cert, ca_key = make_ca(folder, now)
    hosts = list(dict.fromkeys([*DEFAULT_SERVER_HOSTS, *server_hosts]))
    written = [folder / "ca.crt", make_node(folder, "aggregator", ca_cert, ca_key, now, server_hosts=hosts)]
    for worker in workers:
        written.append(make_node(folder, worker, ca_cert, ca_key, now))
    return written
