"""A small certificate authority for the controller's mutual TLS (``sdnctl pki``).

Who a peer is comes from ONE place: a URI in its certificate's subject alternative name.

    sdnctl://controller                  the controller (plus DNS/IP SANs clients verify)
    sdnctl://agent/<host>                the agent of <host> (its host name is also a DNS SAN)
    sdnctl://user/<name>?role=<role>     a user of sdnctl; role: admin | operator | viewer

The common name is informative only; nothing reads it. A directory holds everything:

    ca.pem  ca.key                       the CA (the key is 0600; keep it offline if you can)
    controller.pem  controller.key       the controller's certificate, with its DNS/IP SANs
    agents/<host>.pem  .key              one per agent
    users/<name>.pem  .key               one per user
    crl.pem                              revoked serials, signed by the CA (the controller
                                         reloads it when it changes, and on SIGHUP)
    issued.json                          what was issued: serial, kind, name, role, expiry

Keys are ECDSA P-256. Certificates expire (``--days``); revocation is by serial or by name (every
certificate issued to that name).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sdnctl.api.fields import check_name
from sdnctl.api.model import NAME_RE, Invalid
from sdnctl.api.tlsfiles import CERT_DAYS, ROLES, PkiError, cert_path

log = logging.getLogger(__name__)

KINDS = ("controller", "agent", "user")
SCHEME = "sdnctl"
CA_DAYS = 3650
CRL_DAYS = 3650  # the CRL is rewritten on every revocation; its own expiry is not checked


@dataclass(frozen=True)
class Identity:
    """Who made a call. ``kind``: agent | user | controller | local (the unix socket: root)."""

    kind: str
    name: str
    role: str = ""
    serial: int = 0

    def __str__(self) -> str:
        if self.kind == "user":
            return f"user:{self.name}({self.role})"
        if self.kind == "local":
            return "local"  # the unix socket: root
        return f"{self.kind}:{self.name}" if self.name else self.kind


LOCAL = Identity("local", "root", "admin")


def identity_uri(kind: str, name: str = "", role: str = "") -> str:
    if kind == "controller":
        return f"{SCHEME}://controller"
    if kind == "agent":
        return f"{SCHEME}://agent/{name}"
    return f"{SCHEME}://user/{name}?role={role}"


def identity_of(cert: x509.Certificate) -> Identity | None:
    """The identity a certificate's ``sdnctl://`` URI SAN names, or None (no or bad URI)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)
            if u.startswith(f"{SCHEME}://")]
    if len(uris) != 1:
        return None  # none, or ambiguous: refuse rather than guess
    parts = urlsplit(uris[0])
    name = parts.path.removeprefix("/")
    if name and not NAME_RE.match(name):
        return None  # only names the API accepts (our CA issues no others)
    serial = cert.serial_number
    if parts.netloc == "controller" and not name:
        return Identity("controller", "", serial=serial)
    if parts.netloc == "agent" and name and "/" not in name:
        return Identity("agent", name, serial=serial)
    if parts.netloc == "user" and name and "/" not in name:
        roles = parse_qs(parts.query).get("role", [])
        if len(roles) == 1 and roles[0] in ROLES:
            return Identity("user", name, roles[0], serial=serial)
    return None


# -- files ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    serial: int
    kind: str
    name: str
    role: str
    not_after: str  # ISO 8601, UTC
    cert: str  # path relative to the PKI directory


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    except (OSError, ValueError) as e:
        raise PkiError(f"could not read the CA in {directory} (run `sdnctl pki init`)") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{directory}/ca.key is not an ECDSA key")
    return cert, key


def _index(directory: Path) -> list[Issued]:
    path = directory / "issued.json"
    if not path.exists():
        return []
    return [Issued(**entry) for entry in json.loads(path.read_text())]


def _save_index(directory: Path, entries: Iterable[Issued]) -> None:
    _write(directory / "issued.json",
           json.dumps([asdict(e) for e in entries], indent=2).encode(), 0o600)


def new_ca(common_name: str, not_before: datetime.datetime,
           not_after: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA (P-256) that signs certificates and CRLs, no intermediate below it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def init(directory: str | Path, controller_names: Iterable[str] = (),
         days: int = CA_DAYS, controller_days: int = CERT_DAYS) -> Path:
    """Create a CA, the controller's certificate and an empty CRL in ``directory``.

    The controller's certificate names ``localhost``, 127.0.0.1, ::1, this machine's host name
    and ``controller_names`` (DNS names or IP addresses clients dial). Refuses to overwrite a CA.
    """
    directory = Path(directory)
    if (directory / "ca.key").exists():
        raise PkiError(f"{directory} already holds a CA; remove it first to start over")
    now = _now()
    key, cert = new_ca("sdnctl CA", now - datetime.timedelta(minutes=5),
                       now + datetime.timedelta(days=days))
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write(directory / "ca.key", _key_pem(key), 0o600)
    _write(directory / "ca.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _save_index(directory, [])
    write_crl(directory)
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname(), *controller_names]
    issue(directory, "controller", "controller", days=controller_days, extra_names=names)
    return directory


def _alt_names(kind: str, name: str, role: str, extra: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity_uri(kind, name,
                                                                                 role))]
    seen: set[str] = set()
    for value in [name] if kind == "agent" else []:
        names.append(x509.DNSName(value))
        seen.add(value)
    for value in extra:
        if value in seen or not value:
            continue
        seen.add(value)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(value)))
        except ValueError:
            names.append(x509.DNSName(value))
    return names


