"""DNS name tables on the Watch stream as deltas (issue 21).

Against the real controller State and Watch code on the memory and SQLite stores: one container
create at H hosts x N containers sends each host of the network one name entry (not N x H), and
the agent's table folded from a snapshot and name deltas equals the controller's full table after
creates, deletes, alias changes, moves between networks, a resume and a compaction.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from apitest import CountingReads

from agent.desired import DesiredName, DesiredState, network_from_pb
from sdnctl.api.model import Container, Host, Network
from sdnctl.controller import watch
from sdnctl.controller.state import State
from sdnctl.controller.store.base import Change, Store
from sdnctl.controller.store.memory import MemoryStore
from sdnctl.controller.store.sqlite import SqliteStore
from sdnctl.v1 import sdnctl_pb2 as pb


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    sqlite = SqliteStore(tmp_path / "db")
    try:
        yield sqlite
    finally:
        sqlite.close()


def world(store: Store, hosts: int, per_host: int) -> State:
    """``hosts`` hosts with ``per_host`` containers each on the bridge network ``front`` (every
    host holds a lease of it) and one container on ``back`` on h0."""
    state = State(store)
    for i in range(hosts):
        state.create_host(Host(f"h{i}"))
    state.create_network(Network("front", subnet="10.0.0.0/8", host_prefix=16))
    state.create_network(Network("back", subnet="172.20.0.0/16", host_prefix=24))
    state.create_containers([Container(f"c{i}-{j}", f"h{i}", network="front")
                             for i in range(hosts) for j in range(per_host)])
    state.create_container(Container("b0", "h0", network="back"))
    return state


def events_for(state: State, hosts: int, since: int) -> dict[str, pb.WatchEvent]:
    changes = state.store.changes_since(since)
    return {f"h{i}": watch.delta_event(state, f"h{i}", changes) for i in range(hosts)}


def name_entries(event: pb.WatchEvent) -> int:
    """How many name-table entries an event carries, whole tables and deltas alike."""
    return sum(len(n.names) for n in event.networks) + \
        sum(len(d.names) for d in event.name_deltas)


def table(state: State, host: str, network: str = "front") -> tuple[DesiredName, ...]:
    """The controller's full name table of ``network`` as ``host`` would get it whole."""
    view = state.host_network(network, host)
    assert view is not None
    return network_from_pb(watch.host_network_pb(view)).names


def test_a_create_sends_each_host_one_entry_not_the_table(store: Store) -> None:
    hosts, per_host = 12, 10
    state = world(store, hosts, per_host)
    before = store.revision()
    state.create_container(Container("new", "h3", network="front"))
    events = events_for(state, hosts, before)
    for host, event in events.items():
        assert name_entries(event) == 1, host
        [delta] = event.name_deltas
        assert (delta.network, list(delta.containers), [n.container for n in delta.names]) == \
            ("front", ["new"], ["new"])
        assert all(not n.names for n in event.networks)
    assert [c.name for c in events["h3"].containers] == ["new"]  # only its host runs it
    sizes = {e.ByteSize() for h, e in events.items() if h != "h3"}
    assert max(sizes) < 100, sizes

    # Positive control: the whole-table behaviour (before issue 21) is what this measures.
    watch.NAME_DELTAS = False
    try:
        events = events_for(state, hosts, before)
    finally:
        watch.NAME_DELTAS = True
    assert {name_entries(e) for e in events.values()} == {hosts * per_host + 1}
    assert min(e.ByteSize() for e in events.values()) > 15 * hosts * per_host

    # A delete: every host hears the name leave, with no entry.
    before = store.revision()
    state.delete_container("c5-0")
    for event in events_for(state, hosts, before).values():
        assert [(d.network, list(d.containers), len(d.names)) for d in event.name_deltas] == \
            [("front", ["c5-0"], 0)]


def test_a_host_without_a_lease_hears_nothing_of_the_names(store: Store) -> None:
    state = world(store, 2, 1)
    state.create_host(Host("lonely"))
    before = store.revision()
    state.create_container(Container("new", "h1", network="front"))
    changes = store.changes_since(before)
    event = watch.delta_event(state, "lonely", changes)
    assert (list(event.name_deltas), list(event.networks)) == ([], [])
    # ... while h0's event about the same changes carries it (positive control)
    assert [d.network for d in watch.delta_event(state, "h0", changes).name_deltas] == ["front"]


