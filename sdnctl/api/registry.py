"""An OCI distribution (registry v2 API) client: manifests, blobs, uploads, auth, TLS.

Design note. Standard library only (``http.client``, ``ssl``, ``json``, ``hashlib``, ``zlib``):
the CLI, the controller and the agents all speak to registries, and none of them should pull in
an HTTP stack for it. One request per connection (no pooling): a pull is a handful of requests
whose cost is their bodies, and a fresh connection never carries a half-read body of an earlier
request. Every connection is made by a *dialer* (``host, port, timeout -> socket``), so a process
in the root namespace can reach a registry that lives in a lab namespace by creating its socket
in that namespace (:func:`netns_dialer`) without any route being added.

Trust. Nothing read from a registry is believed before its digest is checked: a manifest fetched
by digest must hash to it (by tag: to the ``Docker-Content-Digest`` the registry announces, when
it announces one); a blob must hash to its descriptor's digest, checked while it streams, and
the caller keeps nothing until the last byte matched (:func:`Client.fetch_blob` removes its file
on a mismatch). Plain HTTP is refused unless the endpoint is marked insecure, and insecure is
refused unless the registry's host is a loopback name or address.

Manifests: Docker v2 schema 2, OCI image manifest, and the two list types (Docker manifest list,
OCI index), from which the ``linux/<this machine's architecture>`` entry is taken. Layers may be
gzip-compressed or plain tars; an image's identity is its config digest and its layers' diff IDs
(uncompressed digests), as in a ``docker save`` archive.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import http.client
import ipaddress
import json
import os
import re
import socket
import ssl
import threading
import urllib.parse
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
LIST_TYPES = (DOCKER_LIST, OCI_INDEX)
GZIP_LAYERS = (DOCKER_LAYER_GZIP, OCI_LAYER_GZIP)
PLAIN_LAYERS = (DOCKER_LAYER, OCI_LAYER)
ACCEPT = ", ".join((*MANIFEST_TYPES, *LIST_TYPES))

DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
MANIFEST_MAX = 4 << 20  # manifests and configs are small: refuse to read more
CHUNK = 1 << 20
UPLOAD_CHUNK = 8 << 20  # PATCH size of a chunked upload
MONOLITHIC_MAX = 1 << 20  # blobs up to this size are uploaded in one PUT
TIMEOUT = 60.0
_MACHINE_TO_GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}

Dialer = Callable[[str, int, float], socket.socket]


class RegistryError(Exception):
    """A registry refused, or sent what we refuse; the message names the registry and object."""


class DigestMismatch(RegistryError):
    pass


# -- references --------------------------------------------------------------------------------

_REF_RE = re.compile(
    r"(?P<registry>[A-Za-z0-9.-]+(?::[0-9]+)?|\[[0-9A-Fa-f:]+\](?::[0-9]+)?)/"
    r"(?P<repo>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?"
)


@dataclass(frozen=True)
class Reference:
    registry: str  # host[:port]
    repository: str
    tag: str = ""
    digest: str = ""

    @property
    def ref(self) -> str:
        """What the manifest is fetched by: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def name(self) -> str:
        """``registry/repo:tag`` (the tag an image recorded from it is known by)."""
        return f"{self.registry}/{self.repository}:{self.tag or 'latest'}"

    def pinned(self, digest: str) -> str:
        return f"{self.registry}/{self.repository}@{digest}"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def names_registry(ref: str) -> bool:
    """True when ``ref``'s first component is a registry host (has a ``.`` or ``:``, or is
    ``localhost``), as Docker decides it."""
    first, sep, _ = ref.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def parse_reference(ref: str) -> Reference:
    """``host[:port]/repo[:tag][@sha256:...]``; ValueError naming the reference otherwise."""
    match = _REF_RE.fullmatch(ref)
    if match is None or len(ref) > 255 or not names_registry(ref):
        raise ValueError(f"invalid registry reference {ref!r}: expected "
                         "HOST[:PORT]/REPOSITORY[:TAG][@sha256:DIGEST]")
    tag = match["tag"] or ("" if match["digest"] else "latest")
    return Reference(match["registry"], match["repo"], tag, match["digest"] or "")


