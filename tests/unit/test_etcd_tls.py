"""The etcd store over client TLS with auth enabled, against a real TLS-only etcd: a member that
listens on HTTPS only and demands a client certificate, with a user whose role may read and
write the store's prefix only. Plain HTTP, a wrong password and no certificate are refused."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from etcdtest import ETCD, ROOT, etcd_missing, free_ports

from sdnctl.api.client import Client
from sdnctl.controller import migrate
from sdnctl.controller.store.base import Compare, Put, StoreUnavailable
from sdnctl.controller.store.etcd import EtcdAccess, EtcdError, EtcdStore
from sdnctl.controller.store.sqlite import SqliteStore
from sdnctl.lab.labtls import make_tls
from sdnctl.v1 import sdnctl_pb2 as pb

PASSWORD = "s3cret-pw"


@dataclass
class TlsEtcd:
    endpoint: str
    ca: str
    cert: str
    key: str


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _admin(etcd: TlsEtcd, path: str, body: dict[str, object], token: str = "") -> dict:
    context = ssl.create_default_context(cafile=etcd.ca)
    context.load_cert_chain(etcd.cert, etcd.key)
    host, _, port = etcd.endpoint.rpartition(":")
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    headers = {"Authorization": token} if token else {}
    try:
        conn.request("POST", path, json.dumps(body), headers)
        response = conn.getresponse()
        answer: dict = json.loads(response.read() or b"{}")
        assert response.status == 200, (path, answer)
        return answer
    finally:
        conn.close()


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsEtcd]:
    reason = etcd_missing()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("etcdtls")
    ca, cert, key = make_tls(str(base / "tls"), ("127.0.0.1",), ("localhost",))
    client_port, peer_port = free_ports(2)
    endpoint = f"127.0.0.1:{client_port}"
    argv = [ETCD, "--name", "m0", "--data-dir", str(base / "data"),
            "--listen-client-urls", f"https://{endpoint}",
            "--advertise-client-urls", f"https://{endpoint}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"m0=http://127.0.0.1:{peer_port}",
            "--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca,
            "--client-cert-auth", "--log-level", "warn"]
    log_path = base / "etcd.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    tls = base / "tls"  # the client's certificate has no common name (see make_tls)
    etcd = TlsEtcd(endpoint, ca, str(tls / "client.pem"), str(tls / "client-key.pem"))
    try:
        deadline = time.monotonic() + 20
        while True:  # its readiness: a TLS range answers
            assert proc.poll() is None, log_path.read_text()[-2000:]
            try:
                _admin(etcd, "/v3/kv/range", {"key": _b64("x")})
                break
            except (OSError, AssertionError, http.client.HTTPException):
                assert time.monotonic() < deadline, log_path.read_text()[-2000:]
                time.sleep(0.1)
        # auth: root (needed to enable it) and a user allowed only the store's prefix
        _admin(etcd, "/v3/auth/user/add", {"name": "root", "password": "rootpw"})
        _admin(etcd, "/v3/auth/user/grant", {"user": "root", "role": "root"})
        _admin(etcd, "/v3/auth/role/add", {"name": "sdnctl"})
        _admin(etcd, "/v3/auth/role/grant", {"name": "sdnctl", "perm": {
            "permType": "READWRITE", "key": _b64("/tls"), "range_end": _b64("/tls0")}})
        _admin(etcd, "/v3/auth/user/add", {"name": "sdnctl", "password": PASSWORD})
        _admin(etcd, "/v3/auth/user/grant", {"user": "sdnctl", "role": "sdnctl"})
        _admin(etcd, "/v3/auth/enable", {})
        yield etcd
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_store_over_tls_with_a_user(tls_etcd: TlsEtcd) -> None:
    access = EtcdAccess(tls_etcd.ca, tls_etcd.cert, tls_etcd.key, "sdnctl", PASSWORD)
    store = EtcdStore([tls_etcd.endpoint], prefix="/tls", access=access)
    try:
        revision = store.txn([Compare("/hosts/h1", 0)], [Put("/hosts/h1", b"one")])
        assert revision is not None
        assert store.get("/hosts/h1").value == b"one"  # type: ignore[union-attr]
        store._token = "not-a-token"  # as after a member restart: renewed once, then served
        assert store.get("/hosts/h1").value == b"one"  # type: ignore[union-attr]
        store._token = "not-a-token"  # a watch (history replay) with a stale token
        with contextlib.suppress(StoreUnavailable):
            store.changes_since(0)  # refused at most once: the token goes
        assert [c.key for c in store.changes_since(0)] == ["/hosts/h1"]
    finally:
        store.close()


def test_plain_http_a_wrong_password_and_another_prefix_are_refused(tls_etcd: TlsEtcd) -> None:
    with pytest.raises(StoreUnavailable):
        EtcdStore([tls_etcd.endpoint], prefix="/tls", timeout=2)
    with pytest.raises(EtcdError, match="refused user 'sdnctl'"):
        EtcdStore([tls_etcd.endpoint], prefix="/tls", access=EtcdAccess(
            tls_etcd.ca, tls_etcd.cert, tls_etcd.key, "sdnctl", "wrong"))
    with pytest.raises(EtcdError, match="permission denied"):
        EtcdStore([tls_etcd.endpoint], prefix="/other", access=EtcdAccess(
            tls_etcd.ca, tls_etcd.cert, tls_etcd.key, "sdnctl", PASSWORD))


def test_a_controller_serves_from_tls_etcd_with_its_flags(tls_etcd: TlsEtcd,
                                                          tmp_path: Path) -> None:
    password_file = tmp_path / "etcd-password"
    password_file.write_text(PASSWORD + "\n")
    address = f"unix:{tmp_path}/c.sock"
    argv = [sys.executable, "-m", "sdnctl.controller.server", "--listen", address,
            "--store", f"etcd://{tls_etcd.endpoint}/tls/ctl", "--default-bridge", "",
            "--etcd-cacert", tls_etcd.ca, "--etcd-cert", tls_etcd.cert,
            "--etcd-key", tls_etcd.key, "--etcd-user", "sdnctl",
            "--etcd-password-file", str(password_file), "--audit-log", "", "--http", "",
            "--pidfile", str(tmp_path / "c.pid")]
    with open(tmp_path / "c.log", "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    client = Client(address)
    try:
        deadline = time.monotonic() + 30
        while not client.healthy(timeout=0.5):
            assert proc.poll() is None, (tmp_path / "c.log").read_text()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        client.api.CreateHost(pb.CreateHostRequest(host=pb.Host(
            name="tlshost", underlay_ip="192.0.2.77")), timeout=10)
        listed = client.api.ListHosts(pb.ListRequest(), timeout=10).hosts
        assert [h.name for h in listed] == ["tlshost"]
    finally:
        client.close()
        proc.kill()
        proc.wait(timeout=10)


def test_migrate_to_tls_etcd_with_the_same_flags(tls_etcd: TlsEtcd, tmp_path: Path) -> None:
    source = SqliteStore(str(tmp_path / "c.db"))
    source.txn([], [Put("/hosts/m1", b'{"name": "m1"}')])
    source.close()
    password_file = tmp_path / "pw"
    password_file.write_text(PASSWORD + "\n")
    flags = ["--etcd-cacert", tls_etcd.ca, "--etcd-cert", tls_etcd.cert, "--etcd-key",
             tls_etcd.key, "--etcd-user", "sdnctl", "--etcd-password-file", str(password_file)]
    url = f"etcd://{tls_etcd.endpoint}/tls/migrated"
    assert migrate.main(["--from", f"sqlite:{tmp_path / 'c.db'}", "--to", url, *flags]) == 0
    store = EtcdStore([tls_etcd.endpoint], prefix="/tls/migrated", access=EtcdAccess(
        tls_etcd.ca, tls_etcd.cert, tls_etcd.key, "sdnctl", PASSWORD))
    try:
        assert store.get("/hosts/m1").value == b'{"name": "m1"}'  # type: ignore[union-attr]
    finally:
        store.close()
    with pytest.raises(SystemExit):  # a user without a password file is a usage error
        migrate.main(["--from", f"sqlite:{tmp_path / 'c.db'}", "--to", url,
                      "--etcd-user", "sdnctl"])
