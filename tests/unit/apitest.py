"""Shared machinery of the gRPC API tests: a real server on a unix socket, real stubs.

The fixtures (``store``, ``start_server``, ``server``, ``api``, ``front``) reach the test modules
through ``conftest.py``. Every API test runs against the in-memory store and the SQLite store.
Watch streams are read through a helper thread with a timeout, so a hang fails the test instead
of blocking the suite.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from etcdtest import EtcdCluster, etcd_cluster

from sdnctl.controller.server import RunningServer, create_server
from sdnctl.controller.store.base import KeyValue, Store
from sdnctl.controller.store.etcd import EtcdStore
from sdnctl.controller.store.memory import MemoryStore
from sdnctl.controller.store.sqlite import SqliteStore
from sdnctl.v1 import sdnctl_pb2 as pb
from sdnctl.v1 import sdnctl_pb2_grpc as pb_grpc

TIMEOUT = 5.0  # per RPC and per awaited stream event
StartServer = Callable[..., RunningServer]


class Api:
    """Stubs over one channel; every unary call carries a deadline."""

    def __init__(self, channel: grpc.Channel, store: Store) -> None:
        self.channel = channel
        self.store = store
        self.ctl = pb_grpc.ControllerStub(channel)
        self.sync = pb_grpc.HostSyncStub(channel)

    def host(self, name: str, **fields: Any) -> pb.Host:
        return self.ctl.CreateHost(pb.CreateHostRequest(host=pb.Host(name=name, **fields)),
                                   timeout=TIMEOUT)

    def network(self, name: str, subnet: str = "10.88.0.0/16", **fields: Any) -> pb.Network:
        msg = pb.Network(name=name, subnet=subnet, **fields)
        return self.ctl.CreateNetwork(pb.CreateNetworkRequest(network=msg), timeout=TIMEOUT)

    def container(self, name: str, host: str = "h1", network: str = "front",
                  **fields: Any) -> pb.Container:
        msg = pb.Container(name=name, host=host, network=network, **fields)
        return self.ctl.CreateContainer(pb.CreateContainerRequest(container=msg), timeout=TIMEOUT)

    def register(self, host: str, **fields: Any) -> pb.Host:
        return self.sync.Register(pb.RegisterRequest(host=host, **fields), timeout=TIMEOUT).host

    def get_host(self, name: str) -> pb.Host:
        return self.ctl.GetHost(pb.GetRequest(name=name), timeout=TIMEOUT)

    def get_container(self, name: str) -> pb.Container:
        return self.ctl.GetContainer(pb.GetRequest(name=name), timeout=TIMEOUT)

    def get_network(self, name: str) -> pb.Network:
        return self.ctl.GetNetwork(pb.GetRequest(name=name), timeout=TIMEOUT)

    def update_network(self, msg: pb.Network) -> pb.Network:
        return self.ctl.UpdateNetwork(pb.UpdateNetworkRequest(network=msg), timeout=TIMEOUT)

    def update_container(self, msg: pb.Container) -> pb.Container:
        return self.ctl.UpdateContainer(pb.UpdateContainerRequest(container=msg),
                                        timeout=TIMEOUT)

    def delete(self, kind: str, name: str) -> None:
        getattr(self.ctl, f"Delete{kind}")(pb.DeleteRequest(name=name), timeout=TIMEOUT)


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One etcd for the session (skips when the binary is missing); each test takes a prefix
    of its own."""
    with etcd_cluster(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


@pytest.fixture(params=["memory", "sqlite", "etcd"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "sqlite":
        s = SqliteStore(tmp_path / "db")
    else:
        cluster = request.getfixturevalue("etcd")
        s = EtcdStore(cluster.endpoints, prefix=f"/t/{uuid.uuid4().hex}")
    yield s
    s.close()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start servers on unix sockets in tmp_path; all are stopped at teardown."""
    running: list[RunningServer] = []

    def start(store: Store, name: str = "c.sock", **kwargs: Any) -> RunningServer:
        server = create_server("unix:" + str(tmp_path / name), store, **kwargs)
        running.append(server)
        return server

    yield start
    for server in reversed(running):
        server.stop(grace=0)


@pytest.fixture
def server(store: Store, start_server: StartServer) -> RunningServer:
    return start_server(store)


@contextmanager
def connect(server: RunningServer, store: Store) -> Iterator[Api]:
    channel = grpc.insecure_channel(server.address)
    try:
        yield Api(channel, store)
    finally:
        channel.close()


@pytest.fixture
def api(server: RunningServer, store: Store) -> Iterator[Api]:
    with connect(server, store) as a:
        yield a


@pytest.fixture
def mem_api(start_server: StartServer) -> Iterator[Api]:
    """One server on the memory store, with host h1 (for tests of one feature through the API;
    the stores are tested for every kind by ``api``)."""
    store = MemoryStore()
    with connect(start_server(store), store) as a:
        a.host("h1")
        yield a


@pytest.fixture
def front(api: Api) -> Api:
    """A store with host h1 and network front (10.88.0.0/16, /24 per host)."""
    api.host("h1")
    api.network("front")
    return api


# -- helpers -----------------------------------------------------------------------------------


def keyspace(store: Store) -> tuple[list[KeyValue], int]:
    return store.range("/")


@contextmanager
def unchanged(store: Store) -> Iterator[None]:
    """The block (a failing call) must leave the store exactly as it found it."""
    before = keyspace(store)
    assert before[1] == store.revision()
    yield
    assert store.revision() == before[1], "a failed call bumped the store revision"
    assert keyspace(store) == before, "a failed call changed the store"


def rpc_error(call: Callable[[], object], code: grpc.StatusCode) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    assert error.code() == code, error.details()  # type: ignore[attr-defined]
    return error


def details(error: grpc.RpcError) -> str:
    return str(error.details())  # type: ignore[attr-defined]


class Stream:
    """Reads a server stream on a helper thread so that each event can be awaited with a timeout."""

    _END = object()

    def __init__(self, call: grpc.Call) -> None:
        self.call = call
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for event in self.call:  # type: ignore[attr-defined]
                self._queue.put(event)
        except grpc.RpcError as e:
            self._queue.put(e)
        self._queue.put(self._END)

    def next(self, timeout: float = TIMEOUT) -> pb.WatchEvent:
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no Watch event within {timeout} s")
        if item is self._END:
            pytest.fail("the Watch stream ended")
        if isinstance(item, grpc.RpcError):
            raise item
        assert isinstance(item, pb.WatchEvent)
        return item

    def next_with_content(self, timeout: float = TIMEOUT) -> pb.WatchEvent:
        """The next event that is not a progress notice."""
        deadline = time.monotonic() + timeout
        while True:
            event = self.next(max(0.01, deadline - time.monotonic()))
            if not is_progress(event):
                return event

    def close(self) -> None:
        self.call.cancel()
        self._thread.join(TIMEOUT)


def is_progress(event: pb.WatchEvent) -> bool:
    return not (event.snapshot or event.networks or event.containers or event.deleted_networks
                or event.deleted_containers or event.name_deltas)


@contextmanager
def watch(api: Api, host: str, since: int = 0) -> Iterator[Stream]:
    call = api.sync.Watch(pb.WatchRequest(host=host, since_revision=since), timeout=30)
    stream = Stream(call)
    try:
        yield stream
    finally:
        stream.close()


def eventually(check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.02)


class CountingReads:
    """A store whose reads are counted (``get``, ``get_many``, ``range``: each one request, a
    round trip through the cluster on etcd), and apart from them its reads of the change log
    (``changes_since``, in ``moved``); everything else goes to ``store`` as it is."""

    def __init__(self, store: Store) -> None:
        self.store, self.reads, self.moved = store, 0, 0

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.store, name)
        if name not in ("get", "get_many", "range", "changes_since"):
            return real

        def counted(*args: Any, **kwargs: Any) -> Any:
            if name == "changes_since":
                self.moved += 1
            else:
                self.reads += 1
            return real(*args, **kwargs)
        return counted
