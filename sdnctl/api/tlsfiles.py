"""The TLS files a channel or a listener is made of, without the PKI that issues them.

Design note. ``sdnctl.api.pki`` issues and checks certificates with the ``cryptography``
package, whose import costs ~9 MB of memory and tens of ms in every process that loads it. An
agent and most CLI verbs only need to name and read three files, so that lives here, free of it
(issue 21: an agent is measured per MB); ``pki`` re-exports these names for its callers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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

