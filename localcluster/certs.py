"""The API server's TLS: a certificate authority made at start, and a serving certificate it
signs for the loopback address and the in-cluster names (``kubernetes.default.svc``).

Clients trust the CA through the kubeconfig's ``certificate-authority-data`` (and pods through
``ca.crt`` in their service account volume), as they do a real cluster's. kubectl and
client-go send a bearer token only over TLS, so authentication needs this first.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The names a real cluster's serving certificate carries for in-cluster clients.
IN_CLUSTER_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
VALID_FOR = dt.timedelta(days=365)
CA_USAGE = x509.KeyUsage(
    digital_signature=True, key_cert_sign=True, crl_sign=True,
    content_commitment=False, key_encipherment=False, data_encipherment=False,
    key_agreement=False, encipher_only=False, decipher_only=False,
)  # fmt: skip


@dataclass(frozen=True)
class ServingCerts:
    ca_pem: bytes  # what clients trust
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make(folder: Path, host: str) -> ServingCerts:
    """A fresh CA and a serving certificate for ``host`` under ``folder`` (keys mode 0600).

    P-256 keys: quick to make at every start, and spoken by Go, OpenSSL and Prometheus alike.
    Key identifiers included: strict verifiers (Python 3.13's default context) require them.
    """
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate small clock skew
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("localcluster-ca"))
        .issuer_name(_name("localcluster-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(CA_USAGE, critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    addresses = {ipaddress.ip_address("127.0.0.1")}
    with contextlib.suppress(ValueError):  # a host name: localhost is among the DNS names
        addresses.add(ipaddress.ip_address(host))
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in IN_CLUSTER_NAMES]
    sans += [x509.IPAddress(a) for a in sorted(addresses, key=str)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("kube-apiserver"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    cert_file, key_file = folder / "apiserver.crt", folder / "apiserver.key"
    key_file.touch(mode=0o600)
    os.chmod(key_file, 0o600)
    key_file.write_bytes(_pem(key))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca_pem)
    (folder / "ca.crt").write_bytes(ca_pem)
    return ServingCerts(ca_pem, cert_file, key_file)