def split_hostport(registry: str) -> tuple[str, int]:
    if registry.startswith("["):
        host, _, port = registry[1:].partition("]")
        return host, int(port.lstrip(":") or 443)
    host, _, port = registry.partition(":")
    return host, int(port or 443)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- endpoints and connections -----------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    """How to reach one registry. ``address`` (host:port) is dialled instead of the registry's
    own name when set; ``netns`` makes the connections from inside that network namespace.
    ``ca_pem`` (PEM text) or ``ca_file`` add trust anchors; ``insecure`` is plain HTTP, allowed
    for a loopback registry only."""

    registry: str
    ca_file: str = ""
    ca_pem: str = ""
    username: str = ""
    password: str = ""
    insecure: bool = False
    address: str = ""
    netns: str = ""

    def check(self) -> None:
        host, _ = split_hostport(self.registry)
        if self.insecure and not is_loopback(host):
            raise RegistryError(f"registry {self.registry}: --insecure (plain HTTP) is only for a "
                                "loopback registry (localhost, 127.0.0.0/8, ::1)")


def plain_dialer(host: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def netns_dialer(netns_path: str) -> Dialer:
    """A dialer whose sockets are created inside the network namespace at ``netns_path``: by a
    short-lived thread that enters it (a socket keeps the namespace it was made in), so no thread
    of the caller ever changes namespace. (The agent's kernel package has the general helper; the
    shared vocabulary imports nothing of the agent, hence this small one.)"""

    def dial(host: str, port: int, timeout: float) -> socket.socket:
        result: list[socket.socket] = []
        failure: list[BaseException] = []

        def run() -> None:
            try:
                fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if _libc.setns(fd, _CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns {netns_path}: {os.strerror(err)}")
                finally:
                    os.close(fd)
                result.append(socket.create_connection((host, port), timeout=timeout))
            except BaseException as e:  # handed to the caller below
                failure.append(e)

        thread = threading.Thread(target=run, name="registry-dial", daemon=True)
        thread.start()
        thread.join()
        if failure:
            raise failure[0]
        return result[0]

    return dial


class _Connection(http.client.HTTPSConnection):
    """HTTP(S) over a socket from our dialer; TLS checked against the registry's name."""

    def __init__(self, host: str, port: int, dial_host: str, dial_port: int, dialer: Dialer,
                 context: ssl.SSLContext | None, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout,
                         context=context or ssl.create_default_context())
        self._tls = context is not None
        self._dial = (dial_host, dial_port)
        self._dialer = dialer

    def connect(self) -> None:
        sock = self._dialer(self._dial[0], self._dial[1], self.timeout or TIMEOUT)
        if self._tls:
            sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]
        self.sock = sock


@dataclass
class _Response:
    status: int
    headers: dict[str, str]
    body: http.client.HTTPResponse
    conn: _Connection

    def read_all(self, limit: int = MANIFEST_MAX) -> bytes:
        try:
            data = self.body.read(limit + 1)
        finally:
            self.close()
        if len(data) > limit:
            raise RegistryError(f"response larger than {limit} bytes")
        return data

    def close(self) -> None:
        self.conn.close()


# -- what a pull resolves to -------------------------------------------------------------------

@dataclass(frozen=True)
class Layer:
    digest: str  # of the blob as the registry holds it (compressed or not)
    media_type: str
    size: int
    diff_id: str = ""  # of the uncompressed tar (from the config)


@dataclass(frozen=True)
class Resolved:
    """An image as a registry holds it: its manifest's digest, its config, its layers."""

    reference: Reference
    manifest_digest: str
    config: bytes
    layers: tuple[Layer, ...]

    @property
    def image_id(self) -> str:
        return "sha256:" + hashlib.sha256(self.config).hexdigest()


def host_architecture() -> str:
    machine = os.uname().machine
    return _MACHINE_TO_GOARCH.get(machine, machine)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _check_digest(digest: Any, what: str) -> str:
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise RegistryError(f"{what}: {digest!r} is not a sha256 digest")
    return digest


# -- the client --------------------------------------------------------------------------------

class Client:
    """One registry. Thread-safe: the only shared state is the bearer tokens, by scope."""

    def __init__(self, endpoint: Endpoint, timeout: float = TIMEOUT) -> None:
        endpoint.check()
        self.endpoint = endpoint
        self.timeout = timeout
        self.host, self.port = split_hostport(endpoint.registry)
        if endpoint.insecure and ":" not in endpoint.registry:
            self.port = 80
        dial = endpoint.address or endpoint.registry
        self.dial_host, self.dial_port = split_hostport(dial)
        if endpoint.address and ":" not in endpoint.address.lstrip("["):
            self.dial_port = self.port
        self.dialer = netns_dialer(endpoint.netns) if endpoint.netns else plain_dialer
        self.context: ssl.SSLContext | None = None
        if not endpoint.insecure:
            self.context = ssl.create_default_context(cafile=endpoint.ca_file or None,
                                                      cadata=endpoint.ca_pem or None)
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()

    # -- requests ----------------------------------------------------------------------------

    def _send(self, method: str, url: str, headers: dict[str, str],
              body: bytes | IO[bytes] | None) -> _Response:
        parsed = urllib.parse.urlsplit(url)
        path = parsed.path + (f"?{parsed.query}" if parsed.query else "")
        conn = _Connection(self.host, self.port, self.dial_host, self.dial_port, self.dialer,
                           self.context, self.timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise RegistryError(f"registry {self.endpoint.registry}: {method} {parsed.path}: "
                                f"{e}") from e
        return _Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp, conn)

    def request(self, method: str, path: str, scope: str, headers: dict[str, str] | None = None,
                body: bytes | None = None, ok: Iterable[int] = (200,),
                stream: IO[bytes] | None = None) -> _Response:
        """``path`` (or an absolute URL of this registry) with authentication as the registry
        asks for it: Basic with our credentials, or a bearer token for ``scope``."""
        headers = {"Host": self.endpoint.registry, **(headers or {})}
        for attempt in range(2):
            auth = self._authorization(scope)
            if auth:
                headers["Authorization"] = auth
            if stream is not None:
                stream.seek(0)
            resp = self._send(method, path, headers, stream if stream is not None else body)
            if resp.status == 401 and attempt == 0:
                challenge = resp.headers.get("www-authenticate", "")
                resp.read_all()
                self._answer_challenge(challenge, scope)
                continue
            if resp.status in ok:
                return resp
            detail = resp.read_all().decode(errors="replace")[:300].strip()
            raise RegistryError(f"registry {self.endpoint.registry}: {method} "
                                f"{urllib.parse.urlsplit(path).path}: HTTP {resp.status} {detail}")
        raise RegistryError(f"registry {self.endpoint.registry}: {method} {path}: "
                            "authentication refused (HTTP 401)")

    def _authorization(self, scope: str) -> str:
        with self._lock:
            token = self._tokens.get(scope) or self._tokens.get("*")
        return token or ""

    def _basic(self) -> str:
        pair = f"{self.endpoint.username}:{self.endpoint.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    def _answer_challenge(self, challenge: str, scope: str) -> None:
        kind, _, params = challenge.partition(" ")
        if kind.lower() == "basic":
            if not self.endpoint.username:
                raise RegistryError(f"registry {self.endpoint.registry} asks for credentials "
                                    "and none are configured")
            with self._lock:
                self._tokens["*"] = self._basic()
            return
        if kind.lower() != "bearer":
            raise RegistryError(f"registry {self.endpoint.registry}: unsupported "
                                f"authentication {challenge!r}")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        realm = fields.get("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise RegistryError(f"registry {self.endpoint.registry}: bearer realm {realm!r}")
        query = {"service": fields.get("service", ""), "scope": fields.get("scope", scope)}
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(
            {k: v for k, v in query.items() if v})
        with self._lock:
            self._tokens[scope] = ""
        headers = {"Authorization": self._basic()} if self.endpoint.username else {}
        resp = self._send_absolute("GET", url, headers)
        data = resp.read_all()
        if resp.status != 200:
            raise RegistryError(f"registry {self.endpoint.registry}: token service {realm} "
                                f"answered HTTP {resp.status}")
        try:
            doc = json.loads(data)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"registry {self.endpoint.registry}: token service {realm} "
                                "sent no token")
        with self._lock:
            self._tokens[scope] = f"Bearer {token}"

    def _send_absolute(self, method: str, url: str, headers: dict[str, str]) -> _Response:
        """A request to a URL that may be on another host (a token service, a redirect)."""
        parsed = urllib.parse.urlsplit(url)
        here = f"{self.host}:{self.port}"
        if parsed.netloc in (self.endpoint.registry, here):
            return self._send(method, url, {"Host": self.endpoint.registry, **headers}, None)
        if parsed.scheme != "https" and not is_loopback(parsed.hostname or ""):
            raise RegistryError(f"registry {self.endpoint.registry}: refusing plain HTTP to "
                                f"{parsed.netloc}")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        host = parsed.hostname or ""
        context = self.context if parsed.scheme == "https" else None
        if parsed.scheme == "https" and context is None:
            context = ssl.create_default_context()
        conn = _Connection(host, port, host, port, plain_dialer, context, self.timeout)
        try:
            conn.request(method, parsed.path + (f"?{parsed.query}" if parsed.query else ""),
                         headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise RegistryError(f"{method} {url}: {e}") from e
        return _Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp, conn)

    # -- manifests ---------------------------------------------------------------------------

    def get_manifest(self, repository: str, ref: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest by tag or digest, its digest checked."""
        scope = f"repository:{repository}:pull"
        resp = self.request("GET", f"/v2/{repository}/manifests/{ref}", scope,
                            {"Accept": ACCEPT})
        media_type = resp.headers.get("content-type", "").split(";")[0].strip()
        announced = resp.headers.get("docker-content-digest", "")
        data = resp.read_all()
        digest = _sha256(data)
        expected = ref if DIGEST_RE.fullmatch(ref) else announced
        if expected and digest != expected:
            raise DigestMismatch(f"registry {self.endpoint.registry}: manifest "
                                 f"{repository}:{ref} hashes to {digest}, not {expected}")
        try:
            doc = json.loads(data)
        except ValueError as e:
            raise RegistryError(f"manifest {repository}:{ref} is not JSON") from e
        media_type = doc.get("mediaType") or media_type if isinstance(doc, dict) else media_type
        return data, media_type, digest

    def resolve(self, reference: Reference) -> Resolved:
        """The image a reference names, for this machine's platform: manifest (through a list
        or index), config (digest checked) and layer descriptors with their diff IDs."""
        data, media_type, digest = self.get_manifest(reference.repository, reference.ref)
        doc = json.loads(data)
        if media_type in LIST_TYPES or "manifests" in doc:
            chosen = _choose_platform(doc, f"{reference}")
            data, media_type, digest = self.get_manifest(reference.repository, chosen)
            doc = json.loads(data)
        if media_type not in MANIFEST_TYPES and not ("config" in doc and "layers" in doc):
            raise RegistryError(f"{reference}: unsupported manifest type {media_type!r}")
        config_desc = doc.get("config") or {}
        config_digest = _check_digest(config_desc.get("digest"), f"{reference}: config")
        config = self.read_blob(reference.repository, config_digest, MANIFEST_MAX)
        try:
            diff_ids = json.loads(config)["rootfs"]["diff_ids"]
        except (ValueError, KeyError, TypeError) as e:
            raise RegistryError(f"{reference}: the image config has no rootfs.diff_ids") from e
        descs = doc.get("layers") or []
        if not isinstance(descs, list) or len(descs) != len(diff_ids):
            raise RegistryError(f"{reference}: {len(descs)} layer(s) in the manifest, "
                                f"{len(diff_ids)} diff ID(s) in the config")
        layers = []
        for i, (desc, diff_id) in enumerate(zip(descs, diff_ids, strict=True)):
            kind = desc.get("mediaType", "")
            if kind not in GZIP_LAYERS + PLAIN_LAYERS:
                raise RegistryError(f"{reference}: layer {i} has unsupported type {kind!r}")
            layers.append(Layer(_check_digest(desc.get("digest"), f"{reference}: layer {i}"),
                                kind, int(desc.get("size") or 0),
                                _check_digest(diff_id, f"{reference}: diff ID {i}")))
        return Resolved(reference, digest, config, tuple(layers))

    def put_manifest(self, repository: str, tag: str, data: bytes, media_type: str) -> str:
        scope = f"repository:{repository}:pull,push"
        resp = self.request("PUT", f"/v2/{repository}/manifests/{tag}", scope,
                            {"Content-Type": media_type}, body=data, ok=(201, 200))
        resp.read_all()
        digest = _sha256(data)
        announced = resp.headers.get("docker-content-digest", digest)
        if announced != digest:
            raise DigestMismatch(f"registry {self.endpoint.registry} recorded manifest "
                                 f"{repository}:{tag} as {announced}, we sent {digest}")
        return digest

    # -- blobs -------------------------------------------------------------------------------

    def blob_chunks(self, repository: str, digest: str) -> Iterator[bytes]:
        """The blob's bytes as they arrive; DigestMismatch after the last one if they do not
        hash to ``digest`` (so a caller keeps nothing before the loop has ended)."""
        _check_digest(digest, "blob")
        scope = f"repository:{repository}:pull"
        resp = self.request("GET", f"/v2/{repository}/blobs/{digest}", scope,
                            ok=(200, 307, 302, 303))
        if resp.status != 200:
            location = resp.headers.get("location", "")
            resp.read_all()
            resp = self._send_absolute("GET", urllib.parse.urljoin(
                f"https://{self.endpoint.registry}/v2/{repository}/blobs/{digest}", location), {})
            if resp.status != 200:
                resp.read_all()
                raise RegistryError(f"blob {digest}: redirect answered HTTP {resp.status}")
        sha = hashlib.sha256()
        try:
            while chunk := resp.body.read(CHUNK):
                sha.update(chunk)
                yield chunk
        except (OSError, http.client.HTTPException) as e:
            raise RegistryError(f"registry {self.endpoint.registry}: blob {digest}: {e}") from e
        finally:
            resp.close()
        if "sha256:" + sha.hexdigest() != digest:
            raise DigestMismatch(f"registry {self.endpoint.registry}: blob {digest} of "
                                 f"{repository} hashes to sha256:{sha.hexdigest()}")

    def read_blob(self, repository: str, digest: str, limit: int) -> bytes:
        data = bytearray()
        for chunk in self.blob_chunks(repository, digest):
            data += chunk
            if len(data) > limit:
                raise RegistryError(f"blob {digest} is larger than {limit} bytes")
        return bytes(data)

    def fetch_blob(self, repository: str, digest: str, path: str) -> None:
        """Write the blob to ``path``, whole and checked, or leave no file."""
        tmp = f"{path}.part{os.getpid()}-{threading.get_ident()}"
        try:
            with open(tmp, "wb") as f:
                for chunk in self.blob_chunks(repository, digest):
                    f.write(chunk)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def has_blob(self, repository: str, digest: str) -> bool:
        scope = f"repository:{repository}:pull,push"
        resp = self.request("HEAD", f"/v2/{repository}/blobs/{digest}", scope, ok=(200, 404))
        status = resp.status
        resp.close()
        return status == 200

    def push_blob(self, repository: str, path: str, digest: str) -> bool:
        """Upload the file at ``path`` as blob ``digest`` unless the registry has it: in one PUT
        when small, else in chunks (POST, PATCH…, PUT). False when it was there already."""
        _check_digest(digest, "blob")
        if self.has_blob(repository, digest):
            return False
        scope = f"repository:{repository}:pull,push"
        size = os.path.getsize(path)
        resp = self.request("POST", f"/v2/{repository}/blobs/uploads/", scope, ok=(202,))
        resp.read_all()
        location = self._location(resp, repository)
        with open(path, "rb") as f:
            if size <= MONOLITHIC_MAX:
                body = f.read()
                resp = self.request("PUT", _with_query(location, digest=digest), scope,
                                    {"Content-Type": "application/octet-stream",
                                     "Content-Length": str(len(body))}, body=body, ok=(201,))
                resp.read_all()
            else:
                offset = 0
                while chunk := f.read(UPLOAD_CHUNK):
                    end = offset + len(chunk) - 1
                    resp = self.request("PATCH", location, scope,
                                        {"Content-Type": "application/octet-stream",
                                         "Content-Range": f"{offset}-{end}",
                                         "Content-Length": str(len(chunk))},
                                        body=chunk, ok=(202,))
                    resp.read_all()
                    location = self._location(resp, repository)
                    offset = end + 1
                resp = self.request("PUT", _with_query(location, digest=digest), scope,
                                    {"Content-Length": "0"}, body=b"", ok=(201,))
                resp.read_all()
        announced = resp.headers.get("docker-content-digest", digest)
        if announced != digest:
            raise DigestMismatch(f"registry {self.endpoint.registry} stored blob {digest} as "
                                 f"{announced}")
        return True

    def push_bytes(self, repository: str, data: bytes) -> str:
        digest = _sha256(data)
        if self.has_blob(repository, digest):
            return digest
        scope = f"repository:{repository}:pull,push"
        resp = self.request("POST", f"/v2/{repository}/blobs/uploads/", scope, ok=(202,))
        resp.read_all()
        location = self._location(resp, repository)
        resp = self.request("PUT", _with_query(location, digest=digest), scope,
                            {"Content-Type": "application/octet-stream",
                             "Content-Length": str(len(data))}, body=data, ok=(201,))
        resp.read_all()
        return digest

    def _location(self, resp: _Response, repository: str) -> str:
        location = resp.headers.get("location", "")
        if not location:
            raise RegistryError(f"registry {self.endpoint.registry}: upload to {repository} "
                                "gave no Location")
        parsed = urllib.parse.urlsplit(location)
        if parsed.netloc and parsed.netloc not in (self.endpoint.registry,
                                                   f"{self.host}:{self.port}"):
            raise RegistryError(f"registry {self.endpoint.registry}: upload moved to another "
                                f"host {parsed.netloc!r}")
        return parsed.path + (f"?{parsed.query}" if parsed.query else "")


def _with_query(location: str, **params: str) -> str:
    return location + ("&" if "?" in location else "?") + urllib.parse.urlencode(params)


def _choose_platform(index: Any, where: str) -> str:
    """The digest of the ``linux/<arch>`` manifest of a list or index."""
    arch = host_architecture()
    for desc in index.get("manifests") or []:
        platform = desc.get("platform") or {}
        if platform.get("os") == "linux" and platform.get("architecture") == arch:
            return _check_digest(desc.get("digest"), f"{where}: manifest for linux/{arch}")
    raise RegistryError(f"{where}: no manifest for linux/{arch} in its index")


# -- layers as the agent unpacks them ----------------------------------------------------------

def layer_chunks(client: Client, repository: str, layer: Layer) -> Iterator[bytes]:
    """A layer's uncompressed tar as it arrives (gzip inflated on the way). Raises after the
    last chunk when the blob's digest, or the uncompressed diff ID, does not match: a caller
    that writes to a temporary file and keeps it only when the loop ends keeps nothing bad."""
    inflate = zlib.decompressobj(wbits=31) if layer.media_type in GZIP_LAYERS else None
    diff = hashlib.sha256()
    for chunk in client.blob_chunks(repository, layer.digest):
        try:
            data = inflate.decompress(chunk) if inflate is not None else chunk
        except zlib.error as e:
            raise RegistryError(f"layer {layer.digest}: not a gzip stream ({e})") from None
        if data:
            diff.update(data)
            yield data
    if inflate is not None:
        rest = inflate.flush()
        if not inflate.eof:
            raise RegistryError(f"layer {layer.digest}: truncated gzip stream")
        if rest:
            diff.update(rest)
            yield rest
    got = "sha256:" + diff.hexdigest()
    if layer.diff_id and got != layer.diff_id:
        raise DigestMismatch(f"layer {layer.digest}: uncompressed it hashes to {got}, not its "
                             f"diff ID {layer.diff_id}")
