"""Issue 21: the kernel's announcements as events (agent/kernel/kevents.py, packed here as the
kernel packs them) and which of them are drift (agent/drift.py), without root."""

from __future__ import annotations

import dataclasses
import socket
import struct
import threading

import pytest
from test_peer_pass import overlay, peer, state
from test_plan import WEB
from test_rtnl import address_payload, attr, link_payload, message, route_payload

from agent import drift
from agent.desired import DesiredState
from agent.kernel import kevents, nft, rtnl
from agent.kernel.kevents import (
    AddressGone,
    Forwarding,
    LinkChanged,
    NeighbourGone,
    NftCommit,
    Overrun,
    QdiscGone,
    RouteGone,
)
from agent.names import bridge_name, ifb_name, veth_name, vxlan_name
from agent.observed import ObservedLink

OURS_PID = 4242  # the agent's reconciler thread, in these tests


def netconf(family: int, index: int, forwarding: int) -> bytes:
    return message(kevents.RTM_NEWNETCONF, 0, bytes([family, 0, 0, 0])
                   + attr(kevents.NETCONFA_IFINDEX, struct.pack("=i", index))
                   + attr(kevents.NETCONFA_FORWARDING, struct.pack("=i", forwarding)))


def neighbour(family: int, index: int, dst: str, mac: str) -> bytes:
    body = rtnl.NDMSG.pack(family, index, 0x80, 0, 0) + \
        attr(rtnl.NDA_DST, socket.inet_aton(dst)) + \
        attr(rtnl.NDA_LLADDR, bytes.fromhex(mac.replace(":", "")))
    return message(rtnl.RTM_DELNEIGH, 0, body)


def test_announcements_parse_into_the_events_that_can_mean_drift() -> None:
    data = b"".join([
        message(rtnl.RTM_NEWLINK, 0, link_payload(7, "sdnv1", flags=1, master=3)),
        message(rtnl.RTM_DELLINK, 0, link_payload(8, "sdnv2", flags=0)),
        message(rtnl.RTM_DELADDR, 0, address_payload(3, "10.70.1.1", 24)),
        message(rtnl.RTM_DELADDR, 0, rtnl.IFADDRMSG.pack(socket.AF_INET6, 64, 0, 253, 3)
                + attr(rtnl.IFA_ADDRESS, socket.inet_pton(socket.AF_INET6, "fe80::1"))),
        message(rtnl.RTM_NEWADDR, 0, address_payload(3, "10.70.1.2", 24)),  # not drift: skipped
        message(rtnl.RTM_DELROUTE, 0, route_payload(24, 254, "10.70.2.0", oif=5)
                + attr(rtnl.RTA_DST, socket.inet_aton("10.70.2.0"))),
        message(rtnl.RTM_DELROUTE, 0, route_payload(0, 254, "192.0.2.1", oif=5)),  # default
        neighbour(socket.AF_INET, 5, "10.70.2.0", "0e:00:00:00:00:02"),
        neighbour(rtnl.AF_BRIDGE, 5, "192.0.2.2", "0e:00:00:00:00:02"),
        message(rtnl.RTM_DELQDISC, 0, rtnl.TCMSG.pack(0, 7, 0x10000, rtnl.TC_H_ROOT, 1)
                + attr(rtnl.TCA_KIND, b"tbf\0")),
        netconf(socket.AF_INET, kevents.NETCONFA_IFINDEX_ALL, 0),
        netconf(socket.AF_INET6, kevents.NETCONFA_IFINDEX_ALL, 1),
        netconf(socket.AF_INET, 3, 0),  # one interface's setting: not the namespace's
    ])
    assert kevents.parse_rtnl(data) == [
        LinkChanged(7, "sdnv1", up=True, gone=False, master=3),
        LinkChanged(8, "sdnv2", up=False, gone=True),
        AddressGone(3, "10.70.1.1/24"),
        RouteGone(5, "10.70.2.0/24", 254, 211),
        NeighbourGone(5, False, "10.70.2.0", "0e:00:00:00:00:02", 0x80),
        NeighbourGone(5, True, "192.0.2.2", "0e:00:00:00:00:02", 0x80),
        QdiscGone(7, root=True),
        Forwarding(ipv6=False, on=False),
        Forwarding(ipv6=True, on=True),
    ]


def nft_message(kind: int, *attrs: bytes) -> bytes:
    return message(kevents.NFNL_SUBSYS_NFTABLES << 8 | kind, 0, bytes(4) + b"".join(attrs))


