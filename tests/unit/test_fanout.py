"""Watch fan-out (issue 21): one reader of the change log queues each change only on the streams
of the hosts it concerns; a host no write concerns is not woken, yet GetHost counts it as having
realised those writes. Streams on every store; the concern rules on the real SQLite store."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from apitest import TIMEOUT, CountingReads, StartServer, connect, watch

from sdnctl.api.model import (
    Allocation,
    Container,
    ContainerStatus,
    Host,
    HostStatus,
    Lease,
    Network,
    from_json,
    from_json_frozen,
    to_json,
)
from sdnctl.controller import ipam
from sdnctl.controller.fanout import concerned, hub_of, lease_holders
from sdnctl.controller.keys import lease_key
from sdnctl.controller.state import State
from sdnctl.controller.store.base import Change, Store
from sdnctl.controller.store.memory import MemoryStore
from sdnctl.controller.store.sqlite import SqliteStore
from sdnctl.v1 import sdnctl_pb2 as pb


def test_a_create_on_host_a_sends_nothing_to_host_b(
        store: Store, start_server: StartServer) -> None:
    server = start_server(store, progress_interval=3600)
    with connect(server, store) as api:
        api.host("ha")
        api.host("hb")
        api.network("front")
        with watch(api, "ha") as a, watch(api, "hb") as b:
            assert a.next().snapshot
            assert b.next().snapshot
            api.container("on-a", host="ha")
            event = a.next()  # the probe works: A hears of its container
            assert [c.name for c in event.containers] == ["on-a"]
            api.container("on-b", host="hb")
            # The first thing B hears after both creates is its own container: nothing of A's
            # container came before it, not even a progress notice.
            event = b.next()
            assert [c.name for c in event.containers] == ["on-b"], event
            assert not event.deleted_containers and not event.networks[1:]
            assert event.revision == store.revision()


def test_a_stream_whose_call_ended_leaves_at_once_though_it_waits_an_hour(
        store: Store, start_server: StartServer) -> None:
    """An idle stream waits for batches until its next progress notice (an hour here), not
    half a second at a time; the end of its call wakes it (gRPC's callback), so it unsubscribes
    at once and its handler's thread is free."""
    server = start_server(store, progress_interval=3600)
    with connect(server, store) as api:
        api.host("ha")
        hub = server.hub
        assert hub is not None
        with watch(api, "ha") as a:
            assert a.next().snapshot
            assert [s.host for s in hub._subs.values()] == ["ha"]  # the probe sees it
            (sub,) = hub._subs.values()
            deadline = time.monotonic() + 5
            while not sub.taken and time.monotonic() < deadline:  # waiting, after the snapshot
                time.sleep(0.01)
            looked = sub.taken
            time.sleep(1.2)  # two of the old half-second waits
            assert sub.taken == looked, "an idle stream looked without being woken"
        deadline = time.monotonic() + 5
        while hub._subs and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not hub._subs, "the ended stream is still subscribed"


class Flaky:
    """A store whose change log fails to read ``failures`` times once armed (a busy database),
    and is the real store otherwise."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.failures = 0

    def changes_since(self, revision: int) -> list[Change]:
        if self.failures > 0:
            self.failures -= 1
            raise OSError("database is locked")
        return self.inner.changes_since(revision)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_a_failed_read_of_the_change_log_delays_an_event_and_loses_none(
        store: Store, start_server: StartServer) -> None:
    flaky = Flaky(store)
    server = start_server(flaky, progress_interval=3600)  # type: ignore[arg-type]
    with connect(server, store) as api:
        api.host("ha")
        api.network("front")
        with watch(api, "ha") as a:
            assert a.next().snapshot
            api.container("first", host="ha")
            assert [c.name for c in a.next().containers] == ["first"]  # the probe works
            flaky.failures = 5
            api.container("second", host="ha")
            assert [c.name for c in a.next().containers] == ["second"]
            assert flaky.failures == 0  # it did fail, and the hub read again
            api.container("third", host="ha")  # and it still reads
            assert [c.name for c in a.next().containers] == ["third"]


def test_a_subscriber_always_has_a_reader(tmp_path: Path) -> None:
    """A hub started for a test's stream (no server) reads only while someone subscribes; one
    subscribing just as the last one leaves, or as the reader starts, must still get one (a
    reader that started before the subscription was recorded ended at once: a stream hung)."""
    state = State(SqliteStore(tmp_path / "db"))
    state.create_host(Host("h1"))
    state.create_network(Network("front", "10.88.0.0/16"))
    hub = hub_of(state)
    for i in range(100):
        sub = hub.subscribe("h1")
        if i % 2:
            time.sleep(0.001)  # now and then let the reader get going first
        hub.unsubscribe(sub)
        sub = hub.subscribe("h1")
        state.create_container(Container(f"c{i}", "h1", network="front"))
        changes, _ = sub.take(timeout=TIMEOUT)
        assert [c.key for c in changes if c.key.endswith(f"/c{i}")], f"round {i}: no reader"
        hub.unsubscribe(sub)


def _observed(api: object, host: str) -> int:
    got: pb.Host = api.ctl.GetHost(pb.GetRequest(name=host), timeout=TIMEOUT)  # type: ignore[attr-defined]
    return got.observed_revision


def test_a_host_no_write_concerns_counts_as_having_realised_them(
        store: Store, start_server: StartServer) -> None:
    server = start_server(store, progress_interval=3600)
    with connect(server, store) as api:
        api.host("ha")
        api.host("hb")
        api.network("front")
        api.network("back", subnet="10.99.0.0/16")
        api.container("b1", host="hb", network="back")
        with watch(api, "hb") as b:
            snap = b.next()
            assert snap.snapshot
            api.sync.ReportStatus(pb.ReportStatusRequest(
                host="hb", observed_revision=snap.revision), timeout=TIMEOUT)
            for i in range(3):  # on another host and another network: nothing of hb's
                api.container(f"a{i}", host="ha", network="front")
            target = store.revision()
            deadline = time.monotonic() + TIMEOUT
            while _observed(api, "hb") < target:  # the hub reads the log in its own thread
                assert time.monotonic() < deadline, "hb never counted as realised"
                time.sleep(0.02)
            # A write that concerns hb is not realised until its agent says so.
            mine = api.container("b2", host="hb", network="back").revision
            assert _observed(api, "hb") < mine
            event = b.next()  # and it is the first thing hb's stream carries
            assert [c.name for c in event.containers] == ["b2"]
            assert event.revision >= mine
            api.sync.ReportStatus(pb.ReportStatusRequest(
                host="hb", observed_revision=event.revision), timeout=TIMEOUT)
            assert _observed(api, "hb") >= mine


def _notice_at(stream: Any, revision: int) -> pb.WatchEvent:
    """The first event at ``revision`` or later; every event of the stream until then must be
    a progress notice (no content)."""
    while True:
        event: pb.WatchEvent = stream.next()
        assert not (event.snapshot or event.containers or event.networks or event.name_deltas
                    or event.deleted_containers or event.deleted_networks), event
        if event.revision >= revision:
            return event


def test_keepalive_notices_need_no_report_and_one_after_a_batch_found_empty_does(
        store: Store, start_server: StartServer) -> None:
    """Issue 21: an idle agent does not report the periodic progress notice (each report is a
    store write that moved the revision for every other host: 100 idle agents wrote ten status
    records a second). The notice is marked ``keepalive`` and the host counts as having
    realised what did not concern it without a report. A notice after a batch the hub counted
    as the host's but the stream found nothing in is not marked: its report tells the other
    replicas, whose hubs cannot know the batch was empty."""
    server = start_server(store, progress_interval=0.2)
    with connect(server, store) as api:
        api.host("ha", underlay_ip="192.0.2.1")
        api.host("hb", underlay_ip="192.0.2.2")
        api.host("hc", underlay_ip="192.0.2.3")
        api.network("front")
        api.network("back", subnet="10.99.0.0/16")
        api.container("a1", host="ha", network="front")
        api.container("b1", host="hb", network="front")  # hb holds a lease of front
        with watch(api, "hb") as b:
            snap = b.next()
            api.sync.ReportStatus(pb.ReportStatusRequest(
                host="hb", observed_revision=snap.revision), timeout=TIMEOUT)
            api.container("c1", host="hc", network="back")  # nothing of hb's
            target = store.revision()
            notice = _notice_at(b, target)
            assert notice.keepalive, notice
            assert _observed(api, "hb") >= target  # realised, and hb reported nothing
            # ha moves to another underlay address: the hub counts that as the concern of
            # every holder of ha's networks (an overlay's peers move), but front is a bridge
            # network, so hb's stream finds nothing to send
            api.sync.Register(pb.RegisterRequest(host="ha", underlay_ip="192.0.2.9"),
                              timeout=TIMEOUT)
            moved = store.revision()
            notice = _notice_at(b, moved)
            assert not notice.keepalive, notice
            api.sync.ReportStatus(pb.ReportStatusRequest(
                host="hb", observed_revision=notice.revision), timeout=TIMEOUT)
            assert b.next().keepalive  # reported: quiet again


def test_wait_host_answers_once_the_agent_has_realised_the_revision(
        store: Store, start_server: StartServer) -> None:
    """What `sdnctl run` and `rm` wait with: WaitHost answers when the host's agent reports the
    revision (not before: the answer carries it), at once when it has, or when no agent is
    connected; a bad request is refused naming the field."""
    server = start_server(store, progress_interval=3600)
    with connect(server, store) as api:
        api.host("hb")
        api.network("back", subnet="10.99.0.0/16")
        alone = api.ctl.WaitHost(pb.WaitHostRequest(name="hb", revision=1 << 40,
                                                    timeout_ms=60_000), timeout=TIMEOUT)
        assert not alone.agent_connected  # no agent: nothing to wait for
        with pytest.raises(grpc.RpcError) as bad:
            api.ctl.WaitHost(pb.WaitHostRequest(name="hb", revision=-1), timeout=TIMEOUT)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert "revision" in bad.value.details()  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as unknown:
            api.ctl.WaitHost(pb.WaitHostRequest(name="nobody"), timeout=TIMEOUT)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        with watch(api, "hb") as b:
            snap = b.next()
            api.sync.ReportStatus(pb.ReportStatusRequest(
                host="hb", observed_revision=snap.revision), timeout=TIMEOUT)
            mine = api.container("b1", host="hb", network="back").revision
            answers: list[pb.Host] = []
            waiting = threading.Thread(target=lambda: answers.append(api.ctl.WaitHost(
                pb.WaitHostRequest(name="hb", revision=mine, timeout_ms=60_000),
                timeout=70)))
            waiting.start()
            event = b.next()
            assert [c.name for c in event.containers] == ["b1"]
            api.sync.ReportStatus(pb.ReportStatusRequest(
                host="hb", observed_revision=event.revision), timeout=TIMEOUT)
            waiting.join(TIMEOUT)
            assert not waiting.is_alive()  # answered on the report, not at its 60 s
            assert answers[0].agent_synced and answers[0].observed_revision >= mine
            again = api.ctl.WaitHost(pb.WaitHostRequest(name="hb", revision=mine,
                                                        timeout_ms=60_000), timeout=TIMEOUT)
            assert again.observed_revision >= mine  # realised already: at once


def test_which_hosts_a_change_concerns(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    try:
        now = [1_800_000_000.0]
        state = State(store, clock=lambda: now[0])
        for name in ("a", "b", "c"):
            state.create_host(Host(name, underlay_ip=f"192.0.2.{ord(name)}",
                                   vtep_mac=f"02:00:00:00:00:{ord(name):02x}"))
        state.create_network(Network("front", subnet="10.1.0.0/16"))
        state.create_network(Network("back", subnet="10.2.0.0/16"))
        state.create_network(Network("ov", subnet="10.3.0.0/16", driver="overlay"))

        def after(write: object) -> set[str]:
            holders, since = lease_holders(store)
            assert callable(write)
            write()
            return set(concerned(state, store.changes_since(since), holders))

        # A container concerns its host and, through its DNS name, the network's holders.
        assert after(lambda: state.create_container(Container("a1", "a", network="front"))) \
            == {"a"}
        assert after(lambda: state.create_container(Container("b1", "b", network="front"))) \
            == {"a", "b"}
        assert after(lambda: state.create_container(Container("c1", "c", network="back"))) \
            == {"c"}
        assert after(lambda: state.delete_container("a1")) == {"a", "b"}
        # Reports concern nobody.
        assert after(lambda: state.report_status("c", [ContainerStatus("c1", "running")], 5)) \
            == set()
        # An overlay: a host's VXLAN endpoint moving concerns its peers, not itself.
        state.create_container(Container("o-a", "a", network="ov"))
        state.create_container(Container("o-b", "b", network="ov"))
        assert after(lambda: state.register_host(
            Host("a", underlay_ip="192.0.2.200", vtep_mac="02:00:00:00:00:ff"))) == {"b"}
        # A lease that moves to another IPv6 prefix moves among its overlay's peers too.
        kv = store.get(lease_key("ov", "a"))
        assert kv is not None
        lease = from_json(Lease, kv.value)
        moved = dataclasses.replace(lease, subnet6="fd00:3:0:9::/64", gateway6="fd00:3:0:9::1")
        assert set(concerned(state, [Change(kv.mod_revision + 1, kv.key, to_json(moved),
                                            kv.value)], lease_holders(store)[0])) == {"a", "b"}
        # A renewal moves a lease's times only: nobody's business (no agent uses them).
        now[0] += 3600
        assert after(lambda: state.renew_leases("b")) == set()
        assert from_json(Lease, store.get(lease_key("ov", "b")).value).renewed_at == now[0]
        # A network's change concerns its holders only.
        assert after(lambda: state.update_network(
            Network("back", subnet="10.2.0.0/16", internal=True))) == {"c"}
    finally:
        store.close()


def test_streams_share_an_overlay_view_as_new_as_their_changes(tmp_path: Path) -> None:
    """N streams woken by one change build the overlay's view once, even when the store moved
    on meanwhile (other hosts' reports), and never take one older than their change."""
    store = SqliteStore(tmp_path / "db")
    try:
        state = State(store)
        for name in ("a", "b", "c"):
            state.create_host(Host(name, underlay_ip=f"192.0.2.{ord(name)}",
                                   vtep_mac=f"02:00:00:00:00:{ord(name):02x}"))
        state.create_network(Network("ov", subnet="10.3.0.0/16", driver="overlay"))
        state.create_container(Container("o-a", "a", network="ov"))
        state.create_container(Container("o-b", "b", network="ov"))
        counting = CountingReads(store)
        state.store = counting  # type: ignore[assignment]
        change = store.revision()
        first = state.host_network("ov", "a", change)
        assert first is not None and [p.host for p in first.peers] == ["b"]
        built = counting.reads
        assert built > 0
        state.report_status("b", [ContainerStatus("o-b", "running")], change)  # moves on
        assert store.revision() > change
        reads = counting.reads
        again = state.host_network("ov", "b", change)
        assert again is not None and counting.reads == reads  # the same read, shared
        networks = state.lease_networks("a", change)
        assert networks == ["ov"] and state.lease_networks("a", change) is networks
        reads, moved = counting.reads, counting.moved
        state.host_network("ov", "b")
        # Moved on to the store's revision: by the change log (netview), not a whole read.
        assert counting.moved > moved and counting.reads == reads
        # A later change (c joins) is never answered with the view from before it.
        state.create_container(Container("o-c", "c", network="ov"))
        joined = state.host_network("ov", "a", store.revision())
        assert joined is not None and [p.host for p in joined.peers] == ["b", "c"]
        assert [n.container for n in joined.names] == ["o-a", "o-b", "o-c"]
        assert state.lease_networks("c", store.revision()) == ["ov"]
    finally:
        store.close()


def test_a_view_read_again_keeps_its_name_table_while_no_name_changed(tmp_path: Path) -> None:
    """A view is read again at every revision that touches its network; records whose bytes
    did not change are not decoded again, and the name table made of them is kept (a host
    joining a 100 x 10 overlay decoded 2,000 records, ~90 ms while every stream waited). A
    container added, or one whose aliases changed, makes a new table."""
    store = SqliteStore(tmp_path / "db")
    try:
        state = State(store)
        overlay_of(state, "ab")
        first = state.host_network("ov", "a", store.revision())
        assert first is not None
        state.register_host(Host("b", underlay_ip="192.0.2.99", vtep_mac="02:00:00:00:00:99"))
        moved = state.host_network("ov", "a", store.revision())
        assert moved is not None and [p.underlay_ip for p in moved.peers] == ["192.0.2.99"]
        assert moved.names is first.names  # only a peer moved
        state.create_container(Container("o-x", "b", network="ov", aliases=("x",)))
        added = state.host_network("ov", "a", store.revision())
        assert added is not None and added.names is not first.names
        assert [(n.container, n.aliases) for n in added.names] == \
            [("o-a", ()), ("o-b", ()), ("o-x", ("x",))]
        state.delete_container("o-x")
        state.create_container(Container("o-x", "b", network="ov", aliases=("y",)))
        renamed = state.host_network("ov", "a", store.revision())
        assert renamed is not None
        assert [(n.container, n.aliases) for n in renamed.names] == \
            [("o-a", ()), ("o-b", ()), ("o-x", ("y",))]
    finally:
        store.close()


def overlay_of(state: State, hosts: str) -> None:
    """Hosts named by the letters of ``hosts``, each with a container ``o-<host>`` on the
    overlay ``ov``."""
    for name in hosts:
        state.create_host(Host(name, underlay_ip=f"192.0.2.{ord(name)}",
                               vtep_mac=f"02:00:00:00:00:{ord(name):02x}"))
    state.create_network(Network("ov", subnet="10.3.0.0/16", driver="overlay"))
    for name in hosts:
        state.create_container(Container(f"o-{name}", name, network="ov"))


def test_streams_woken_together_build_an_overlay_view_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight streams asking at once for the view of the same change: one reads it, the
    others wait for it and take it (before, each read the overlay's leases and names)."""
    store = SqliteStore(tmp_path / "db")
    try:
        state = State(store)
        overlay_of(state, "abcdefgh")
        change = store.revision()
        entered, reads = [0], [0]
        everyone_in = threading.Event()
        view = state._network_view
        real_read = ipam.list_allocations

        def entering(*args: Any, **kwargs: Any) -> Any:
            entered[0] += 1
            if entered[0] == 8:
                everyone_in.set()
            return view(*args, **kwargs)

        def read(*args: Any, **kwargs: Any) -> Any:
            reads[0] += 1
            everyone_in.wait(5)  # the first reader waits until all eight asked
            return real_read(*args, **kwargs)

        monkeypatch.setattr(state, "_network_view", entering)
        monkeypatch.setattr(ipam, "list_allocations", read)
        got: list[Any] = []
        threads = [threading.Thread(target=lambda h=h: got.append(  # type: ignore[misc]
            state.host_network("ov", h, change))) for h in "abcdefgh"]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert everyone_in.is_set() and len(got) == 8 and all(v is not None for v in got)
        assert reads == [1]
        assert len({id(v.names) for v in got}) == 1  # one read, shared
    finally:
        store.close()


def test_streams_woken_together_read_nothing_of_their_own(tmp_path: Path) -> None:
    """Eight streams asking one after the other for their view of one change: the first
    reads the shared view, the others read nothing, not even their host's lease (on etcd each
    read is a round trip: a read per stream was 100 per change at 100 hosts)."""
    store = SqliteStore(tmp_path / "db")
    try:
        state = State(store)
        overlay_of(state, "abcdefgh")
        change = store.revision()
        counting = CountingReads(store)
        state.store = counting  # type: ignore[assignment]
        first = state.host_network("ov", "a", change)
        assert first is not None and first.lease.host == "a" and counting.reads > 0
        read = counting.reads
        views = [state.host_network("ov", h, change) for h in "bcdefgh"]
        assert [v.lease.host for v in views if v is not None] == list("bcdefgh")
        assert views[0] is not None and [p.host for p in views[0].peers] == list("acdefgh")
        assert counting.reads == read
        assert state.host_network("ov", "nobody", change) is None  # no lease: no view
    finally:
        store.close()


def test_a_hub_behind_a_compaction_sends_every_stream_a_snapshot(
        tmp_path: Path, start_server: StartServer) -> None:
    store = SqliteStore(tmp_path / "db", history=1)  # every write compacts what came before
    try:
        server = start_server(store, progress_interval=3600)
        with connect(server, store) as api:
            api.host("ha")
            api.network("front")
            with watch(api, "ha") as a:
                assert a.next().snapshot
                # The create writes the host's lease, then the container: the hub may wake
                # between the two. Whatever it sends first is a snapshot, and c1 follows.
                api.container("c1", host="ha")
                event = a.next()
                assert event.snapshot, event
                while [c.name for c in event.containers] != ["c1"]:
                    assert not event.containers, event
                    event = a.next()
    finally:
        store.close()


def test_streams_woken_together_read_a_moved_hosts_networks_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host whose VXLAN endpoint moved concerns every peer: eight streams asking at once for
    its networks make one read of its leases (before, each read them, and the first of the
    others too, since the store moved on under them)."""
    store = SqliteStore(tmp_path / "db")
    try:
        state = State(store)
        overlay_of(state, "ab")
        change = store.revision()
        reads, asked = [0], threading.Barrier(8, timeout=5)
        real_read = ipam.list_leases

        def read(*args: Any, **kwargs: Any) -> Any:
            reads[0] += 1
            return real_read(*args, **kwargs)

        def ask() -> list[str]:
            asked.wait()  # all eight at once
            return state.lease_networks("a", change)

        monkeypatch.setattr(ipam, "list_leases", read)
        got: list[Any] = []
        threads = [threading.Thread(target=lambda: got.append(ask())) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert got == [["ov"]] * 8
        assert reads == [1]
    finally:
        store.close()


def test_shared_views_of_hosts_and_networks_that_went_are_forgotten(tmp_path: Path) -> None:
    """Hosts and networks that come and go leave no shared view and no lock behind (they were
    kept for ever): deleted here, or found gone when a stream asks (another replica deleted
    them)."""
    store = SqliteStore(tmp_path / "db")
    try:
        state = State(store)
        overlay_of(state, "ab")
        for i in range(20):
            host, net = f"x{i}", f"n{i}"
            state.create_host(Host(host, underlay_ip=f"198.51.100.{i + 1}",
                                   vtep_mac=f"02:00:00:00:01:{i:02x}"))
            state.create_network(Network(net, subnet=f"10.{100 + i}.0.0/16", driver="overlay"))
            state.create_container(Container(f"c{i}", host, network=net))
            assert state.host_network(net, host, store.revision()) is not None
            assert state.lease_networks(host, store.revision()) == [net]
            assert state.name_delta(net, [f"c{i}"], store.revision()).holders == {host}
            state.delete_container(f"c{i}")
            state.delete_network(net)
            state.delete_host(host)
        kept = {*state._view_locks, *state._shared_views, *state._lease_networks,
                *state._name_deltas}
        assert not {k for k in kept if k.split()[-1].startswith(("x", "n"))}, kept
        # Deleted by another replica: this one's hub reads it in the change log.
        other = State(store)
        state.create_network(Network("gone", subnet="10.99.0.0/16", driver="overlay"))
        state.create_container(Container("g", "a", network="gone"))
        assert state.host_network("gone", "a", store.revision()) is not None
        assert "gone" in state._shared_views
        other.delete_container("g")
        other.delete_network("gone")
        hub_of(state).dispatch(store.changes_since(store.revision() - 2))
        assert "gone" not in state._shared_views and "network gone" not in state._view_locks
        assert state.host_network("ov", "a", store.revision()) is not None  # the rest is kept
    finally:
        store.close()


@pytest.mark.parametrize("cls", [Host, Lease, HostStatus, Container, ContainerStatus,
                                 Allocation])
def test_records_decoded_shared_are_frozen_and_hold_only_immutable_values(cls: type) -> None:
    """``from_json_frozen`` hands one object to every caller (Watch streams, listings): a
    record decoded that way must be frozen, and every field a string, number or tuple."""
    assert cls.__dataclass_params__.frozen
    kinds = {str(f.type) for f in dataclasses.fields(cls)}
    assert kinds <= {"str", "int", "float", "bool", "tuple[str, ...]"}, kinds


def test_frozen_records_decode_once_per_value_and_list_hosts_agrees() -> None:
    """A host, lease or host status listed again decodes to the same (immutable) object; a
    changed value to a new one; and ListHosts' views agree with one host's read."""
    lease = Lease("ov", "h1", "10.3.1.0/24", "10.3.1.1", renewed_at=5)
    data = to_json(lease)
    assert from_json_frozen(Lease, data) is from_json_frozen(Lease, bytes(data))
    assert from_json_frozen(Lease, data) == from_json(Lease, data) == lease
    moved = to_json(dataclasses.replace(lease, renewed_at=6))
    assert from_json_frozen(Lease, moved).renewed_at == 6
    status = HostStatus(7, ("a", "b"))
    assert from_json_frozen(HostStatus, to_json(status)) == status
    state = State(MemoryStore())
    overlay_of(state, "ab")
    state.report_status("a", [ContainerStatus("o-a", "running")], 9)
    views, _ = state.list_hosts()
    assert [(v.host, v.leases, v.status) for v in views] == [
        (state.get_host(h).host, state.get_host(h).leases, state.get_host(h).status)
        for h in "ab"]
    assert views[0].status == HostStatus(9, ("o-a",)) and views[1].status is None


def test_a_hosts_leases_are_found_by_key(tmp_path: Path) -> None:
    """``list_leases(host=...)`` picks the host's keys before decoding: a host named like the
    end of another's name is not mistaken for it."""
    store = SqliteStore(tmp_path / "db")
    try:
        state = State(store)
        for i, name in enumerate(("b", "ab", "b-2")):
            state.create_host(Host(name, underlay_ip=f"192.0.2.{i + 1}"))
        state.create_network(Network("n1", subnet="10.1.0.0/16"))
        state.create_network(Network("n2", subnet="10.2.0.0/16"))
        for i, (name, network) in enumerate((("b", "n1"), ("ab", "n1"), ("b", "n2"),
                                             ("b-2", "n2"))):
            state.create_container(Container(f"c{i}", name, network=network))
        assert [(lease.network, lease.host) for lease in ipam.list_leases(store, host="b")] \
            == [("n1", "b"), ("n2", "b")]
        assert [lease.host for lease in ipam.list_leases(store, host="ab")] == ["ab"]
        assert [lease.host for lease in ipam.list_leases(store, "n2", host="b-2")] == ["b-2"]
        assert ipam.list_leases(store, host="a") == []
    finally:
        store.close()