def issue(directory: str | Path, kind: str, name: str, role: str = "", days: int = CERT_DAYS,
          extra_names: Iterable[str] = (),
          not_before: datetime.datetime | None = None) -> tuple[Path, Path]:
    """Issue a certificate for ``kind`` (controller | agent | user) ``name``; returns the paths
    of its certificate and key. ``not_before`` (tests): backdate it, e.g. to make one that has
    already expired."""
    directory = Path(directory)
    if kind not in KINDS:
        raise PkiError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "user" and role not in ROLES:
        raise PkiError(f"--role: expected one of {', '.join(ROLES)}, got {role!r}")
    if kind != "controller":
        try:
            check_name(name, f"--{kind}")
        except Invalid as e:
            raise PkiError(str(e)) from None
    if days < 1 and not_before is None:
        raise PkiError(f"--days: {days} is not a positive number of days")
    ca_cert, ca_key = _load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (_now() - datetime.timedelta(minutes=5))
    usage = ExtendedKeyUsageOID.SERVER_AUTH if kind == "controller" \
        else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                        f"{kind}:{name}")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(
                _alt_names(kind, name, role, extra_names)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_file, key_file = cert_path(directory, kind, name)
    _write(key_file, _key_pem(key), 0o600)
    _write(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    entries = _index(directory)
    entries.append(Issued(cert.serial_number, kind, name, role,
                          cert.not_valid_after_utc.isoformat(),
                          str(cert_file.relative_to(directory))))
    _save_index(directory, entries)
    return cert_file, key_file


def revoke(directory: str | Path, what: str) -> list[int]:
    """Revoke by serial (decimal or 0x hex) or by name (every certificate of that agent or
    user); rewrite the CRL. Returns the serials revoked now."""
    directory = Path(directory)
    entries = _index(directory)
    serial: int | None = None
    try:
        serial = int(what, 0)
    except ValueError:
        pass
    matches = [e.serial for e in entries
               if (serial is not None and e.serial == serial)
               or (e.name == what and e.kind != "controller")]
    if not matches:
        raise PkiError(f"no certificate issued here has serial or name {what!r}")
    revoked = set(revoked_serials(directory))
    new = [s for s in matches if s not in revoked]
    write_crl(directory, revoked | set(matches))
    return new


def revoked_serials(directory: str | Path) -> list[int]:
    path = Path(directory) / "crl.pem"
    if not path.exists():
        return []
    crl = x509.load_pem_x509_crl(path.read_bytes())
    return sorted(r.serial_number for r in crl)


def write_crl(directory: str | Path, serials: Iterable[int] = ()) -> Path:
    directory = Path(directory)
    ca_cert, ca_key = _load_ca(directory)
    now = _now()
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
               .last_update(now).next_update(now + datetime.timedelta(days=CRL_DAYS)))
    for serial in sorted(set(serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
    crl = builder.sign(ca_key, hashes.SHA256())
    path = directory / "crl.pem"
    tmp = directory / ".crl.pem.tmp"
    _write(tmp, crl.public_bytes(serialization.Encoding.PEM), 0o644)
    os.replace(tmp, path)  # the controller never reads half a CRL
    return path


def listing(directory: str | Path) -> list[dict[str, object]]:
    revoked = set(revoked_serials(directory))
    now = _now().isoformat()
    return [{**asdict(e), "revoked": e.serial in revoked, "expired": e.not_after < now}
            for e in _index(Path(directory))]


# -- the controller's view: a CRL it reloads ---------------------------------------------------


class RevocationList:
    """The serials a CRL revokes, reloaded when the file's mtime changes or on :meth:`reload`.

    The CRL must be signed by the CA; one that is not (or cannot be read) is refused at start and
    ignored on reload (the last good list stays, with an error logged): a truncated or forged
    file must not quietly un-revoke anybody. :attr:`pem` is that last good CRL, as the TLS
    terminator loads it; :meth:`on_change` callbacks run after each reload that changed it.
    """

    def __init__(self, path: str, ca_pem: bytes) -> None:
        self.path = path
        self._ca = x509.load_pem_x509_certificate(ca_pem)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None  # (inode, mtime): os.replace changes both
        self._serials: frozenset[int] = frozenset()
        self._pem = b""
        self._listeners: list[Callable[[], None]] = []
        self.reload(strict=True)

    def reload(self, strict: bool = False) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns)
            pem = Path(self.path).read_bytes()
            crl = x509.load_pem_x509_crl(pem)
            public_key = self._ca.public_key()
            if not isinstance(public_key, ec.EllipticCurvePublicKey) \
                    or crl.issuer != self._ca.subject or not crl.is_signature_valid(public_key):
                raise PkiError(f"{self.path} is not signed by the CA")
        except (OSError, ValueError, PkiError) as e:
            if strict:
                raise PkiError(f"could not load the revocation list {self.path}: {e}") from e
            log.error("keeping the previous revocation list: %s", e)
            return
        with self._lock:
            changed = pem != self._pem
            self._serials = frozenset(r.serial_number for r in crl)
            self._stamp = stamp
            self._pem = pem
            listeners = list(self._listeners)
        if changed:
            for listener in listeners:
                listener()

    def refresh(self) -> None:
        """Reload if the file changed (a new inode or mtime) since the last load."""
        try:
            st = os.stat(self.path)
        except OSError:
            return
        if (st.st_ino, st.st_mtime_ns) != self._stamp:
            self.reload()

    def revoked(self, serial: int) -> bool:
        self.refresh()
        with self._lock:
            return serial in self._serials

    @property
    def pem(self) -> bytes:
        """The last good CRL, PEM."""
        with self._lock:
            return self._pem

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (in the reloading thread) after every reload that changed the list."""
        with self._lock:
            self._listeners.append(callback)


def load_cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)
