"""Issue 21: a change of overlays' peers alone gets the peer work alone, a change of name tables
alone no pass, against the reconciler's fakes (no root)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent import plan as p
from agent.desired import (
    Changed,
    DesiredName,
    DesiredNetwork,
    DesiredPeer,
    DesiredState,
    LocalHost,
    networks_changed,
)
from agent.kernel.fakes import FakeFirewall, FakeLinks, FakeSysctls
from agent.names import vxlan_name
from agent.reconcile import Reconciler

LOCAL = LocalHost(underlay_ip="192.0.2.1", underlay_dev="ul0", vtep_mac="0e:00:00:00:00:01")


def peer(n: int, mac: str = "") -> DesiredPeer:
    return DesiredPeer(f"h{n}", f"10.70.{n}.0/24", f"192.0.2.{n}", mac or f"0e:00:00:00:00:{n:02x}",
                       f"10.70.{n}.0")


def overlay(*peers: DesiredPeer, names: tuple[DesiredName, ...] = (),
            mtu: int = 1450) -> DesiredNetwork:
    return DesiredNetwork("ov", "overlay", "10.70.1.0/24", "10.70.1.1", 24, mtu, True,
                          cidr="10.70.0.0/16", vni=4096, peers=peers, names=names)


def state(net: DesiredNetwork) -> DesiredState:
    return DesiredState(revision=1, synced=True, networks={net.name: net}, local=LOCAL)


NAME = DesiredName("c9", (), "10.70.9.2")


@pytest.mark.parametrize(("after", "expected"), [
    (overlay(peer(2), peer(3), peer(4)), Changed.PEERS),  # a host joined
    (overlay(peer(2)), Changed.PEERS),  # one left
    (overlay(peer(2), peer(3, mac="0e:00:00:00:00:33")), Changed.PEERS),  # one moved
    (overlay(peer(2), peer(3), names=(NAME,)), Changed.NAMES),  # a container elsewhere
    (overlay(peer(2), names=(NAME,)), Changed.PEERS | Changed.NAMES),
    (overlay(peer(2), peer(3), mtu=1400), Changed.HOST),  # anything else: a pass
    (overlay(peer(2), peer(4), mtu=1400), Changed.HOST),
])
def test_what_a_change_of_networks_is(after: DesiredNetwork, expected: Changed) -> None:
    before = {"ov": overlay(peer(2), peer(3))}
    assert networks_changed(before, {"ov": after}) == expected
    assert networks_changed(before, dict(before)) == Changed(0)


def test_a_network_that_comes_or_goes_is_a_pass() -> None:
    ov = {"ov": overlay(peer(2))}
    other = dataclasses.replace(overlay(peer(2)), name="other")
    assert networks_changed(ov, {**ov, "other": other}) == Changed.HOST
    assert networks_changed({**ov, "other": other}, ov) == Changed.HOST


def reconciler(tmp_path: Path) -> tuple[Reconciler, FakeLinks, FakeFirewall]:
    links, fw = FakeLinks(), FakeFirewall()
    return Reconciler(str(tmp_path), links=links, fw=fw, sysctls=FakeSysctls(),
                      local=LOCAL), links, fw


@pytest.mark.parametrize("after", [
    overlay(peer(2), peer(3), peer(4)),
    overlay(peer(3)),
    overlay(peer(2), peer(3, mac="0e:00:00:00:00:33")),
    overlay(),
], ids=["join", "leave", "move", "last-leaves"])
def test_the_peer_pass_does_what_a_whole_pass_would(tmp_path: Path,
                                                    after: DesiredNetwork) -> None:
    r, links, fw = reconciler(tmp_path)
    before = state(overlay(peer(2), peer(3)))
    assert r.reconcile(before).errors == {}
    assert r.reconcile(before, full=False).actions == []  # the device is observed as wanted
    writes = fw.writes
    outcome = r.sync_peers(state(after))
    assert outcome is not None and outcome.errors == {}
    assert outcome.actions  # it had work to do, the firewall's member list among it when
    # the members' underlay addresses changed (not for a new VTEP MAC) ...
    members = {x.underlay_ip for x in after.peers} != {"192.0.2.2", "192.0.2.3"}
    assert fw.writes == writes + members
    # ... and left nothing for a whole pass that reads everything again.
    assert p.plan(state(after), r.observe(state(after), full=True)) == []
    device = vxlan_name("ov")
    assert links.peers[device].fdb == tuple(sorted((x.vtep_mac, x.underlay_ip)
                                                   for x in after.peers))


def test_no_peer_pass_without_a_pass_before_it(tmp_path: Path) -> None:
    r, links, fw = reconciler(tmp_path)
    assert r.sync_peers(state(overlay(peer(2)))) is None  # nothing observed yet
    assert (links.links, links.peers, fw.writes) == ({}, {}, 0)


def test_no_peer_pass_while_the_device_needs_the_pass(tmp_path: Path) -> None:
    """A device that the last pass made (not found) has no dump of its peers yet; one whose
    wanted shape changed needs EnsureVxlan: both are a whole pass's work, not done here."""
    r, links, fw = reconciler(tmp_path)
    assert r.reconcile(state(overlay(peer(2)))).errors == {}  # made the device
    assert r.sync_peers(state(overlay(peer(2), peer(3)))) is None
    assert r.reconcile(state(overlay(peer(2)))).actions == []  # now observed as wanted
    moved = dataclasses.replace(state(overlay(peer(2), peer(3))),
                                local=dataclasses.replace(LOCAL, underlay_ip="192.0.2.99"))
    peers_before, writes = dict(links.peers), fw.writes
    assert r.sync_peers(moved) is None
    assert (links.peers, fw.writes) == (peers_before, writes)
