"""Which hosts have an agent connected, across replicas sharing one store (issue 21): a listing
asks the store once for all its hosts, not twice per host another replica serves."""

from __future__ import annotations

from apitest import CountingReads

from sdnctl.controller.servicers import Connections
from sdnctl.controller.store.memory import MemoryStore

BEAT = 5.0


def test_a_listing_reads_the_other_replicas_records_once_for_all_hosts() -> None:
    now = [1000.0]
    store = CountingReads(MemoryStore())
    a, b, dead = (Connections(store, heartbeat=BEAT, clock=lambda: now[0])  # type: ignore[arg-type]
                  for _ in range(3))
    dead.beat()
    dead.opened("h45")  # its heartbeat goes stale below: h45 is no longer connected
    now[0] += 4 * BEAT
    a.beat()
    b.beat()
    for i in range(40):
        a.opened(f"h{i}")
    b.opened("h40")
    b.opened("h41")
    b.closed("h41")
    hosts = [f"h{i}" for i in range(50)]

    store.reads = 0
    assert b.connected_among(hosts) == {f"h{i}" for i in range(41)}
    # One range of every record, one heartbeat read per replica holding a wanted host (a, dead).
    assert store.reads == 3
    # One host alone: its own records only, as before.
    store.reads = 0
    assert b.connected("h7") and not b.connected("h45") and not b.connected("h41")
    assert a.connected("h40") and a.connected("h7")
    # A replica's own streams need no read at all.
    store.reads = 0
    assert a.connected_among([f"h{i}" for i in range(40)]) == {f"h{i}" for i in range(40)}
    assert store.reads == 0


def test_without_a_shared_store_only_own_streams_count() -> None:
    store = CountingReads(MemoryStore())
    alone = Connections(store)  # type: ignore[arg-type]
    alone.opened("h1")
    assert alone.connected_among(["h1", "h2"]) == {"h1"}
    assert store.reads == 0