def test_an_nftables_transaction_is_one_commit_with_its_tables_and_thread() -> None:
    parser = kevents.NftParser()
    table = attr(kevents.NFTA_TABLE, b"sdnctl\0")
    # Object messages, split across datagrams, then the generation with the committer's id.
    assert parser.feed(nft_message(2, table) + nft_message(5, table, attr(3, b"input\0"))) == []
    got = parser.feed(nft_message(8, attr(kevents.NFTA_TABLE, b"mine\0"))
                      + nft_message(kevents.NFT_MSG_NEWGEN, attr(1, struct.pack("!I", 9)),
                                    attr(kevents.NFTA_GEN_PROC_PID, struct.pack("!I", 777))))
    assert got == [NftCommit(frozenset({"sdnctl", "mine"}), 777)]
    # The next transaction starts afresh.
    assert parser.feed(nft_message(kevents.NFT_MSG_NEWGEN,
                                   attr(kevents.NFTA_GEN_PROC_PID, struct.pack("!I", 1)))) == \
        [NftCommit(frozenset(), 1)]
    # A set's elements, a message each, name the table first; a message that names it later
    # (or not at all) is read whole.
    element = nft_message(12, attr(kevents.NFTA_TABLE, b"sdnctl_policy\0"), attr(2, b"s_1\0"))
    assert parser.feed(element * 500 + nft_message(9, attr(2, b"s_1\0"),
                                                   attr(kevents.NFTA_TABLE, b"late\0"))
                       + nft_message(12, attr(2, b"s_1\0")) + element
                       + nft_message(kevents.NFT_MSG_NEWGEN,
                                     attr(kevents.NFTA_GEN_PROC_PID, struct.pack("!I", 5)))) == \
        [NftCommit(frozenset({"sdnctl_policy", "late"}), 5)]


# -- what is drift ---------------------------------------------------------------------------

NET = overlay(peer(2), dataclasses.replace(peer(3), subnet6="fd00:70:3::/64",
                                           vtep_ip6="fd00:70:3::"))
BR, VX = bridge_name("ov"), vxlan_name("ov")
CTR = dataclasses.replace(WEB, network="ov", ip="10.70.1.2", gateway="10.70.1.1",
                          ingress_bps=8_000_000, egress_bps=8_000_000)
VETH = veth_name(CTR.name, CTR.interface)
LINKS = {BR: 3, VX: 5, VETH: 7, ifb_name(VETH): 9, "mine0": 11}


def desired() -> DesiredState:
    return dataclasses.replace(state(NET), containers={CTR.name: CTR})


def observed_link(name: str, index: int, up: bool = True, master: str | None = None) -> \
        ObservedLink:
    return ObservedLink(name, index, None, None, master, 1450, up, ())


@pytest.fixture
def seen() -> drift.Drift:
    """A filter that has seen the host's links, as a pass observed them."""
    found = drift.Drift(lambda pid: pid == OURS_PID)
    found.observed({name: observed_link(name, index, master=BR if name == VETH else None)
                    for name, index in LINKS.items()})
    return found


WANTED = drift.wanted(desired())


@pytest.mark.parametrize(("event", "reason"), [
    (LinkChanged(7, VETH, up=True, gone=True), f"link {VETH} deleted"),
    (LinkChanged(3, BR, up=False, gone=False), f"link {BR} set down"),
    (LinkChanged(7, VETH, up=True, gone=False, master=None), f"link {VETH} set down or out"),
    (LinkChanged(5, "renamed", up=True, gone=False), f"link {VX} renamed renamed"),
    (AddressGone(3, "10.70.1.1/24"), f"address 10.70.1.1/24 removed from {BR}"),
    (AddressGone(5, "10.70.1.0/32"), f"address 10.70.1.0/32 removed from {VX}"),
    (RouteGone(5, "10.70.2.0/24", 254, 211), f"route 10.70.2.0/24 removed from {VX}"),
    (RouteGone(5, "fd00:70:3::/64", 254, 211), "route fd00:70:3::/64 removed"),
    (NeighbourGone(5, False, "10.70.3.0", "0e:00:00:00:00:03", 0x80), "neighbour 10.70.3.0"),
    (NeighbourGone(5, True, "192.0.2.2", "0e:00:00:00:00:02", 0x80), "FDB entry"),
    (QdiscGone(7, root=True), f"root qdisc removed from {VETH}"),
    (QdiscGone(9, root=True), f"root qdisc removed from {ifb_name(VETH)}"),
    (Forwarding(ipv6=False, on=False), "IPv4 forwarding turned off"),
    (NftCommit(frozenset({"sdnctl", "mine"}), 999), "nftables table(s) sdnctl changed by"),
    (NftCommit(frozenset({"sdnctl_policy"}), 999), "nftables table(s) sdnctl_policy"),
    (Overrun(), "kernel announcements lost"),
])
def test_a_change_that_takes_away_what_is_wanted_is_drift(
        seen: drift.Drift, event: kevents.KernelEvent, reason: str) -> None:
    (got,) = seen.check([event], lambda: WANTED)
    assert got.startswith(reason)


