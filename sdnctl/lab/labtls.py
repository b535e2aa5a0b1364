"""Certificates for the lab: a CA made for the occasion, a server certificate for its names and
addresses, and a client certificate, as PEM files. The lab's registry serves TLS with them
(``sdnctl.lab.registry``), and the tests' etcd members with client authentication. Not the
controller's PKI (``sdnctl.api.pki``: users, roles, revocation), though its CA is made the
same way (``pki.new_ca``): a lab's CA lives and dies with what it was made for.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sdnctl.api.pki import new_ca


def make_tls(directory: str, ips: tuple[str, ...], names: tuple[str, ...],
             days: int = 30) -> tuple[str, str, str]:
    """A CA and a server certificate for ``ips`` and ``names`` in ``directory``: the paths of
    (CA certificate, server certificate, server key). Beside them, ``client.pem`` and
    ``client-key.pem``: a client certificate of the same CA with an empty subject (etcd's JSON
    gateway refuses a client certificate that has a common name once auth is enabled)."""
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    end = now + datetime.timedelta(days=days)
    ca_key, ca = new_ca("sdnctl lab CA", now, end)
    ca_name = ca.subject
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    alt += [x509.DNSName(n) for n in names]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                        (names or ips)[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = (x509.CertificateBuilder().subject_name(x509.Name([]))
              .issuer_name(ca_name).public_key(client_key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now).not_valid_after(end)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                             critical=False)
              .add_extension(x509.SubjectAlternativeName([x509.DNSName("client")]),
                             critical=True)
              .sign(ca_key, hashes.SHA256()))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    files = (os.path.join(directory, "ca.pem"), os.path.join(directory, "server.pem"),
             os.path.join(directory, "server-key.pem"))
    pem = serialization.Encoding.PEM
    for path, data, mode in (
            (files[0], ca.public_bytes(pem), 0o644), (files[1], cert.public_bytes(pem), 0o644),
            (files[2], key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()), 0o600),
            (os.path.join(directory, "client.pem"), client.public_bytes(pem), 0o644),
            (os.path.join(directory, "client-key.pem"), client_key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), 0o600)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return files
