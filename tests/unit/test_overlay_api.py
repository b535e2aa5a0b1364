"""Overlay networks, VXLAN peers in the Watch stream, lease lifetimes and IPAM inspection,
through a real server and real stubs (both stores, as in test_api.py).

Time is a fake clock handed to the server, so TTLs and quarantines are tested without sleeping;
the sweeper is run directly (``State.sweep``) or by the server's thread with a short interval.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from apitest import (
    TIMEOUT,
    Api,
    StartServer,
    Stream,
    connect,
    details,
    eventually,
    rpc_error,
    unchanged,
    watch,
)

from sdnctl.api.model import Allocation, Lease, Network, to_json
from sdnctl.cli import cli
from sdnctl.controller import ipam, keys
from sdnctl.controller.server import RunningServer
from sdnctl.controller.state import State
from sdnctl.controller.store.base import Put, Store
from sdnctl.v1 import sdnctl_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def overlay(store: Store, start_server: StartServer, clock: Clock) -> Iterator[Api]:
    """A server on a fake clock (sweeper off) with an overlay network ``ov`` and hosts h1-h3
    registered with underlay addresses and VTEP MACs."""
    server = start_server(store, clock=clock, sweep_interval=0)
    with connect(server, store) as api:
        api.network("ov", "10.90.0.0/16", driver="overlay")
        for i in (1, 2, 3):
            api.register(f"h{i}", underlay_ip=f"192.0.2.{i}", vtep_mac=f"0a:00:00:00:00:0{i}",
                         underlay_mtu=1500)
        yield api


def state_of(api: Api, clock: Clock) -> State:
    return State(api.store, ipam.DEFAULT_TIMERS, clock)


def peers(event: pb.WatchEvent, network: str = "ov") -> list[tuple[str, str, str, str, str]]:
    [hn] = [n for n in event.networks if n.network.name == network]
    return [(p.host, p.subnet, p.underlay_ip, p.vtep_mac, p.vtep_ip) for p in hn.peers]


def next_about(stream: Stream, network: str = "ov") -> pb.WatchEvent:
    """The next event that puts ``network`` (skipping progress and unrelated events)."""
    while True:
        event = stream.next_with_content()
        if any(n.network.name == network for n in event.networks):
            return event


# -- overlay networks ----------------------------------------------------------------------


def test_overlay_network_gets_a_vni_port_and_auto_mtu(api: Api) -> None:
    first = api.network("ov1", "10.90.0.0/16", driver="overlay")
    second = api.network("ov2", "10.91.0.0/16", driver="overlay", vxlan_port=8472, mtu=1400)
    given = api.network("ov3", "10.92.0.0/16", driver="overlay", vni=42)
    assert (first.driver, first.vni, first.vxlan_port, first.mtu) == ("overlay", 4096, 4789, 0)
    assert (second.vni, second.vxlan_port, second.mtu) == (4097, 8472, 1400)
    assert given.vni == 42
    assert api.get_network("ov1").vni == 4096
    assert api.network("br", "10.93.0.0/16").mtu == 1500  # bridges keep their default
    api.delete("Network", "ov1")
    assert api.network("ov4", "10.94.0.0/16", driver="overlay").vni == 4096  # freed, reused


def test_a_taken_vni_is_already_exists(api: Api) -> None:
    api.network("ov1", "10.90.0.0/16", driver="overlay", vni=5000)
    with unchanged(api.store):
        e = rpc_error(lambda: api.network("ov2", "10.91.0.0/16", driver="overlay", vni=5000),
                      grpc.StatusCode.ALREADY_EXISTS)
    assert details(e) == "network.vni: VNI 5000 is taken by network 'ov1'"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"driver": "overlay", "vni": 16777216}, "network.vni: 16777216 is outside 1..16777215"),
        ({"driver": "overlay", "vxlan_port": 70000},
         "network.vxlan_port: 70000 is outside 1..65535"),
        ({"driver": "overlay", "vxlan_port": -1}, "network.vxlan_port: -1 is outside 1..65535"),
        ({"driver": "overlay", "mtu": 100}, "network.mtu: 100 is outside 576..65535 (or 0"),
        ({"vni": 7}, "network.vni: only for overlay networks"),
        ({"vxlan_port": 4789}, "network.vxlan_port: only for overlay networks"),
        ({"driver": "overlay", "subnet": "10.90.0.0/16", "host_prefix": 24,
          "gateway": "10.90.0.1"}, "network.gateway: a gateway needs the network to be one"),
    ],
)
def test_invalid_overlay_fields_name_the_field(api: Api, fields: dict[str, Any],
                                               expected: str) -> None:
    msg = pb.Network(**{"name": "ov", "subnet": "10.90.0.0/16", **fields})
    with unchanged(api.store):
        e = rpc_error(lambda: api.ctl.CreateNetwork(pb.CreateNetworkRequest(network=msg),
                                                    timeout=TIMEOUT), INVALID)
    assert details(e).startswith(expected), details(e)


def test_update_of_an_overlay_keeps_its_vni(api: Api) -> None:
    created = api.network("ov", "10.90.0.0/16", driver="overlay")
    got = api.update_network(pb.Network(name="ov", subnet="10.90.0.0/16", driver="overlay",
                                        internal=True))
    assert (got.vni, got.vxlan_port, got.internal) == (created.vni, 4789, True)
    e = rpc_error(lambda: api.update_network(pb.Network(name="ov", subnet="10.90.0.0/16",
                                                        driver="overlay", vni=9)), INVALID)
    assert details(e).startswith("network.vni: cannot change")


def test_concurrent_overlay_creates_never_share_a_vni(store: Store) -> None:
    state = State(store)
    errors: list[BaseException] = []

    def make(i: int) -> None:
        try:
            state.create_network(Network(f"ov{i}", f"10.{100 + i}.0.0/16", driver="overlay"))
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=make, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    vnis = [network.vni for network, _ in state.list_networks()[0]]
    assert sorted(vnis) == list(range(4096, 4108))


def test_overlay_containers_get_addresses_from_their_hosts_lease(overlay: Api) -> None:
    api = overlay
    a = api.container("a", host="h1", network="ov")
    b = api.container("b", host="h2", network="ov")
    assert (a.ip, a.gateway, a.prefixlen) == ("10.90.0.2", "10.90.0.1", 24)
    assert (b.ip, b.gateway) == ("10.90.1.2", "10.90.1.1")


# -- Register ------------------------------------------------------------------------------


def test_register_stores_the_vtep_mac_and_underlay_mtu(api: Api) -> None:
    host = api.register("h1", underlay_ip="192.0.2.1", vtep_mac="0A:58:C0:00:02:01",
                        underlay_mtu=9000)
    assert (host.vtep_mac, host.underlay_mtu) == ("0a:58:c0:00:02:01", 9000)
    got = api.get_host("h1")
    assert (got.vtep_mac, got.underlay_mtu) == ("0a:58:c0:00:02:01", 9000)
    [listed] = api.ctl.ListHosts(pb.ListRequest(), timeout=TIMEOUT).hosts
    assert (listed.vtep_mac, listed.underlay_mtu) == ("0a:58:c0:00:02:01", 9000)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"vtep_mac": "0a:58:c0:00:02"}, "host.vtep_mac: '0a:58:c0:00:02' is not a MAC"),
        ({"vtep_mac": "01:00:5e:00:00:01"}, "host.vtep_mac: 01:00:5e:00:00:01 is a multicast"),
        ({"vtep_mac": "00:00:00:00:00:00"}, "host.vtep_mac: 00:00:00:00:00:00 is not a usable"),
        ({"underlay_mtu": 100}, "host.underlay_mtu: 100 is outside 576..65535"),
    ],
)
def test_register_refuses_a_bad_vtep(api: Api, fields: dict[str, Any], expected: str) -> None:
    with unchanged(api.store):
        e = rpc_error(lambda: api.register("h1", **fields), INVALID)
    assert details(e).startswith(expected), details(e)


# -- Watch: peers ----------------------------------------------------------------------------


def test_snapshot_carries_the_other_members_as_peers(overlay: Api) -> None:
    api = overlay
    api.container("a", host="h1", network="ov")
    api.container("b", host="h2", network="ov")
    with watch(api, "h1") as stream:
        assert peers(stream.next()) == [
            ("h2", "10.90.1.0/24", "192.0.2.2", "0a:00:00:00:00:02", "10.90.1.0")]
    with watch(api, "h3") as stream:
        snap = stream.next()
        assert snap.snapshot and list(snap.networks) == []  # no container on ov: nothing


def test_join_leave_and_reregister_reach_every_member(overlay: Api) -> None:
    api = overlay
    api.container("a", host="h1", network="ov")
    with watch(api, "h1") as h1, watch(api, "h3") as h3:
        assert peers(h1.next()) == []
        assert list(h3.next().networks) == []

        api.container("b", host="h2", network="ov")  # h2 joins
        assert peers(next_about(h1)) == [
            ("h2", "10.90.1.0/24", "192.0.2.2", "0a:00:00:00:00:02", "10.90.1.0")]

        api.register("h2", underlay_ip="198.51.100.2", vtep_mac="0a:00:00:00:00:22",
                     agent_pid=7)  # h2's agent comes back elsewhere
        assert peers(next_about(h1)) == [
            ("h2", "10.90.1.0/24", "198.51.100.2", "0a:00:00:00:00:22", "10.90.1.0")]

        api.register("h2", underlay_ip="198.51.100.2", vtep_mac="0a:00:00:00:00:22",
                     agent_pid=8)  # only the agent changed: no peer put
        api.delete("Container", "b")  # b's name leaves the network's name table (DNS)
        api.delete("Host", "h2")  # h2 leaves: its lease goes with it
        event = next_about(h1)
        assert [n.container for n in event.networks[0].names] == ["a"]
        if peers(event):  # the two deletes came as two events
            event = next_about(h1)
        assert peers(event) == []

        # h3 never had a container on ov: it heard nothing about it all along.
        api.network("marker", "10.99.0.0/16")
        api.container("m", host="h3", network="marker")
        while True:
            event = h3.next_with_content()
            assert all(n.network.name != "ov" for n in event.networks)
            if any(c.name == "m" for c in event.containers):
                break


def test_reregistering_with_the_same_vtep_sends_no_peer_update(overlay: Api) -> None:
    api = overlay
    api.container("a", host="h1", network="ov")
    api.container("b", host="h2", network="ov")
    with watch(api, "h1") as stream:
        stream.next()
        api.register("h2", underlay_ip="192.0.2.2", vtep_mac="0a:00:00:00:00:02", agent_pid=99)
        # The registration concerns no peer: the next thing h1 hears is its own new container.
        api.container("probe", host="h1", network="ov")
        event = stream.next()
        assert [c.name for c in event.containers] == ["probe"], event
        assert not event.networks, event


def test_a_new_member_is_announced_within_the_watch_latency(overlay: Api) -> None:
    api = overlay
    api.container("a", host="h1", network="ov")
    api.container("b", host="h2", network="ov")
    with watch(api, "h1") as h1, watch(api, "h2") as h2:
        h1.next()
        h2.next()
        api.container("c", host="h3", network="ov")
        for stream in (h1, h2):
            assert "h3" in [p[0] for p in peers(next_about(stream))]


# -- leases: renewal, expiry, quarantine ---------------------------------------------------


def lease_of(api: Api, host: str, network: str = "ov") -> pb.Lease:
    [lease] = [x for x in api.get_host(host).leases if x.network == network]
    return lease


def test_leases_have_an_owner_and_are_renewed_by_register_and_reports(overlay: Api,
                                                                      clock: Clock) -> None:
    api = overlay
    api.container("a", host="h1", network="ov")
    lease = lease_of(api, "h1")
    assert (lease.host, lease.renewed_at, lease.expires_at) == ("h1", T0, T0 + 3600)

    clock.now += 30
    api.sync.ReportStatus(pb.ReportStatusRequest(host="h1"), timeout=TIMEOUT)
    assert lease_of(api, "h1").renewed_at == T0  # less than a minute: no write
    clock.now += 31
    api.sync.ReportStatus(pb.ReportStatusRequest(host="h1"), timeout=TIMEOUT)
    assert lease_of(api, "h1").renewed_at == T0 + 61
    revision = api.store.revision()
    api.sync.ReportStatus(pb.ReportStatusRequest(host="h1"), timeout=TIMEOUT)
    assert api.store.revision() == revision  # reports do not storm the store
    clock.now += 5
    api.register("h1", underlay_ip="192.0.2.1", vtep_mac="0a:00:00:00:00:01", agent_pid=2)
    lease = lease_of(api, "h1")
    assert (lease.renewed_at, lease.expires_at) == (T0 + 66, T0 + 66 + 3600)
    assert lease.subnet == "10.90.0.0/24"  # a restarted agent keeps its lease


def test_reports_read_no_lease_until_one_can_be_due(overlay: Api, clock: Clock,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A report looks for leases to renew only once one can be due (issue 21: each report
    listed every lease of the store to find none due): the controller knows when the next
    renewal of the host is due from the last one it wrote or found not due."""
    api = overlay
    api.container("a", host="h1", network="ov")
    listed: list[object] = []
    real = ipam.list_leases

    def counted(*args: Any, **kwargs: Any) -> list[Lease]:
        listed.append(kwargs.get("host"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ipam, "list_leases", counted)
    report = pb.ReportStatusRequest(host="h1")
    api.sync.ReportStatus(report, timeout=TIMEOUT)
    assert listed == ["h1"]  # (nothing known yet: looked, none due before T0 + 60)
    for _ in range(3):
        clock.now += 19
        api.sync.ReportStatus(report, timeout=TIMEOUT)
    assert listed == ["h1"]
    clock.now += 4  # T0 + 61
    api.sync.ReportStatus(report, timeout=TIMEOUT)
    assert listed == ["h1", "h1"]
    assert lease_of(api, "h1").renewed_at == T0 + 61


def test_a_connected_agents_idle_lease_is_renewed_by_its_stream_without_reports(
        store: Store, start_server: StartServer, clock: Clock) -> None:
    """Agents do not report keepalive notices (issue 21), so a connected agent's Watch stream
    renews its leases when due, as those reports did: a live host keeps an idle lease. Once
    no agent is connected it expires as before."""
    server = start_server(store, clock=clock, sweep_interval=0, progress_interval=0.1)
    with connect(server, store) as api:
        api.network("ov", "10.90.0.0/16", driver="overlay")
        api.register("h1", underlay_ip="192.0.2.1", vtep_mac="0a:00:00:00:00:01",
                     underlay_mtu=1500)
        api.container("a", host="h1", network="ov")
        api.delete("Container", "a")  # h1's lease holds no address now
        assert lease_of(api, "h1").renewed_at == T0
        with watch(api, "h1") as stream:
            assert stream.next().snapshot
            clock.now += 61  # a renewal is due: no report comes, the stream renews it
            eventually(lambda: lease_of(api, "h1").renewed_at == T0 + 61)
        eventually(lambda: not api.get_host("h1").agent_connected)
        clock.now += 3601
        assert state_of(api, clock).sweep() >= 1
        assert api.get_host("h1").leases == []


def test_expired_idle_lease_is_freed_quarantined_and_given_back(overlay: Api,
                                                                clock: Clock) -> None:
    api = overlay
    state = state_of(api, clock)
    api.container("a", host="h1", network="ov")
    api.container("b", host="h2", network="ov")
    api.delete("Container", "a")  # h1's lease is idle now; h2's holds an address
    clock.now += 3601
    assert state.sweep() >= 1
    assert [x.network for x in api.get_host("h1").leases] == []
    assert lease_of(api, "h2").subnet == "10.90.1.0/24"  # in use: kept

    report = api.ctl.GetIpam(pb.GetIpamRequest(network="ov"), timeout=TIMEOUT)
    assert ("10.90.0.0/24", T0 + 3601 + 600) in [(q.subnet, q.until) for q in report.quarantined]
    assert ("expire", "h1", "10.90.0.0/24") in [(e.kind, e.host, e.subnet)
                                                for e in report.history]

    api.container("c", host="h3", network="ov")  # quarantined: h3 does not get h1's subnet
    assert lease_of(api, "h3").subnet == "10.90.2.0/24"
    api.container("a", host="h1", network="ov")  # h1 comes back: its old subnet
    assert lease_of(api, "h1").subnet == "10.90.0.0/24"


def test_a_host_away_too_long_gets_its_subnet_only_if_free(overlay: Api, clock: Clock) -> None:
    api = overlay
    state = state_of(api, clock)
    api.container("a", host="h1", network="ov")
    api.delete("Container", "a")
    clock.now += 3601
    state.sweep()
    clock.now += 601  # the quarantine is over: anyone may take it
    assert state.sweep() >= 1
    api.container("c", host="h3", network="ov")
    assert lease_of(api, "h3").subnet == "10.90.0.0/24"
    api.container("a", host="h1", network="ov")
    assert lease_of(api, "h1").subnet == "10.90.1.0/24"


def test_the_servers_sweeper_frees_expired_leases(store: Store, start_server: StartServer,
                                                  clock: Clock) -> None:
    server: RunningServer = start_server(store, clock=clock, sweep_interval=0.02, lease_ttl=10)
    with connect(server, store) as api:
        api.host("h1")
        api.network("front")
        api.container("a")
        api.delete("Container", "a")
        clock.now += 11
        eventually(lambda: not api.get_host("h1").leases)


def test_a_quarantined_fixed_ip_is_for_the_same_container_only(overlay: Api) -> None:
    api = overlay
    api.container("web", host="h1", network="ov", fixed_ip="10.90.0.50")
    api.delete("Container", "web")
    with unchanged(api.store):
        e = rpc_error(lambda: api.container("db", host="h1", network="ov",
                                            fixed_ip="10.90.0.50"),
                      grpc.StatusCode.FAILED_PRECONDITION)
    assert details(e).startswith("container.fixed_ip: 10.90.0.50 was freed by container 'web'")
    assert api.container("web", host="h1", network="ov", fixed_ip="10.90.0.50").ip == \
        "10.90.0.50"
    report = api.ctl.GetIpam(pb.GetIpamRequest(network="ov"), timeout=TIMEOUT)
    assert "10.90.0.50" not in [q.subnet for q in report.quarantined]


# -- GetIpam, CheckIpam ----------------------------------------------------------------------


def test_get_ipam_shows_leases_allocations_and_history(overlay: Api) -> None:
    api = overlay
    api.container("a", host="h1", network="ov")
    api.container("b", host="h2", network="ov")
    report = api.ctl.GetIpam(pb.GetIpamRequest(network="ov"), timeout=TIMEOUT)
    assert [(x.host, x.subnet, x.expires_at) for x in report.leases] == [
        ("h1", "10.90.0.0/24", T0 + 3600), ("h2", "10.90.1.0/24", T0 + 3600)]
    assert [(a.container, a.address, a.host) for a in report.allocations] == [
        ("a", "10.90.0.2", "h1"), ("b", "10.90.1.2", "h2")]
    assert [e.kind for e in report.history] == ["lease", "allocate", "lease", "allocate"]
    rpc_error(lambda: api.ctl.GetIpam(pb.GetIpamRequest(network="nope"), timeout=TIMEOUT),
              grpc.StatusCode.NOT_FOUND)


def check(api: Api, network: str = "") -> list[tuple[str, str, str]]:
    report = api.ctl.CheckIpam(pb.GetIpamRequest(network=network), timeout=TIMEOUT)
    return [(p.kind, p.network, p.subject) for p in report.problems]


def corrupt(store: Store, key: str, value: bytes) -> None:
    assert store.txn([], [Put(key, value)]) is not None


def test_check_ipam_of_a_healthy_store_is_empty(overlay: Api) -> None:
    api = overlay
    api.container("a", host="h1", network="ov")
    api.container("b", host="h2", network="ov")
    api.delete("Container", "a")
    assert check(api) == []
    assert check(api, "ov") == []


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        pytest.param(keys.addr_key("ov", "10.90.0.77"),
                     to_json(Allocation("ov", "ghost", "eth0", "10.90.0.77", 24)),
                     ("leaked-address", "ov", "10.90.0.77"), id="stray-address"),
        pytest.param(keys.addr_key("ov", "10.90.0.99"),
                     to_json(Allocation("ov", "a", "eth0", "10.90.0.99", 24)),
                     ("duplicate-guard", "ov", "10.90.0.99"), id="second-address-guard"),
        pytest.param(keys.owner_key("ov", "a", "eth0"),
                     to_json(Allocation("ov", "a", "eth0", "10.90.5.2", 24)),
                     ("outside-lease", "ov", "10.90.5.2"), id="outside-lease"),
        pytest.param(keys.lease_key("ov", "ghost"),
                     to_json(Lease("ov", "ghost", "10.90.9.0/24", "10.90.9.1")),
                     ("orphan-lease", "ov", "10.90.9.0/24"), id="orphan-lease"),
        pytest.param(keys.subnet_key("ov", "10.90.7.0/24"), b"h1",
                     ("duplicate-guard", "ov", "10.90.7.0/24"), id="second-subnet-guard"),
        pytest.param(keys.subnet_key("ov", "10.90.8.0/24"), b"h3",
                     ("stray-guard", "ov", "10.90.8.0/24"), id="stray-subnet-guard"),
        pytest.param("/vni/77", b"ov", ("stray-guard", "ov", "vni 77"), id="stray-vni"),
    ],
)
def test_check_ipam_reports_a_corrupted_store(overlay: Api, key: str, value: bytes,
                                              expected: tuple[str, str, str]) -> None:
    api = overlay
    api.container("a", host="h1", network="ov")
    corrupt(api.store, key, value)
    assert expected in check(api)
    assert expected in check(api, "ov")


