"""Issue 10 without root: the fault-injection switch, how repairs are named, and a pass that
sets up no container while the firewall (its anti-spoofing guard) could not be applied."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_plan import DB, FRONT, WEB, desired

from agent import plan as p
from agent.desired import DesiredNetwork, DesiredPeer, DesiredState, LocalHost
from agent.kernel.fakes import FakeFirewall, FakeLinks, FakeRuntime, FakeSysctls
from agent.names import vxlan_alias, vxlan_name
from agent.observed import ObservedPeers, ObservedVxlan
from agent.reconcile import Reconciler, peers_after_set
from sdnctl.api import faults


@pytest.fixture
def armed() -> Iterator[None]:
    yield
    faults.configure("")


def test_faults_are_off_unless_armed(armed: None) -> None:
    faults.configure("")
    for step in faults.STEPS:
        faults.point(step)  # nothing happens


def test_a_fail_fault_raises_at_its_step_only(armed: None) -> None:
    faults.configure("veth:fail, route:fail")
    assert faults.armed() == {"veth": "fail", "route": "fail"}
    faults.point("namespace")
    with pytest.raises(faults.InjectedFault, match="'veth'"):
        faults.point("veth")


@pytest.mark.parametrize("spec", ["veth", "veth:explode", "bogus:fail", "veth:fail,:kill"])
def test_a_bad_fault_spec_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="SDNCTL_FAULT"):
        faults.parse(spec)


def test_every_action_is_described_and_restarts_are_not_repairs() -> None:
    actions = p.plan(desired(WEB, DB), p.Observed())
    lines = [p.describe(a) for a in actions]
    assert lines == ["sysctl net.ipv4.ip_forward=1", "bridge sdnb1b78eb3b of network 'front'",
                     "nftables tables sdnctl", "container 'db': sandbox, link, start",
                     "container 'web': sandbox, link, start"]
    assert all(p.is_repair(a) for a in actions)
    restart = p.SetupContainer(WEB, FRONT, netns=False, attach=False, start=True,
                               stop_first=False)
    assert not p.is_repair(restart)
    assert p.describe(p.RemoveContainer("web", stop=True)) == "remove container 'web'"


def test_no_container_is_set_up_while_the_firewall_fails(tmp_path: Path) -> None:
    reconciler = Reconciler(str(tmp_path), links=FakeLinks(), fw=FakeFirewall(),
                            sysctls=FakeSysctls(), runtime=FakeRuntime())
    applied: list[Any] = []

    def apply(action: Any) -> None:
        applied.append(type(action).__name__)
        if isinstance(action, p.SyncFirewall):
            raise RuntimeError("nft said no")

    reconciler.observe = lambda desired, full=True: p.Observed()  # type: ignore[method-assign]
    reconciler.apply = apply  # type: ignore[method-assign]
    outcome = reconciler.reconcile(desired(WEB, DB))
    assert applied == ["EnableForwarding", "EnsureBridge", "SyncFirewall"]
    assert outcome.errors == {"": "nft said no",
                              "db": "waiting for the firewall, which could not be applied",
                              "web": "waiting for the firewall, which could not be applied"}


# --- peer entries the agent wrote, without dumping them again ----------------------------------

PEER = DesiredPeer("h2", "10.70.2.0/24", "192.0.2.2", "0e:00:00:00:00:02", "10.70.2.0")
OTHER = DesiredPeer("h3", "10.70.3.0/24", "192.0.2.3", "0e:00:00:00:00:03", "10.70.3.0")


def _overlay(*peers: DesiredPeer) -> DesiredNetwork:
    return DesiredNetwork("ov", "overlay", "10.70.1.0/24", "10.70.1.1", 24, 1450, True,
                          cidr="10.70.0.0/16", vni=4096, peers=peers)


def _entries(*peers: DesiredPeer) -> ObservedPeers:
    return ObservedPeers(tuple(sorted((x.subnet, x.vtep_ip) for x in peers)),
                         tuple(sorted((x.vtep_ip, x.vtep_mac) for x in peers)),
                         tuple(sorted((x.vtep_mac, x.underlay_ip) for x in peers)))


@pytest.mark.parametrize("have", [
    ObservedPeers(),
    _entries(OTHER),
    # stale values under the keys the peer's entries replace: its subnet, VTEP address, MAC
    _entries(OTHER, dataclasses.replace(PEER, vtep_ip="10.70.9.0", underlay_ip="192.0.2.9")),
    _entries(OTHER, dataclasses.replace(PEER, vtep_mac="0e:00:00:00:00:99")),
])
def test_peers_after_set_is_what_the_planner_wants(have: ObservedPeers) -> None:
    after = peers_after_set(have, PEER)
    assert (PEER.subnet, PEER.vtep_ip) in after.routes
    assert (PEER.vtep_ip, PEER.vtep_mac) in after.neighbours
    assert (PEER.vtep_mac, PEER.underlay_ip) in after.fdb
    assert set(_entries(OTHER).routes) & set(have.routes) <= set(after.routes)  # others kept
    assert all(t == tuple(sorted(t)) for t in (after.routes, after.neighbours, after.fdb))
    # planned against it, PEER needs nothing more (the stale keys of an old MAC may go)
    net = _overlay(PEER, OTHER) if OTHER.subnet in dict(have.routes) else _overlay(PEER)
    local = LocalHost("192.0.2.1", "eth0", "0e:00:00:00:00:01")
    device = vxlan_name(net.name)
    vx = ObservedVxlan(device, 7, "vxlan", vxlan_alias(net.name), None, net.mtu, True,
                       (net.vtep_cidr,), net.vni, net.vxlan_port, local.underlay_ip, "eth0",
                       False, local.vtep_mac)
    actions = p.plan_overlay(net, DesiredState(synced=True, local=local), p.Observed(
        vxlans={device: vx}, peers={device: after}))
    assert not [a for a in actions if isinstance(a, (p.SetPeer, p.EnsureVxlan))], actions
