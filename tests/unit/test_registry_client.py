"""The registry client's protocol logic against a small in-process registry of our own (plain HTTP
on loopback, the only place ``insecure`` is allowed): bearer tokens, an OCI index with the
platform picked, chunked uploads assembled, and references. The real docker-registry (TLS,
htpasswd, Docker on the other side) is in tests/netns/test_registry_lab.py."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sdnctl.api import registry
from sdnctl.api.imagefmt import Image
from sdnctl.controller.images import PushTarget

TOKEN = "tok-123"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeRegistry(http.server.BaseHTTPRequestHandler):
    blobs: dict[str, bytes] = {}
    manifests: dict[str, tuple[bytes, str]] = {}
    uploads: dict[str, bytearray] = {}
    patches = 0

    def log_message(self, *args: Any) -> None:
        pass

    def _authorized(self) -> bool:
        if self.path.startswith("/token"):
            return True
        if self.headers.get("Authorization") == f"Bearer {TOKEN}":
            return True
        port = self.server.server_address[1]
        self.send_response(401)
        self.send_header("WWW-Authenticate", f'Bearer realm="http://127.0.0.1:{port}/token",'
                         'service="fake",scope="repository:app:pull"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
              ) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        if not self._authorized():
            return
        if self.path.startswith("/token"):
            self._send(200, json.dumps({"token": TOKEN}).encode())
        elif "/manifests/" in self.path:
            ref = self.path.rsplit("/", 1)[1]
            if ref not in self.manifests:
                self._send(404)
                return
            data, kind = self.manifests[ref]
            self._send(200, data, {"Content-Type": kind, "Docker-Content-Digest": sha(data)})
        elif "/blobs/" in self.path:
            digest = self.path.rsplit("/", 1)[1]
            if digest in self.blobs:
                self._send(200, self.blobs[digest])
            else:
                self._send(404)
        else:
            self._send(200)

    do_HEAD = do_GET

    def do_POST(self) -> None:
        if self._authorized():
            uid = f"u{len(self.uploads)}"
            self.uploads[uid] = bytearray()
            self._send(202, headers={"Location": f"/v2/app/blobs/uploads/{uid}?state=0"})

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_PATCH(self) -> None:
        if self._authorized():
            uid = self.path.split("/")[-1].split("?")[0]
            start = int(self.headers["Content-Range"].split("-")[0])
            assert start == len(self.uploads[uid]), "chunks out of order"
            self.uploads[uid] += self._body()
            FakeRegistry.patches += 1
            self._send(202, headers={"Location": f"/v2/app/blobs/uploads/{uid}?state=1"})

    def do_PUT(self) -> None:
        if not self._authorized():
            return
        if "/manifests/" in self.path:
            data = self._body()
            self.manifests[self.path.rsplit("/", 1)[1]] = (data, self.headers["Content-Type"])
            self._send(201, headers={"Docker-Content-Digest": sha(data)})
            return
        uid = self.path.split("/")[-1].split("?")[0]
        digest = self.path.split("digest=")[1].replace("%3A", ":")
        data = bytes(self.uploads.pop(uid) + self._body())
        if sha(data) != digest:
            self._send(400, b'{"errors":[{"code":"DIGEST_INVALID"}]}')
            return
        self.blobs[digest] = data
        self._send(201, headers={"Docker-Content-Digest": digest})


@pytest.fixture
def fake() -> Iterator[registry.Client]:
    FakeRegistry.blobs, FakeRegistry.manifests, FakeRegistry.uploads = {}, {}, {}
    FakeRegistry.patches = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeRegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    yield registry.Client(registry.Endpoint(f"127.0.0.1:{port}", insecure=True))
    server.shutdown()
    server.server_close()


def layer_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        data = b"hello\n" * 1000
        info = tarfile.TarInfo("etc/hello")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_index_platform_bearer_token_and_layers_checked(fake: registry.Client,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "host_architecture", lambda: "amd64")
    tar = layer_tar()
    packed = gzip.compress(tar)
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [sha(tar)]}}).encode()
    FakeRegistry.blobs = {sha(packed): packed, sha(config): config}
    manifest = json.dumps({"schemaVersion": 2, "mediaType": registry.OCI_MANIFEST,
                           "config": {"digest": sha(config), "size": len(config)},
                           "layers": [{"mediaType": registry.OCI_LAYER_GZIP,
                                       "digest": sha(packed), "size": len(packed)}]}).encode()
    index = json.dumps({"schemaVersion": 2, "mediaType": registry.OCI_INDEX, "manifests": [
        {"digest": "sha256:" + "0" * 64, "platform": {"os": "linux", "architecture": "arm64"}},
        {"digest": sha(manifest), "platform": {"os": "linux", "architecture": "amd64"}},
    ]}).encode()
    FakeRegistry.manifests = {"1.0": (index, registry.OCI_INDEX),
                              sha(manifest): (manifest, registry.OCI_MANIFEST)}
    resolved = fake.resolve(registry.parse_reference(f"{fake.endpoint.registry}/app:1.0"))
    assert resolved.manifest_digest == sha(manifest)  # the amd64 entry, through the index
    assert resolved.image_id == sha(config)
    assert resolved.layers == (registry.Layer(sha(packed), registry.OCI_LAYER_GZIP,
                                              len(packed), sha(tar)),)
    assert b"".join(registry.layer_chunks(fake, "app", resolved.layers[0])) == tar

    # bytes that do not match: refused, after the last chunk (a caller keeps nothing)
    FakeRegistry.blobs[sha(packed)] = gzip.compress(tar + b"\0" * 512)
    with pytest.raises(registry.DigestMismatch):
        b"".join(registry.layer_chunks(fake, "app", resolved.layers[0]))


def test_chunked_and_monolithic_uploads(fake: registry.Client, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "UPLOAD_CHUNK", 1000)
    monkeypatch.setattr(registry, "MONOLITHIC_MAX", 100)
    big = bytes(range(256)) * 10  # 2560 bytes: three PATCHes of at most 1000
    path = tmp_path / "blob"
    path.write_bytes(big)
    assert fake.push_blob("app", str(path), sha(big)) is True
    assert FakeRegistry.patches == 3 and FakeRegistry.blobs[sha(big)] == big
    assert fake.push_blob("app", str(path), sha(big)) is False  # there already: no upload
    small = b"{}"
    assert fake.push_bytes("app", small) == sha(small) and FakeRegistry.patches == 3
    out = tmp_path / "fetched"
    fake.fetch_blob("app", sha(big), str(out))
    assert out.read_bytes() == big
    FakeRegistry.blobs[sha(big)] = big[:-1] + b"x"
    with pytest.raises(registry.DigestMismatch):
        fake.fetch_blob("app", sha(big), str(tmp_path / "bad"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob", "fetched"]  # nothing kept


def test_references_and_the_insecure_rule() -> None:
    ref = registry.parse_reference("registry.lab:5000/team/app")
    assert (ref.registry, ref.repository, ref.tag, ref.name) == (
        "registry.lab:5000", "team/app", "latest", "registry.lab:5000/team/app:latest")
    pinned = registry.parse_reference("203.0.113.1:5000/app@sha256:" + "a" * 64)
    assert pinned.ref == "sha256:" + "a" * 64 and pinned.tag == ""
    for bad in ("app:1.0", "library/app", "Registry.lab/App", "host:5000/"):
        with pytest.raises(ValueError):
            registry.parse_reference(bad)
    with pytest.raises(registry.RegistryError, match="loopback"):
        registry.Client(registry.Endpoint("203.0.113.1:5000", insecure=True))


def test_where_a_controller_with_a_registry_puts_loaded_images() -> None:
    target = PushTarget.parse("registry.lab:5000/team")
    assert (target.host, target.namespace) == ("registry.lab:5000", "team")
    image = Image("sha256:" + "a" * 64, ("web:1.2", "web:latest"), (), 0)
    assert str(target.reference(image)) == "registry.lab:5000/team/web:1.2"
    other = Image("sha256:" + "a" * 64, ("other.example:443/App:2",), (), 0)
    assert str(target.reference(other)) == "registry.lab:5000/team/app:2"
    untagged = Image("sha256:" + "b" * 64, (), (), 0)
    assert str(PushTarget.parse("registry.lab:5000").reference(untagged)) == \
        "registry.lab:5000/image:" + "b" * 12
