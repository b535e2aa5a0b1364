"""Real etcd for tests: members on free loopback ports, data in a temporary directory; and
controller replicas (processes on unix sockets) serving one etcd prefix.

Every process is started by us and stopped by its PID (never by name). Tests that need etcd skip,
saying why, when the ``etcd`` binary is absent (``apt-get install etcd-server``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sdnctl.api.client import Client
from sdnctl.lab.labtls import make_tls

ROOT = Path(__file__).resolve().parents[2]

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def etcd_missing() -> str | None:
    if shutil.which("etcd") is None and not Path("/usr/bin/etcd").exists():
        return "the etcd binary is missing (apt-get install etcd-server)"
    return None


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"


@dataclass(frozen=True)
class EtcdTls:
    """Client TLS for a cluster: its CA, the members' certificate and key (for 127.0.0.1), and a
    client certificate and key (no common name: etcd's gateway wants none once auth is on)."""

    ca: str
    cert: str
    key: str
    client_cert: str
    client_key: str

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca)
        context.load_cert_chain(self.client_cert, self.client_key)
        return context

    def controller_args(self) -> list[str]:
        return ["--etcd-cacert", self.ca, "--etcd-cert", self.client_cert,
                "--etcd-key", self.client_key]


def make_etcd_tls(directory: Path) -> EtcdTls:
    ca, cert, key = make_tls(str(directory), ("127.0.0.1",), ("localhost",))
    return EtcdTls(ca, cert, key, str(directory / "client.pem"),
                   str(directory / "client-key.pem"))


@dataclass
class EtcdCluster:
    members: list[Member]
    extra_args: list[str] = field(default_factory=list)
    tls: EtcdTls | None = None

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def url(self, prefix: str = "/sdnctl") -> str:
        return "etcd://" + ",".join(self.endpoints) + prefix

    def start(self, index: int) -> None:
        member = self.members[index]
        cluster = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)
        scheme = "https" if self.tls else "http"
        tls = ["--cert-file", self.tls.cert, "--key-file", self.tls.key, "--trusted-ca-file",
               self.tls.ca, "--client-cert-auth"] if self.tls else []
        argv = [ETCD, "--name", member.name, "--data-dir", str(member.data_dir),
                "--listen-client-urls", f"{scheme}://{member.endpoint}",
                "--advertise-client-urls", f"{scheme}://{member.endpoint}", *tls,
                "--listen-peer-urls", f"http://127.0.0.1:{member.peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{member.peer_port}",
                "--initial-cluster", cluster, "--initial-cluster-token", "sdnctl-test",
                "--initial-cluster-state", "new",
                "--heartbeat-interval", "50", "--election-timeout", "500",
                "--max-txn-ops", "4096", "--log-level", "warn", *self.extra_args]
        with open(member.log_path, "ab") as log:
            member.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=log)

    def kill(self, index: int) -> None:
        member = self.members[index]
        if member.proc is not None and member.proc.poll() is None:
            member.proc.kill()
            member.proc.wait(timeout=10)
        member.proc = None

    def stop(self) -> None:
        for index in range(len(self.members)):
            self.kill(index)

    def wait_healthy(self, timeout: float = 20.0, indexes: list[int] | None = None) -> None:
        """Until every listed member answers a linearizable read (so a leader exists)."""
        deadline = time.monotonic() + timeout
        for index in indexes if indexes is not None else range(len(self.members)):
            member = self.members[index]
            while True:
                if member.proc is not None and member.proc.poll() is not None:
                    raise RuntimeError(f"etcd member {member.name} exited; see "
                                       f"{member.log_path}:\n{member.log_path.read_text()[-2000:]}")
                if _answers(member.endpoint, self.tls):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd member {member.name} did not become healthy; "
                                       f"see {member.log_path}")
                time.sleep(0.05)


def _answers(endpoint: str, tls: EtcdTls | None = None) -> bool:
    host, _, port = endpoint.rpartition(":")
    conn = http.client.HTTPSConnection(host, int(port), timeout=2, context=tls.context()) \
        if tls else http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        conn.request("POST", "/v3/kv/range", json.dumps({"key": "AA=="}))
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


@contextlib.contextmanager
def etcd_cluster(base: Path, size: int = 1, extra_args: list[str] | None = None,
                 tls: EtcdTls | None = None) -> Iterator[EtcdCluster]:
    reason = etcd_missing()
    if reason:
        pytest.skip(reason)
    base.mkdir(parents=True, exist_ok=True)
    ports = free_ports(2 * size)
    members = [Member(f"m{i}", ports[2 * i], ports[2 * i + 1], base / f"m{i}",
                      base / f"m{i}.log") for i in range(size)]
    cluster = EtcdCluster(members, extra_args or [], tls)
    try:
        for index in range(size):
            cluster.start(index)
        cluster.wait_healthy()
        yield cluster
    finally:
        cluster.stop()


@dataclass
class Replicas:
    """Controller processes serving one etcd prefix."""

    base: Path
    store_url: str
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    count: int = 3
    extra_args: list[str] = field(default_factory=list)

    def address(self, index: int) -> str:
        return f"unix:{self.base}/c{index}.sock"

    @property
    def addresses(self) -> list[str]:
        return [self.address(i) for i in range(self.count)]

    def start(self, index: int) -> None:
        log = open(self.base / f"c{index}.log", "ab")  # noqa: SIM115 (the child keeps it)
        with log:
            self.procs[index] = subprocess.Popen(
                [sys.executable, "-m", "sdnctl.controller.server", "--listen",
                 self.address(index), "--store", self.store_url, "--default-bridge", "",
                 "--sweep-interval", "1", "--workers", "128", *self.extra_args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env={**os.environ, "PYTHONPATH": str(ROOT)})

    def wait_serving(self, index: int, timeout: float = 30.0) -> None:
        client = Client(self.address(index))
        try:
            deadline = time.monotonic() + timeout
            while not client.healthy(timeout=0.5):
                proc = self.procs[index]
                if proc.poll() is not None:
                    log = (self.base / f"c{index}.log").read_text()[-2000:]
                    raise RuntimeError(f"controller {index} exited {proc.returncode}:\n{log}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"controller {index} did not serve in {timeout}s")
                time.sleep(0.1)
        finally:
            client.close()

    def kill(self, index: int) -> None:
        proc = self.procs.pop(index, None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        for index in list(self.procs):
            self.kill(index)


@contextlib.contextmanager
def replicas(base: Path, store_url: str, count: int = 3,
             extra_args: list[str] | None = None) -> Iterator[Replicas]:
    base.mkdir(parents=True, exist_ok=True)
    running = Replicas(base, store_url, count=count, extra_args=extra_args or [])
    try:
        for index in range(count):
            running.start(index)
        for index in range(count):
            running.wait_serving(index)
        yield running
    finally:
        running.stop()
