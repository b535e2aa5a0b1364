"""IPAM garbage collection (issue 10.5): seen unused twice, a grace period apart, unchanged in
between; a dry run changes nothing; what is in use is never freed. A fake clock, no sleeping."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest
from apitest import StartServer, connect

from sdnctl.api.model import Allocation, Container, Host, Network, to_json
from sdnctl.cli import cli
from sdnctl.controller import gc, ipam, ipam_report, keys
from sdnctl.controller.keys import container_key
from sdnctl.controller.state import State
from sdnctl.controller.store.base import Delete, Put, Store
from sdnctl.controller.store.memory import MemoryStore
from sdnctl.v1 import sdnctl_pb2 as pb

GRACE = 600


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(clock: Clock) -> Iterator[State]:
    store = MemoryStore()
    state = State(store, ipam.DEFAULT_TIMERS, clock)
    state.create_host(Host("h1"))
    state.create_host(Host("h2"))
    state.create_network(Network("front", "10.88.0.0/16"))
    state.create_container(Container("web", "h1", "front", ("sleep", "1")))
    state.create_container(Container("db", "h2", "front", ("sleep", "1")))
    yield state
    store.close()


def actions(report: gc.Report) -> list[tuple[str, str, str]]:
    return sorted((i.kind, i.subject, i.action) for i in report.items)


def leak(state: State, name: str = "ghost", address: str = "10.88.0.77") -> None:
    """An allocation whose container never existed (what a crash of an older version left)."""
    alloc = Allocation("front", name, "eth0", address, 24)
    state.store.txn([], [Put(keys.owner_key("front", name, "eth0"), to_json(alloc)),
                         Put(keys.addr_key("front", address), to_json(alloc))])


def everyone_alive(host: str) -> bool:
    return True


def test_nothing_in_use_is_a_candidate(state: State, clock: Clock) -> None:
    for _ in range(3):
        assert gc.collect(state, GRACE, alive=everyone_alive).items == []
        clock.now += GRACE + 1
    assert ipam_report.check(state.store) == []


def test_a_leaked_address_is_freed_only_when_seen_twice_a_grace_apart(state: State,
                                                                      clock: Clock) -> None:
    leak(state)
    owner = keys.owner_key("front", "ghost", "eth0")
    dry = gc.collect(state, GRACE, dry_run=True)
    assert actions(dry) == [("leaked-address", "10.88.0.77", "mark")]
    assert state.store.range(keys.MARKS)[0] == []  # a dry run writes nothing
    assert actions(gc.collect(state, GRACE)) == [("leaked-address", "10.88.0.77", "mark")]
    clock.now += GRACE - 1
    report = gc.collect(state, GRACE)
    assert actions(report) == [("leaked-address", "10.88.0.77", "wait")]
    assert report.items[0].free_in == 1
    assert state.store.get(owner) is not None
    clock.now += 1
    assert actions(gc.collect(state, GRACE, dry_run=True))[0][2] == "free"
    assert state.store.get(owner) is not None  # dry: still there
    assert actions(gc.collect(state, GRACE)) == [("leaked-address", "10.88.0.77", "free")]
    assert state.store.get(owner) is None
    assert state.store.get(keys.addr_key("front", "10.88.0.77")) is None
    assert state.store.range(keys.MARKS)[0] == []
    assert ipam_report.check(state.store) == []
    assert any(e.kind == "gc" and e.address == "10.88.0.77"
               for e in ipam.list_history(state.store))
    assert gc.collect(state, GRACE).items == []  # and it is done


def test_a_leak_taken_back_by_its_container_is_not_freed(state: State, clock: Clock) -> None:
    leak(state, "web2", "10.88.0.77")
    gc.collect(state, GRACE)  # marked
    clock.now += 10
    # A container of that name is created: allocation is idempotent, it takes the leak back.
    view = state.create_container(Container("web2", "h1", "front", ("sleep", "1")))
    assert view.allocation is not None and view.allocation.address == "10.88.0.77"
    clock.now += GRACE
    assert gc.collect(state, GRACE).items == []
    assert state.store.get(keys.owner_key("front", "web2", "eth0")) is not None
    assert state.store.range(keys.MARKS)[0] == []  # its mark went with the candidacy


def test_a_candidate_that_changed_between_sightings_starts_over(state: State,
                                                                clock: Clock) -> None:
    leak(state)
    gc.collect(state, GRACE)
    clock.now += GRACE + 1
    leak(state)  # rewritten: another revision (someone touched it)
    assert actions(gc.collect(state, GRACE)) == [("leaked-address", "10.88.0.77", "reset")]
    clock.now += GRACE - 1
    assert actions(gc.collect(state, GRACE))[0][2] == "wait"
    clock.now += 1
    assert actions(gc.collect(state, GRACE))[0][2] == "free"


def test_stray_guard_and_orphan_lease(state: State, clock: Clock) -> None:
    stray = Allocation("front", "nobody", "eth0", "10.88.0.99", 24)
    state.store.txn([], [Put(keys.addr_key("front", "10.88.0.99"), to_json(stray))])
    # h2's host record vanishes (a hand edit) once its container is gone: its lease is orphaned.
    state.delete_container("db")
    state.store.txn([], [Delete("/hosts/h2")])
    assert actions(gc.collect(state, GRACE)) == [("orphan-lease", "10.88.1.0/24", "mark"),
                                                 ("stray-guard", "10.88.0.99", "mark")]
    clock.now += GRACE
    assert [a for _, _, a in actions(gc.collect(state, GRACE))] == ["free", "free"]
    assert ipam.get_lease(state.store, "front", "h2") is None
    assert ipam_report.check(state.store) == []


def test_a_lost_host_loses_its_containers_only_after_the_grace(state: State,
                                                               clock: Clock) -> None:
    def alive(host: str) -> bool:
        return host != "h2"

    assert actions(gc.collect(state, GRACE, alive=alive)) == [("lost-host", "h2", "mark")]
    clock.now += GRACE - 1
    assert actions(gc.collect(state, GRACE, alive=alive)) == [("lost-host", "h2", "wait")]
    assert state.store.get(container_key("db")) is not None
    clock.now += 1
    assert actions(gc.collect(state, GRACE, alive=alive)) == [("lost-host", "h2", "free")]
    assert state.store.get(container_key("db")) is None
    assert ipam.get_lease(state.store, "front", "h2") is None
    assert state.store.get(container_key("web")) is not None  # h1 is untouched
    assert ipam_report.check(state.store) == []
    # h2 comes back: it gets its subnet again (quarantined for it), and db its address.
    state.register_host(Host("h2"))
    view = state.create_container(Container("db", "h2", "front", ("sleep", "1")))
    assert view.lease is not None and view.lease.subnet == "10.88.1.0/24"
    assert view.allocation is not None and view.allocation.address == "10.88.1.2"


def test_a_host_that_came_back_in_between_is_not_lost(state: State, clock: Clock) -> None:
    down = {"h2"}
    gc.collect(state, GRACE, alive=lambda h: h not in down)
    clock.now += 100
    state.register_host(Host("h2"))  # its agent registered (renewing its leases) ...
    clock.now += GRACE
    # ... and is gone again when we look: a change in between, so its clock starts over.
    assert actions(gc.collect(state, GRACE, alive=lambda h: h not in down)) == \
        [("lost-host", "h2", "reset")]
    assert state.store.get(container_key("db")) is not None


def test_without_liveness_no_host_is_ever_lost(state: State, clock: Clock) -> None:
    gc.collect(state, GRACE)
    clock.now += 10 * GRACE
    assert gc.collect(state, GRACE).items == []


# -- through the API and the CLI -------------------------------------------------------------


def test_gc_rpc_and_cli(store: Store, start_server: StartServer, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    server = start_server(store, clock=clock, gc_grace=GRACE, sweep_interval=0)
    monkeypatch.setenv("SDNCTL_CONTROLLER", server.address)
    with connect(server, store) as api:
        api.host("h1")
        api.network("front")
        api.container("web")  # no agent of h1 is connected: h1 looks lost
        assert cli.main(["ipam", "gc", "--dry-run"]) == 0
        out, err = capsys.readouterr()
        assert "lost-host" in out and "h1" in out and "dry run: 1 candidate(s), 0 to free" in err
        assert store.range(keys.MARKS)[0] == []
        assert cli.main(["ipam", "gc"]) == 0
        capsys.readouterr()
        clock.now += GRACE
        assert cli.main(["ipam", "gc", "--dry-run", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert [(i["kind"], i["action"]) for i in report["items"]] == [("lost-host", "free")]
        assert api.get_container("web").name == "web"  # dry: still there
        reply = api.ctl.GcIpam(pb.GcIpamRequest(grace_seconds=GRACE), timeout=5)
        assert [(i.kind, i.subject, i.action) for i in reply.items] == \
            [("lost-host", "h1", "free")]
        assert api.ctl.ListContainers(pb.ListRequest(), timeout=5).containers == []
        with pytest.raises(grpc.RpcError) as e:
            api.ctl.GcIpam(pb.GcIpamRequest(grace_seconds=-1), timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
