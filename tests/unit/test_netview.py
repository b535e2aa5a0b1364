"""A network's records moved on by the change log (sdnctl/controller/netview.py, issue 21) are
what a whole read gives, after every step of generated histories, on the real SQLite store; a
change log compacted past them, or the network deleted, reads whole again."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
from apitest import CountingReads

from sdnctl.api.model import Container, Host, Network
from sdnctl.controller import netview
from sdnctl.controller.errors import SdnError
from sdnctl.controller.state import State
from sdnctl.controller.store.sqlite import SqliteStore

OVERLAY, BRIDGE = "ov", "br"


def _host(i: int, mac: int = 0) -> Host:
    return Host(f"h{i}", underlay_ip=f"192.0.2.{10 + i}", agent_pid=100 + i,
                vtep_mac=f"02:00:00:00:{mac:02x}:{i:02x}" if mac else "")


def _overlay(store: SqliteStore, hosts: int) -> State:
    """A State on ``store`` with hosts h0.. (each with a VTEP MAC) and the overlay network."""
    state = State(store)
    for i in range(hosts):
        state.create_host(_host(i, 1))
    state.create_network(Network(OVERLAY, driver="overlay", subnet="10.80.0.0/16",
                                 host_prefix=24))
    return state


def _step(state: State, rng: random.Random, made: list[str], serial: list[int]) -> str:
    """One random write of the kinds that move a network's view; what it did."""
    kind = rng.choice(["create", "create", "create", "batch", "delete", "delete", "register",
                       "host", "host-delete", "update"])
    host = f"h{rng.randrange(6)}"
    try:
        if kind == "create":
            serial[0] += 1
            name = f"c{serial[0]}"
            state.create_container(Container(name, host, rng.choice([OVERLAY, BRIDGE]),
                                             aliases=(f"a{serial[0]}",)))
            made.append(name)
        elif kind == "batch":
            names = [f"c{serial[0] + i + 1}" for i in range(rng.randrange(1, 5))]
            serial[0] += len(names)
            state.create_containers([Container(n, f"h{rng.randrange(6)}", OVERLAY)
                                     for n in names])
            made += names
        elif kind == "delete" and made:
            state.delete_container(made.pop(rng.randrange(len(made))))
        elif kind == "register":
            i = rng.randrange(6)
            state.register_host(_host(i, rng.randrange(1, 200)))
        elif kind == "host":
            state.create_host(_host(rng.randrange(6, 9)))
        elif kind == "host-delete":
            state.delete_host(f"h{rng.randrange(6, 9)}")
        elif kind == "update":
            net, _ = state.get_network(OVERLAY)
            state.update_network(dataclasses.replace(net, masquerade=not net.masquerade))
    except SdnError:
        return f"{kind} refused"
    return kind


@pytest.mark.parametrize("seed", range(4))
def test_records_moved_on_are_those_read_whole(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    store = SqliteStore(tmp_path / "db")
    state = _overlay(store, 6)
    state.create_network(Network(BRIDGE, subnet="10.81.0.0/16", host_prefix=24))
    kept = {net: netview.read(store, net) for net in (OVERLAY, BRIDGE)}
    made: list[str] = []
    serial = [0]
    for step in range(120):
        did = _step(state, rng, made, serial)
        for net in (OVERLAY, BRIDGE):
            before = kept[net]
            assert before is not None
            moved = netview.move_on(store, before)
            whole = netview.read(store, net)
            assert moved == whole, f"step {step} ({did}), network {net}"
            kept[net] = moved
    store.close()


def test_a_create_moves_the_records_on_without_reading_them_whole(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    state = _overlay(store, 3)
    for i in range(20):
        state.create_container(Container(f"c{i}", f"h{i % 3}", OVERLAY))
    counted = CountingReads(store)
    records = netview.read(counted, OVERLAY)  # type: ignore[arg-type]
    assert records is not None and len(records.containers) == 20 and len(records.hosts) == 3
    whole_reads, counted.reads = counted.reads, 0
    assert whole_reads >= 4  # the network, its owners, leases, containers, hosts
    state.create_container(Container("new", "h1", OVERLAY))
    state.register_host(_host(2, 7))
    moved = netview.move_on(counted, records)  # type: ignore[arg-type]
    # The change log held the container, its allocation and the host: one read of it, no other.
    assert counted.reads == 0 and counted.moved == 1
    assert moved is not None and "new" in moved.containers
    assert moved.hosts["h2"].vtep_mac == "02:00:00:00:07:02"
    # Unchanged records are the same objects (the name table is kept while they are).
    assert moved.containers["c0"] is records.containers["c0"]
    assert netview.move_on(counted, moved) is moved  # nothing written since
    store.close()


def test_a_compacted_log_or_a_deleted_network_reads_whole(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db", history=5)
    state = _overlay(store, 1)
    records = netview.read(store, OVERLAY)
    assert records is not None
    for i in range(10):  # more changes than the log keeps
        state.create_container(Container(f"c{i}", "h0", OVERLAY))
    moved = netview.move_on(store, records)
    assert moved == netview.read(store, OVERLAY)
    assert moved is not None and len(moved.containers) == 10
    for i in range(10):
        state.delete_container(f"c{i}")
    state.delete_network(OVERLAY)
    assert netview.move_on(store, moved) is None
    store.close()