def test_the_streams_one_create_wakes_read_its_names_once(store: Store) -> None:
    """Eight streams building their events for one create at once: the first reads the new
    name and who holds the network, the others take what it read (on etcd each read is a
    round trip: each stream read two keys per container and its lease before)."""
    state = world(store, 8, 2)
    before = store.revision()
    state.create_container(Container("new", "h1", network="front"))
    changes = store.changes_since(before)
    counting = CountingReads(store)
    state.store = counting  # type: ignore[assignment]
    first = watch.delta_event(state, "h0", changes)
    assert [(d.network, list(d.containers), [n.container for n in d.names])
            for d in first.name_deltas] == [("front", ["new"], ["new"])]
    assert counting.reads > 0  # the probe counts (positive control)
    alone = counting.reads
    barrier = threading.Barrier(7, timeout=5)
    events: dict[str, pb.WatchEvent] = {}

    def stream(host: str) -> None:
        barrier.wait()
        events[host] = watch.delta_event(state, host, changes)

    threads = [threading.Thread(target=stream, args=(f"h{i}",)) for i in range(2, 8)]
    threads.append(threading.Thread(target=stream, args=("h0",)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(events) == ["h0", *[f"h{i}" for i in range(2, 8)]]
    assert all(list(e.name_deltas) == list(first.name_deltas) for e in events.values())
    assert counting.reads == alone  # not one more read
    # A stream that fell behind takes two creates at once, one that kept up the first alone:
    # its entry was read with the first's, and serves (by entry, not by set of containers).
    before = store.revision()
    state.create_container(Container("x1", "h2", network="front"))
    state.create_container(Container("x2", "h3", network="front"))
    both = store.changes_since(before)
    behind = watch.delta_event(state, "h0", both)
    assert [n.container for d in behind.name_deltas for n in d.names] == ["x1", "x2"]
    reads = counting.reads
    first_only = [c for c in both if c.revision <= min(c.revision for c in both
                                                       if c.key.endswith("/x1"))]
    kept_up = watch.delta_event(state, "h4", first_only)
    assert [n.container for d in kept_up.name_deltas for n in d.names] == ["x1"]
    assert counting.reads == reads
    # A later change is never answered with what was read for an earlier one.
    before = store.revision()
    state.update_container(Container("new", "h1", network="front", aliases=("later",)))
    later = watch.delta_event(state, "h0", store.changes_since(before))
    assert [list(n.aliases) for d in later.name_deltas for n in d.names] == [["later"]]


def fold_from(state: State, host: str) -> DesiredState:
    desired = DesiredState()
    desired.apply(watch.snapshot_event(state.snapshot(host)))
    return desired


def catch_up(desired: DesiredState, state: State, host: str) -> None:
    desired.apply(watch.delta_event(state, host, state.store.changes_since(desired.revision)))
    desired.revision = state.store.revision()


def test_the_folded_table_equals_the_full_table(store: Store) -> None:
    state = world(store, 3, 2)
    one_by_one = fold_from(state, "h0")
    batched = fold_from(state, "h0")  # several changes in one event
    edits = [
        lambda: state.create_container(Container("web", "h1", network="front",
                                                 aliases=("www", "site"))),
        lambda: state.update_container(Container("web", "h1", network="front",
                                                 aliases=("portal",))),
        lambda: state.create_container(Container("db", "h2", network="front",
                                                 dns=("192.0.2.53",))),
        lambda: state.delete_container("c1-0"),
        lambda: state.update_container(Container("db", "h2", network="back")),  # moves away
        lambda: state.create_container(Container("api", "h0", network="front",
                                                 aliases=("db",))),
        lambda: state.update_container(Container("web", "h1", network="front")),  # no alias
        lambda: state.delete_container("web"),
        lambda: state.update_container(Container("b0", "h0", network="front")),  # moves in
    ]
    for i, edit in enumerate(edits):
        edit()
        catch_up(one_by_one, state, "h0")
        assert one_by_one.networks["front"].names == table(state, "h0"), f"after edit {i}"
        assert one_by_one.networks["back"].names == table(state, "h0", "back"), f"after {i}"
        if i % 3 == 2:
            catch_up(batched, state, "h0")
            assert batched.networks["front"].names == table(state, "h0")
    names = {n.container: n for n in one_by_one.networks["front"].names}
    assert "web" not in names and "c1-0" not in names and "db" not in names
    assert names["api"].aliases == ("db",) and "b0" in names
    assert one_by_one.networks["front"] == fold_from(state, "h0").networks["front"]


def test_resume_and_compaction_give_the_full_table(tmp_path: Path) -> None:
    state = world(MemoryStore(history=20), 2, 2)
    alive = threading.Event()
    alive.set()
    first = next(watch.host_events(state, "h0", 0, alive.is_set, progress_interval=3600))
    assert first.snapshot
    desired = DesiredState()
    desired.apply(first)
    state.create_container(Container("x", "h1", network="front", aliases=("ex",)))
    state.delete_container("c1-1")

    # Resuming from the snapshot's revision: deltas only, folded onto the old table.
    resumed = DesiredState(desired.revision, True, dict(desired.networks))
    stream = watch.host_events(state, "h0", first.revision, alive.is_set, poll=0.05,
                               progress_interval=3600)
    while resumed.revision < state.store.revision():
        event = next(stream)
        assert not event.snapshot
        resumed.apply(event)
    assert resumed.networks["front"].names == table(state, "h0")

    # Past the change log: a snapshot, with the full table.
    for i in range(25):
        state.create_container(Container(f"churn{i}", "h1", network="front"))
    for i in range(0, 25, 2):
        state.delete_container(f"churn{i}")
    again = next(watch.host_events(state, "h0", resumed.revision, alive.is_set))
    assert again.snapshot
    resumed.apply(again)
    assert resumed.networks["front"].names == table(state, "h0")
    assert len(table(state, "h0")) == 2 * 2 - 1 + 1 + 12


def overlay_world(store: Store, hosts: int, per_host: int) -> State:
    """``hosts`` hosts with VXLAN endpoints and ``per_host`` containers each on the overlay
    ``ov``."""
    state = State(store)
    for i in range(hosts):
        state.create_host(Host(f"h{i}", underlay_ip=f"192.0.2.{i + 1}",
                               vtep_mac=f"02:00:00:00:00:{i + 1:02x}"))
    state.create_network(Network("ov", subnet="10.0.0.0/8", host_prefix=16, driver="overlay"))
    state.create_containers([Container(f"c{i}-{j}", f"h{i}", network="ov")
                             for i in range(hosts) for j in range(per_host)])
    return state


@pytest.mark.parametrize("keeps_names", [True, False])
def test_a_host_joining_an_overlay_sends_the_others_its_peers_not_the_table(
        store: Store, keeps_names: bool) -> None:
    """An agent that keeps its tables gets the overlay again for its peers with ``names_kept``
    and no names, then the joiner's names as a delta; its network ends as a fresh snapshot's.
    An agent that did not say it keeps them gets the whole table, as before."""
    hosts, per_host = 6, 10
    state = overlay_world(store, hosts, per_host)
    folded = {f"h{i}": fold_from(state, f"h{i}") for i in range(hosts)}
    state.create_host(Host("hn", underlay_ip="192.0.2.99", vtep_mac="02:00:00:00:00:99"))
    joined: list[Change] = []
    for step in (lambda: state.create_container(Container("cn", "hn", network="ov")),
                 lambda: state.create_container(Container("cn2", "hn", network="ov")),
                 lambda: state.delete_container("c2-0"),
                 lambda: state.delete_container("cn"),
                 lambda: state.delete_container("cn2")):  # hn joins, grows, leaves
        before = store.revision()
        step()
        changes = store.changes_since(before)
        joined = joined or changes
        for host, desired in folded.items():
            event = watch.delta_event(state, host, changes, keeps_names)
            for net in event.networks:
                assert net.names_kept == keeps_names and len(net.names) == \
                    (0 if keeps_names else len(table(state, host, "ov"))), host
            desired.apply(event)
            desired.revision = store.revision()
            assert desired.networks == fold_from(state, host).networks, host
    if keeps_names:  # what an agent that kept nothing would make of it: no names at all
        lost = DesiredState()
        event = watch.delta_event(state, "h0", joined, keeps_names)
        assert [n.network.name for n in event.networks] == ["ov"]
        lost.apply(event)
        assert lost.networks["ov"].names == () != folded["h0"].networks["ov"].names
