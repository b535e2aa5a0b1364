"""Controller replicas on one etcd cluster: real etcd members and controller processes.

Each test starts its own etcd members (loopback ports, data in a temporary directory) and
controller processes (unix sockets in a temporary directory), and stops every one of them by PID.
They skip, saying why, when the etcd binary is missing.

The allocation test runs threads against three replicas, making 200 subnet allocations and
addresses. By default: 16 threads, 400 addresses (about 20 s; a handful of compare-and-swap
losses retried, so the replicas do race). ``make test-etcd-full`` runs 64 threads and 10,000
addresses (``SDNCTL_REPLICA_THREADS``, ``SDNCTL_REPLICA_ADDRESSES``). 64 threads with 400
addresses took 68 s with 582 losses: contention, not the count, sets the time.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from apitest import eventually
from etcdtest import EtcdCluster, Replicas, etcd_cluster, replicas

from agent.desired import LocalHost
from agent.main import Agent
from sdnctl.api import wire
from sdnctl.api.client import Client
from sdnctl.api.model import Allocation, Container, Host, Network, from_json
from sdnctl.controller.state import State
from sdnctl.controller.store.etcd import EtcdStore
from sdnctl.controller.store.sqlite import SqliteStore
from sdnctl.controller.watch import host_events
from sdnctl.main import main as cli_main
from sdnctl.v1 import sdnctl_pb2 as pb

THREADS = int(os.environ.get("SDNCTL_REPLICA_THREADS", "16"))
SUBNETS = 200
ADDRESSES = int(os.environ.get("SDNCTL_REPLICA_ADDRESSES", "400"))
RPC_TIMEOUT = 60.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    with etcd_cluster(tmp_path / "etcd", size=3) as c:
        yield c


@pytest.fixture
def controllers(tmp_path: Path, cluster: EtcdCluster) -> Iterator[Replicas]:
    with replicas(tmp_path / "ctl", cluster.url("/sdnctl")) as r:
        yield r


def create(client: Client, name: str, host: str, network: str = "net") -> pb.Container:
    msg = pb.Container(name=name, host=host, network=network)
    return client.api.CreateContainer(pb.CreateContainerRequest(container=msg),
                                      timeout=RPC_TIMEOUT)


def setup_network(client: Client, hosts: int, subnet: str = "10.128.0.0/16") -> None:
    client.api.CreateNetwork(pb.CreateNetworkRequest(
        network=pb.Network(name="net", subnet=subnet)), timeout=RPC_TIMEOUT)
    for i in range(hosts):
        client.api.CreateHost(pb.CreateHostRequest(host=pb.Host(name=f"h{i:03d}")),
                              timeout=RPC_TIMEOUT)


def test_threads_on_three_replicas_never_hand_out_one_address_twice(
        cluster: EtcdCluster, controllers: Replicas) -> None:
    admin = Client(controllers.address(0))
    setup_network(admin, SUBNETS)
    clients = [Client(a) for a in controllers.addresses]
    acked: dict[str, tuple[str, str]] = {}  # container -> (host, address)
    errors: list[str] = []
    aborted: list[str] = []
    lock = threading.Lock()

    def work(thread: int) -> None:
        client = clients[thread % len(clients)]
        for i in range(thread, ADDRESSES, THREADS):
            name, host = f"c{i:05d}", f"h{i % SUBNETS:03d}"
            while True:
                try:
                    made = create(client, name, host)
                except wire.RpcError as e:
                    if e.code() == wire.StatusCode.ABORTED:  # CAS kept losing: nothing written
                        with lock:
                            aborted.append(name)
                        continue
                    with lock:
                        errors.append(f"{name}: {e.code().name} {e.details()}")
                    break
                with lock:
                    acked[name] = (host, made.ip)
                break

    started = time.monotonic()
    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    print(f"{ADDRESSES} containers through 3 replicas with {THREADS} threads: {elapsed:.1f}s "
          f"({len(aborted)} ABORTED and retried)")
    assert errors == []
    assert len(acked) == ADDRESSES

    # No address twice, and every acknowledged allocation is there, as acknowledged.
    ips = [ip for _, ip in acked.values()]
    assert len(set(ips)) == len(ips)
    store = EtcdStore(cluster.endpoints, prefix="/sdnctl")
    try:
        owners, _ = store.range("/ipam/net/owner/")
        guards, _ = store.range("/ipam/net/addr/")
        subnets, _ = store.range("/ipam/net/subnet/")
        leases, _ = store.range("/leases/net/")
    finally:
        store.close()
    allocations = {from_json(Allocation, kv.value).container: from_json(Allocation, kv.value)
                   for kv in owners}
    assert len(owners) == len(guards) == ADDRESSES
    assert {name: a.address for name, a in allocations.items()} == \
        {name: ip for name, (_, ip) in acked.items()}
    assert len(subnets) == len(leases) == SUBNETS
    listed = clients[2].api.ListContainers(pb.ListRequest(), timeout=RPC_TIMEOUT).containers
    assert {c.name: c.ip for c in listed} == {name: ip for name, (_, ip) in acked.items()}
    report = clients[1].api.CheckIpam(pb.GetIpamRequest(), timeout=RPC_TIMEOUT)
    assert list(report.problems) == []
    for client in [*clients, admin]:
        client.close()


def test_losing_etcd_members(cluster: EtcdCluster, controllers: Replicas) -> None:
    client = Client(",".join(controllers.addresses))
    setup_network(client, 2)
    create(client, "before", "h000")

    cluster.kill(0)  # one of three: a quorum is left
    for i in range(5):
        deadline = time.monotonic() + 20
        while True:  # a new leader may be elected first
            try:
                create(client, f"one-down-{i}", f"h00{i % 2}")
                break
            except wire.RpcError as e:
                if e.code() != wire.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise

    cluster.kill(1)  # two of three: no quorum
    started = time.monotonic()
    with pytest.raises(wire.RpcError) as caught:
        create(client, "doomed", "h001")
    assert caught.value.code() == wire.StatusCode.UNAVAILABLE
    assert "etcd is unavailable" in (caught.value.details() or "")
    print(f"no quorum answered UNAVAILABLE in {time.monotonic() - started:.1f}s: "
          f"{caught.value.details()}")

    cluster.start(1)  # a member returns: service resumes
    cluster.wait_healthy(indexes=[1, 2])
    deadline = time.monotonic() + 30
    while True:
        try:
            create(client, "after", "h001")
            break
        except wire.RpcError as e:
            if e.code() != wire.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    # Nothing half-written: the failed create is all there (its answer was lost) or not at all.
    names = {c.name: c for c in client.api.ListContainers(pb.ListRequest(),
                                                          timeout=RPC_TIMEOUT).containers}
    assert {"before", "after", *(f"one-down-{i}" for i in range(5))} <= set(names)
    assert "doomed" not in names or names["doomed"].ip
    report = client.api.CheckIpam(pb.GetIpamRequest(), timeout=RPC_TIMEOUT)
    assert list(report.problems) == []
    client.close()


def test_agent_moves_to_another_replica_and_misses_nothing(controllers: Replicas) -> None:
    client = Client(",".join(controllers.addresses))
    setup_network(client, 1)
    create(client, "first", "h000")
    args = argparse.Namespace(host="h000", netns="", controller=",".join(controllers.addresses))
    agent = Agent(args, local=LocalHost(underlay_ip="192.0.2.10", underlay_dev="eth0",
                                        vtep_mac="02:00:00:00:00:01"))
    watcher = threading.Thread(target=agent.watch_forever, daemon=True)
    watcher.start()
    try:
        wait_for(lambda: "first" in agent.desired.containers)
        assert agent.current == 0
        # Every replica knows the agent is connected (to replica 0).
        for index in (1, 2):
            wait_for(lambda i=index: connected(controllers.address(i), "h000"))
        controllers.kill(0)  # the replica the agent watches
        create(client, "during", "h000")  # the CLI fails over too
        wait_for(lambda: "during" in agent.desired.containers)
        assert agent.current != 0
        client.api.DeleteContainer(pb.DeleteRequest(name="first"), timeout=RPC_TIMEOUT)
        create(client, "after", "h000")
        wait_for(lambda: set(agent.desired.containers) == {"during", "after"})
        assert connected(controllers.address(2), "h000")
        agent.stop()
        watcher.join(timeout=10)
        # Gone once the record of killed replica 0 is stale too (three heartbeats).
        wait_for(lambda: not connected(controllers.address(2), "h000"), timeout=30)
    finally:
        agent.stop()
        watcher.join(timeout=10)
        for channel in agent.channels:
            channel.close()
        client.close()


def connected(address: str, host: str) -> bool:
    client = Client(address)
    try:
        got = client.api.GetHost(pb.GetRequest(name=host), timeout=RPC_TIMEOUT)
        return bool(got.agent_connected)
    finally:
        client.close()


def wait_for(condition: object, timeout: float = 20.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_compaction_past_a_watcher_gives_a_snapshot_without_busy_loop(tmp_path: Path) -> None:
    with etcd_cluster(tmp_path / "etcd", size=1) as c:
        store = CountingStore(EtcdStore(c.endpoints, prefix="/c"))
        state = State(store)  # type: ignore[arg-type]
        state.create_host(Host("h1"))
        state.create_network(Network("net", subnet="10.129.0.0/16"))
        state.create_container(Container("old", "h1", network="net"))
        alive = threading.Event()
        alive.set()
        events = host_events(state, "h1", 0, alive.is_set, progress_interval=3600, poll=0.2)
        first = next(events)
        assert first.snapshot and [x.name for x in first.containers] == ["old"]
        # While the watcher is behind: writes, then a compaction past its revision.
        state.create_container(Container("new", "h1", network="net"))
        state.delete_container("old")
        store.inner.compact(store.inner.cluster_revision())
        # The fan-out hub reads the log as it is written, so the stream is not behind: it
        # gets the changes as deltas (or a snapshot, had the hub itself fallen behind).
        names = {"old"}
        while names != {"new"}:
            got = next(events)
            names = set() if got.snapshot else names
            names = (names | {x.name for x in got.containers}) - set(got.deleted_containers)
        # A watcher resuming from before the compaction gets a snapshot too.
        resumed = next(host_events(state, "h1", first.revision, alive.is_set))
        assert resumed.snapshot and [x.name for x in resumed.containers] == ["new"]

        # Idle afterwards: it blocks in the store's watch (waits of ``poll`` seconds), it does
        # not spin, and it sends etcd nothing. (Until the watch is back after the compaction,
        # the store polls: seen once in CI under load.)
        eventually(lambda: store.inner._watching)
        store.calls = 0
        requests = []
        post = store.inner._post
        store.inner._post = lambda *a: requests.append(a) or post(*a)  # type: ignore[method-assign]
        stopper = threading.Timer(2.0, alive.clear)
        stopper.start()
        assert list(events) == []
        stopper.join()
        assert store.calls <= 2 / 0.2 + 2, f"{store.calls} store calls in 2 s of idling"
        assert requests == []
        store.inner.close()


class CountingStore:
    def __init__(self, inner: EtcdStore) -> None:
        self.inner = inner
        self.calls = 0

    def __getattr__(self, name: str) -> object:
        self.calls += 1
        return getattr(self.inner, name)


def test_migrate_sqlite_to_etcd_and_back(tmp_path: Path) -> None:
    source = tmp_path / "a.sqlite"
    store = SqliteStore(source)
    state = State(store)
    for name in ("h1", "h2"):
        state.create_host(Host(name))
    state.create_network(Network("net", subnet="10.130.0.0/16"))
    for i in range(150):  # more than one batch
        state.create_container(Container(f"c{i}", f"h{1 + i % 2}", network="net"))
    state.delete_container("c7")
    want, _ = store.range("")
    store.close()
    with etcd_cluster(tmp_path / "etcd", size=1) as c:
        url = c.url("/migrated")
        assert cli_main(["controller", "migrate", "--from", f"sqlite:{source}", "--to", url]) == 0
        etcd = EtcdStore(c.endpoints, prefix="/migrated")
        got, _ = etcd.range("")
        etcd.close()
        assert [(kv.key, kv.value) for kv in got] == [(kv.key, kv.value) for kv in want]
        # Into a store that is not empty: refused, nothing written.
        assert cli_main(["controller", "migrate", "--from", f"sqlite:{source}",
                         "--to", url]) == 1
        back = tmp_path / "b.sqlite"
        assert cli_main(["controller", "migrate", "--from", url, "--to", f"sqlite:{back}"]) == 0
    copy = SqliteStore(back)
    again, _ = copy.range("")
    copy.close()
    assert [(kv.key, kv.value) for kv in again] == [(kv.key, kv.value) for kv in want]
