"""The reconciler batches runs of SetPeer of one device (pure)."""

from __future__ import annotations

from agent import plan as p
from agent.desired import DesiredPeer
from agent.reconcile import RemovePeers, SetPeers, group_peers


def peer(n: int) -> DesiredPeer:
    return DesiredPeer(f"h{n}", f"10.70.{n}.0/24", f"192.0.2.{n}", f"02:00:00:00:00:{n:02x}",
                       f"10.70.{n}.0")


def test_consecutive_set_peers_of_one_device_become_one_batch_in_order() -> None:
    actions: list[p.Action] = [
        p.RemoveNeighbour("sdnxa", "10.70.9.0"),
        p.SetPeer("sdnxa", peer(1)), p.SetPeer("sdnxa", peer(2)), p.SetPeer("sdnxa", peer(3)),
        p.SetPeer("sdnxb", peer(1)),
        p.RemovePeerRoute("sdnxb", "10.70.9.0/24"),
        p.SetPeer("sdnxb", peer(2)),
    ]
    assert group_peers(actions) == [
        RemovePeers("sdnxa", neighbours=("10.70.9.0",)),
        SetPeers("sdnxa", (peer(1), peer(2), peer(3))),
        SetPeers("sdnxb", (peer(1),)),
        RemovePeers("sdnxb", routes=("10.70.9.0/24",)),  # order kept: no batch across it
        SetPeers("sdnxb", (peer(2),)),
    ]
    assert group_peers([]) == []


def test_removals_of_one_device_become_one_batch() -> None:
    """A host that left: its route, neighbour and FDB entry on each overlay's device, planned
    one after the other, go in one batch per device."""
    actions: list[p.Action] = [
        p.RemovePeerRoute("sdnxa", "10.70.9.0/24"), p.RemovePeerRoute("sdnxa", "10.70.8.0/24"),
        p.RemoveNeighbour("sdnxa", "10.70.9.0"), p.RemoveFdb("sdnxa", "02:00:00:00:00:09",
                                                              "192.0.2.9"),
        p.RemovePeerRoute("sdnxb", "10.71.9.0/24"),
        p.SetPeer("sdnxb", peer(1)),
        p.RemoveFdb("sdnxb", "02:00:00:00:00:09", "192.0.2.9"),
    ]
    assert group_peers(actions) == [
        RemovePeers("sdnxa", ("10.70.9.0/24", "10.70.8.0/24"), ("10.70.9.0",),
                    (("02:00:00:00:00:09", "192.0.2.9"),)),
        RemovePeers("sdnxb", routes=("10.71.9.0/24",)),
        SetPeers("sdnxb", (peer(1),)),
        RemovePeers("sdnxb", fdb=(("02:00:00:00:00:09", "192.0.2.9"),)),
    ]
