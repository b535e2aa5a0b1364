"""Where a PKI directory keeps each certificate, and the TLS files a connection is made with.

Design note. Every client of the controller (the CLI, agents) needs only file names and their
bytes, not the certificate authority: ``pki`` (which loads ``cryptography``, a tenth of a
second) is for issuing, revoking and checking certificates, so this light part lives apart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sdnctl.api.errors import CommandError

#: The environment's client TLS files: certificate, key, CA.
TLS_ENV = ("SDNCTL_TLS_CERT", "SDNCTL_TLS_KEY", "SDNCTL_TLS_CA")
#: What a user's certificate lets them do, and how long an issued certificate is valid by
#: default (here, not in ``pki``: the CLI's parser names them without loading cryptography).
ROLES = ("admin", "operator", "viewer")
CERT_DAYS = 365


class PkiError(RuntimeError):
    """A PKI operation failed in a way the user can act on."""


def cert_path(directory: str | Path, kind: str, name: str) -> tuple[Path, Path]:
    """Where ``kind``/``name``'s certificate and key live."""
    base = Path(directory)
    stem = base / "controller" if kind == "controller" else base / f"{kind}s" / name
    return stem.with_suffix(".pem"), stem.with_suffix(".key")


@dataclass(frozen=True)
class TlsFiles:
    """A certificate, its key and the CA that checks the other side's certificate."""

    cert: str
    key: str
    ca: str

    def read(self) -> tuple[bytes, bytes, bytes]:
        try:
            return (Path(self.cert).read_bytes(), Path(self.key).read_bytes(),
                    Path(self.ca).read_bytes())
        except OSError as e:
            raise PkiError(f"could not read TLS files: {e}") from e

    @classmethod
    def from_dir(cls, directory: str | Path, kind: str, name: str = "") -> TlsFiles:
        cert, key = cert_path(directory, kind, name)
        return cls(str(cert), str(key), str(Path(directory) / "ca.pem"))


def tls_from_env() -> TlsFiles | None:
    """The client TLS files the environment names, or None when it names none."""
    values = [os.environ.get(name, "") for name in TLS_ENV]
    if not any(values):
        return None
    if not all(values):
        raise CommandError(f"{', '.join(TLS_ENV)} go together (or --tls-cert, --tls-key, "
                           "--tls-ca)")
    return TlsFiles(*values)


def client_tls(address: str, tls: TlsFiles | None = None) -> TlsFiles | None:
    """The TLS files a client dials the controller at ``address`` with: none for a unix socket;
    for TCP ``tls``, else the environment's files, else CommandError (never plaintext)."""
    if address.startswith("unix:"):
        return None
    tls = tls or tls_from_env()
    if tls is None:
        raise CommandError(f"{address}: the controller's TCP listener needs a client "
                           "certificate (--tls-cert, --tls-key, --tls-ca or $SDNCTL_TLS_*)")
    return tls
