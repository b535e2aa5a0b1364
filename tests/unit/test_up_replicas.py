"""`sdnctl up` with several controller replicas: each lab agent gets the addresses rotated by
its host's position, so the agents spread over the replicas (issue 21)."""

from __future__ import annotations

from collections import Counter

from sdnctl.topology.deploy import rotated


def test_one_controller_is_left_as_it_is() -> None:
    assert [rotated("unix:/a.sock", i) for i in range(3)] == ["unix:/a.sock"] * 3


def test_agents_spread_evenly_over_replicas() -> None:
    address = "unix:/a.sock, unix:/b.sock,10.0.0.1:7000"
    got = [rotated(address, i) for i in range(100)]
    assert got[0] == "unix:/a.sock,unix:/b.sock,10.0.0.1:7000"
    assert got[1] == "unix:/b.sock,10.0.0.1:7000,unix:/a.sock"
    assert got[5] == "10.0.0.1:7000,unix:/a.sock,unix:/b.sock"
    first = Counter(a.split(",")[0] for a in got)
    assert sorted(first.values()) == [33, 33, 34]
    # every agent still knows every replica, for its failover
    assert all(sorted(a.split(",")) == sorted(got[0].split(",")) for a in got)