def test_check_ipam_reports_a_container_without_an_address(overlay: Api) -> None:
    api = overlay
    api.container("a", host="h1", network="ov")
    owner = keys.owner_key("ov", "a", "eth0")
    assert api.store.txn([], [ipam.Delete(owner), ipam.Delete(keys.addr_key("ov", "10.90.0.2"))])
    assert check(api) == [("missing-address", "ov", "a")]


# -- the CLI -------------------------------------------------------------------------------


@contextmanager
def cli_env(monkeypatch: pytest.MonkeyPatch, api: Api) -> Iterator[None]:
    target = api.channel._channel.target()  # type: ignore[attr-defined]
    monkeypatch.setenv("SDNCTL_CONTROLLER", target.decode())
    yield


def test_cli_ipam_and_ipam_check(overlay: Api, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    api = overlay
    api.container("a", host="h1", network="ov")
    with cli_env(monkeypatch, api):
        assert cli.main(["ipam", "--network", "ov"]) == 0
        out = capsys.readouterr().out
        assert "LEASES" in out and "10.90.0.0/24" in out and "10.90.0.2" in out
        assert cli.main(["ipam", "check"]) == 0
        assert capsys.readouterr().out.strip() == "IPAM is consistent"
        corrupt(api.store, keys.addr_key("ov", "10.90.0.77"),
                to_json(Allocation("ov", "ghost", "eth0", "10.90.0.77", 24)))
        assert cli.main(["ipam", "check", "--json"]) == 1
        assert '"leaked-address"' in capsys.readouterr().out