@pytest.mark.parametrize("event", [
    LinkChanged(11, "mine0", up=False, gone=True),  # not ours
    LinkChanged(3, BR, up=True, gone=False),  # still right
    LinkChanged(12, "sdnvnew", up=False, gone=False),  # a link being made: recorded
    AddressGone(11, "198.18.0.1/24"),
    AddressGone(3, "10.70.9.1/24"),  # an address the bridge should not have
    RouteGone(5, "10.70.9.0/24", 254, 211),  # a peer that left
    RouteGone(None, "10.70.2.0/24", 254, 211),
    NeighbourGone(3, False, "10.70.1.2", "0e:00:00:00:00:07", 0x02),  # the ARP cache's
    NeighbourGone(7, True, None, "0e:00:00:00:00:07", 0x02),  # a learnt bridge entry
    QdiscGone(7, root=False),
    Forwarding(ipv6=False, on=True),
    Forwarding(ipv6=True, on=False),  # the network is IPv4-only
    NftCommit(frozenset({"sdnctl"}), OURS_PID),  # our own commit
    NftCommit(frozenset({"mine"}), 999),
])
def test_our_own_writes_and_what_is_not_wanted_are_not_drift(
        seen: drift.Drift, event: kevents.KernelEvent) -> None:
    assert seen.check([event], lambda: WANTED) == []


def test_a_link_is_judged_on_the_change_from_right_to_wrong() -> None:
    """A veth is made down and outside its bridge, then enslaved and set up: no drift on the
    way; once right, going wrong is."""
    found = drift.Drift(lambda pid: False)
    found.observed({BR: observed_link(BR, 3)})
    steps = [LinkChanged(7, VETH, up=False, gone=False),
             LinkChanged(7, VETH, up=False, gone=False, master=3),
             LinkChanged(7, VETH, up=True, gone=False, master=3)]
    assert found.check(steps, lambda: WANTED) == []
    assert found.check([LinkChanged(7, VETH, up=False, gone=False, master=3)], lambda: WANTED) != []


def test_a_link_our_own_code_deletes_is_not_drift_however_late_announced(
        seen: drift.Drift) -> None:
    seen.expect_gone(VETH)
    assert seen.check([LinkChanged(7, VETH, up=False, gone=False, master=None),
                       LinkChanged(7, VETH, up=False, gone=True)], lambda: WANTED) == []
    # A CNI DEL, ADD and DEL of one attachment (one veth name) before the watcher reads the
    # announcements of any of them: both deletions are ours.
    seen.expect_gone(VETH)
    seen.expect_gone(VETH)
    assert seen.check([LinkChanged(13, VETH, up=True, gone=True),
                       LinkChanged(14, VETH, up=True, gone=False, master=3),
                       LinkChanged(14, VETH, up=True, gone=True)], lambda: WANTED) == []
    # Deleted by someone else afterwards: drift; and so after a deletion that did not happen.
    assert seen.check([LinkChanged(15, VETH, up=True, gone=False, master=3),
                       LinkChanged(15, VETH, up=True, gone=True)], lambda: WANTED) != []
    seen.expect_gone(VETH)
    seen.not_gone(VETH)
    assert seen.check([LinkChanged(16, VETH, up=True, gone=False, master=3),
                       LinkChanged(16, VETH, up=True, gone=True)], lambda: WANTED) != []


def test_a_link_only_the_announcements_named_is_known_by_its_index() -> None:
    found = drift.Drift(lambda pid: False)
    found.check([LinkChanged(21, VX, up=True, gone=False)], lambda: WANTED)
    assert found.check([RouteGone(21, "10.70.2.0/24", 254, 211)], lambda: WANTED) != []
    # A pass's observation does not override what the announcements said since.
    found.observed({"other": observed_link("other", 21)})
    assert found.check([RouteGone(21, "10.70.2.0/24", 254, 211)], lambda: WANTED) != []


def test_nothing_is_wanted_before_the_first_snapshot() -> None:
    assert drift.wanted(dataclasses.replace(desired(), synced=False)) == drift.Wanted()
    want = drift.wanted(desired())
    assert want.forwarding and not want.forwarding6
    assert want.masters == {VETH: BR}
    assert (VX, "0e:00:00:00:00:02", "192.0.2.2") in want.fdb
    assert (VX, "fd00:70:3::") in want.neighbours


def test_what_cannot_be_drift_does_not_compute_what_is_wanted(seen: drift.Drift) -> None:
    """Our own nftables commit, a new link, another attribute of a known one: every host
    hears these for each change of a 100-host overlay, so they must not recompute ``wanted``
    (a set per peer)."""
    def refuse() -> drift.Wanted:
        raise AssertionError("wanted computed")

    assert seen.check([NftCommit(frozenset({"sdnctl"}), OURS_PID),
                       NftCommit(frozenset({"mine"}), 999),
                       LinkChanged(30, "sdnvnew", up=False, gone=False),
                       LinkChanged(3, BR, up=True, gone=False)], refuse) == []


def test_a_commit_of_ours_is_known_after_its_thread_ended(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The firewall's cleanup runs in a timer thread that ends at once; the kernel names that
    thread in its announcement, read later: still ours (``nft.ran_here``)."""
    monkeypatch.setattr(nft, "_library", lambda: object())
    monkeypatch.setattr(nft, "_run_library", lambda lib, script, flags: nft.Result(0, "", ""))
    ran: list[int] = []
    worker = threading.Thread(target=lambda: (ran.append(threading.get_native_id()),
                                              nft.run("delete element inet sdnctl x { 1 }")))
    worker.start()
    worker.join()
    assert kevents.own_thread(ran[0])
    assert not kevents.own_thread(0)
