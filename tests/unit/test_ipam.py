"""IPAM: the pure arithmetic, then allocation through a real Store (memory and SQLite)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from netaddr import IPAddress, IPNetwork

from sdnctl.api.model import Allocation, Lease, Network
from sdnctl.controller import ipam
from sdnctl.controller.errors import AlreadyExists, Conflict, Exhausted, Invalid
from sdnctl.controller.store.base import Compare, Delete, Put, Store
from sdnctl.controller.store.memory import MemoryStore
from sdnctl.controller.store.sqlite import SqliteStore

# -- validate_cidr ------------------------------------------------------------------------------


def test_validate_cidr_accepts_a_network() -> None:
    assert ipam.validate_cidr("10.88.0.0/16", "subnet") == IPNetwork("10.88.0.0/16")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("10.88.0.1/16", "host bits set; did you mean 10.88.0.0/16?"),
        ("fd00::/64", "only IPv4 networks are supported"),
        ("10.88.0.0", "not a CIDR"),
        ("10.88/16", "not a CIDR"),
        ("10.88.0.0/33", "not a CIDR"),
        ("300.1.0.0/16", "not a CIDR"),
        ("front", "not a CIDR"),
        ("", "not a CIDR"),
        (16, "expected a CIDR string"),
    ],
)
def test_validate_cidr_rejects(value: object, words: str) -> None:
    with pytest.raises(Invalid) as caught:
        ipam.validate_cidr(value, "networks[0].subnet")
    assert caught.value.field == "networks[0].subnet"
    assert words in caught.value.message


# -- host_prefix_for ------------------------------------------------------------------------------


def test_host_prefix_for() -> None:
    assert ipam.host_prefix_for("10.88.0.0/16", 24) == 24
    assert ipam.host_prefix_for("10.88.0.0/26", 24) == 26  # small network: leased whole
    assert ipam.host_prefix_for("10.88.0.0/16", 30) == 30


@pytest.mark.parametrize(
    ("cidr", "prefix", "field"),
    [
        ("10.88.0.0/16", 31, "host_prefix"),
        ("10.88.0.0/16", 0, "host_prefix"),
        ("10.88.0.0/31", 24, "subnet"),
        ("10.88.0.1/16", 24, "subnet"),
    ],
)
def test_host_prefix_for_rejects(cidr: str, prefix: int, field: str) -> None:
    with pytest.raises(Invalid) as caught:
        ipam.host_prefix_for(cidr, prefix)
    assert caught.value.field == field


def test_host_prefix_for_names_the_fields_it_is_given() -> None:
    with pytest.raises(Invalid) as caught:
        ipam.host_prefix_for("10.88.0.0/16", 31, "networks[2].host_prefix")
    assert caught.value.field == "networks[2].host_prefix"
    with pytest.raises(Invalid) as caught:
        ipam.host_prefix_for("10.88.0.0/32", 24, "networks[2].host_prefix")
    assert caught.value.field == "networks[2].subnet"


# -- pick_subnet ----------------------------------------------------------------------------------


def test_pick_subnet_lowest_free_and_aligned() -> None:
    assert ipam.pick_subnet("10.88.0.0/16", 24, set()) == "10.88.0.0/24"
    assert ipam.pick_subnet("10.88.0.0/16", 24, {"10.88.0.0/24"}) == "10.88.1.0/24"
    assert ipam.pick_subnet("10.88.0.0/16", 24, {"10.88.1.0/24"}) == "10.88.0.0/24"
    taken = {"10.88.0.0/24", "10.88.2.0/24"}
    assert ipam.pick_subnet("10.88.0.0/16", 24, taken) == "10.88.1.0/24"


def test_pick_subnet_skips_overlapping_subnets_of_other_sizes() -> None:
    # A /26 taken inside the first /24 rules the whole /24 out.
    assert ipam.pick_subnet("10.88.0.0/16", 24, {"10.88.0.64/26"}) == "10.88.1.0/24"
    # A /23 taken covers two /24s.
    assert ipam.pick_subnet("10.88.0.0/16", 24, {"10.88.0.0/23"}) == "10.88.2.0/24"
    # A /24 taken leaves the rest of its /23 neighbourhood for /25s.
    assert ipam.pick_subnet("10.88.0.0/16", 25, {"10.88.0.0/24"}) == "10.88.1.0/25"


def test_pick_subnet_exhaustion() -> None:
    taken = {f"10.88.{i}.0/24" for i in range(4)}
    assert ipam.pick_subnet("10.88.0.0/22", 24, taken) is None
    assert ipam.pick_subnet("10.88.0.0/22", 24, taken - {"10.88.3.0/24"}) == "10.88.3.0/24"
    assert ipam.pick_subnet("10.88.0.0/24", 24, {"10.88.0.0/24"}) is None


def test_pick_subnet_is_always_aligned() -> None:
    taken: set[str] = set()
    for _ in range(16):
        subnet = ipam.pick_subnet("10.0.0.0/24", 28, taken)
        assert subnet is not None
        net = IPNetwork(subnet)
        assert net.ip == net.network and net.prefixlen == 28
        taken.add(subnet)
    assert ipam.pick_subnet("10.0.0.0/24", 28, taken) is None


# -- addresses ------------------------------------------------------------------------------------


def test_gateway_of() -> None:
    assert ipam.gateway_of("10.88.3.0/24") == "10.88.3.1"
    assert ipam.gateway_of("10.88.0.8/29") == "10.88.0.9"


def test_pick_address_skips_network_broadcast_and_gateway() -> None:
    subnet = "10.88.0.0/29"  # .0 network, .1 gateway, .7 broadcast: .2 to .6 usable
    taken: set[str] = set()
    handed = []
    while (address := ipam.pick_address(subnet, "10.88.0.1", taken)) is not None:
        handed.append(address)
        taken.add(address)
    assert handed == [f"10.88.0.{i}" for i in range(2, 7)]


def test_pick_address_reuses_lowest_hole_and_honours_any_gateway() -> None:
    assert ipam.pick_address("10.88.0.0/24", "10.88.0.1", {"10.88.0.2", "10.88.0.4"}) == (
        "10.88.0.3"
    )
    assert ipam.pick_address("10.88.0.0/29", "10.88.0.2", set()) == "10.88.0.1"
    assert ipam.pick_address("10.88.0.0/30", "10.88.0.1", {"10.88.0.2"}) is None


# -- through a store ------------------------------------------------------------------------------

FRONT = Network("front", "10.88.0.0/16")


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made: Store = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "s.db")
    yield made
    made.close()


NOW = 1_700_000_000


def test_leases_are_distinct_and_idempotent(store: Store) -> None:
    h1 = ipam.ensure_lease(store, FRONT, "h1", now=NOW)
    h2 = ipam.ensure_lease(store, FRONT, "h2", now=NOW)
    assert h1 == Lease("front", "h1", "10.88.0.0/24", "10.88.0.1", NOW, NOW + 3600)
    assert h2 == Lease("front", "h2", "10.88.1.0/24", "10.88.1.1", NOW, NOW + 3600)
    revision = store.revision()
    assert ipam.ensure_lease(store, FRONT, "h1") == h1
    assert store.revision() == revision  # nothing written the second time
    assert ipam.list_leases(store) == [h1, h2]
    assert ipam.list_leases(store, network="front", host="h2") == [h2]
    assert ipam.get_lease(store, "front", "h1") == h1
    assert ipam.get_lease(store, "front", "h3") is None


def test_network_exhausted_for_a_new_host(store: Store) -> None:
    small = Network("small", "10.90.0.0/23")
    ipam.ensure_lease(store, small, "h1")
    ipam.ensure_lease(store, small, "h2")
    with pytest.raises(Exhausted, match="network 'small' has no free /24 left for host 'h9'"):
        ipam.ensure_lease(store, small, "h9")


def test_allocation_is_idempotent_per_key(store: Store) -> None:
    lease = ipam.ensure_lease(store, FRONT, "h1")
    a = ipam.allocate_address(store, FRONT, lease, "web", "eth0")
    assert a == Allocation("front", "web", "eth0", "10.88.0.2", 24)
    revision = store.revision()
    assert ipam.allocate_address(store, FRONT, lease, "web", "eth0") == a
    assert store.revision() == revision
    b = ipam.allocate_address(store, FRONT, lease, "web", "eth1")
    c = ipam.allocate_address(store, FRONT, lease, "db", "eth0")
    assert [b.address, c.address] == ["10.88.0.3", "10.88.0.4"]
    assert ipam.list_allocations(store, "front") == [a, b, c]


def test_release_frees_the_address_for_reuse(store: Store) -> None:
    lease = ipam.ensure_lease(store, FRONT, "h1")
    a = ipam.allocate_address(store, FRONT, lease, "web", "eth0")
    ipam.allocate_address(store, FRONT, lease, "db", "eth0")
    assert ipam.release_address(store, FRONT, "web", "eth0") == a
    assert ipam.release_address(store, FRONT, "web", "eth0") is None
    assert ipam.release_ops(store, FRONT, "web", "eth0") == []
    # Quarantined for everyone else for 60 s, then the lowest free address again.
    assert ipam.allocate_address(store, FRONT, lease, "cache", "eth0").address != a.address
    later = ipam.now_seconds() + 61
    assert ipam.allocate_address(store, FRONT, lease, "app", "eth0", now=later).address == \
        a.address


def test_lease_and_address_commit_in_one_txn(store: Store) -> None:
    """What the controller does: a new lease, an address and its own record, together."""
    lease, lease_cmp, lease_puts = ipam.plan_lease(store, FRONT, "h1")
    allocation, addr_cmp, addr_puts = ipam.plan_address(store, FRONT, lease, "web", "eth0")
    ops = [*lease_puts, *addr_puts, Put("/containers/web", b"{}")]
    revision = store.txn([*lease_cmp, *addr_cmp, Compare("/containers/web", 0)], ops)
    assert revision == 1
    assert ipam.get_lease(store, FRONT, "h1") == lease
    assert ipam.list_allocations(store, FRONT) == [allocation]


def test_exhausted_host_subnet_leaves_store_unchanged(store: Store) -> None:
    tiny = Network("tiny", "10.99.0.0/16", host_prefix=29)
    lease = ipam.ensure_lease(store, tiny, "h1")
    assert lease.subnet == "10.99.0.0/29"
    for i in range(5):
        ipam.allocate_address(store, tiny, lease, f"c{i}", "eth0")
    before = store.range("")
    message = "subnet 10.99.0.0/29 of network 'tiny' on host 'h1' has no free address"
    with pytest.raises(Exhausted, match=message):
        ipam.allocate_address(store, tiny, lease, "c5", "eth0")
    assert store.range("") == before
    addresses = [a.address for a in ipam.list_allocations(store, tiny)]
    assert addresses == [f"10.99.0.{i}" for i in range(2, 7)]


def test_bad_names_are_invalid(store: Store) -> None:
    lease = ipam.ensure_lease(store, FRONT, "h1")
    with pytest.raises(Invalid) as caught:
        ipam.allocate_address(store, FRONT, lease, "Bad_Name", "eth0")
    assert caught.value.field == "container"
    with pytest.raises(Invalid) as caught:
        ipam.allocate_address(store, FRONT, lease, "web", "a/b")
    assert caught.value.field == "interface"
    with pytest.raises(Invalid) as caught:
        ipam.ensure_lease(store, Network("bad", "10.0.0.1/8"), "h1")
    assert caught.value.field == "subnet"


def test_concurrent_allocations_never_collide(store: Store) -> None:
    wide = Network("wide", "10.88.0.0/16", host_prefix=22)  # 320 addresses need more than a /24
    lease = ipam.ensure_lease(store, wide, "h1")
    results: list[Allocation] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        try:
            for i in range(20):
                a = ipam.allocate_address(store, wide, lease, f"c{n}-{i}", "eth0")
                with lock:
                    results.append(a)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    addresses = [a.address for a in results]
    assert len(addresses) == 320
    assert len(set(addresses)) == 320
    subnet = IPNetwork(lease.subnet)
    gateway = IPAddress(lease.gateway)
    for address in map(IPAddress, addresses):
        assert address in subnet and address not in (subnet.network, subnet.broadcast, gateway)
    stored = ipam.list_allocations(store, wide)
    assert sorted(stored, key=lambda a: a.container) == sorted(results, key=lambda a: a.container)


def test_commit_with_retry_gives_up_with_conflict(store: Store) -> None:
    def never_holds() -> tuple[list[Compare], list[Put | Delete], None]:
        return [Compare("/nope", 42)], [], None

    with pytest.raises(Conflict, match="gave up"):
        ipam.commit_with_retry(store, never_holds, timeout=0.05)


# -- gateway, ip_range, fixed addresses -----------------------------------------------------------

DOCKERISH = Network("dock", "10.77.0.0/24", host_prefix=24, gateway="10.77.0.254",
                    ip_range="10.77.0.8/30")


def test_pick_address_stays_inside_the_ip_range() -> None:
    # The /30 range holds .8 to .11; the subnet's network, broadcast and gateway stay out anyway.
    assert ipam.pick_address("10.77.0.0/24", "10.77.0.254", set(), "10.77.0.8/30") == "10.77.0.8"
    taken = {"10.77.0.8", "10.77.0.9", "10.77.0.10"}
    assert ipam.pick_address("10.77.0.0/24", "10.77.0.1", taken, "10.77.0.8/30") == "10.77.0.11"
    taken.add("10.77.0.11")
    assert ipam.pick_address("10.77.0.0/24", "10.77.0.1", taken, "10.77.0.8/30") is None
    # A range as wide as the subnet still skips network, broadcast and gateway.
    assert ipam.pick_address("10.77.0.0/30", "10.77.0.1", set(), "10.77.0.0/30") == "10.77.0.2"
    assert ipam.pick_address("10.77.0.0/24", "10.77.0.8", set(), "10.77.0.8/31") == "10.77.0.9"


def test_lease_of_a_network_with_a_gateway_uses_it(store: Store) -> None:
    lease = ipam.ensure_lease(store, DOCKERISH, "h1", now=NOW)
    assert lease == Lease("dock", "h1", "10.77.0.0/24", "10.77.0.254", NOW, NOW + 3600)
    with_range_only = Network("r", "10.78.0.0/24", host_prefix=24, ip_range="10.78.0.128/25")
    assert ipam.ensure_lease(store, with_range_only, "h1").gateway == "10.78.0.1"


def test_ip_range_exhaustion_leaves_store_unchanged(store: Store) -> None:
    lease = ipam.ensure_lease(store, DOCKERISH, "h1")
    got = [ipam.allocate_address(store, DOCKERISH, lease, f"c{i}", "eth0").address
           for i in range(4)]
    assert got == ["10.77.0.8", "10.77.0.9", "10.77.0.10", "10.77.0.11"]
    before = store.range("")
    with pytest.raises(Exhausted) as caught:
        ipam.allocate_address(store, DOCKERISH, lease, "c4", "eth0")
    assert str(caught.value) == ("ip_range 10.77.0.8/30 of network 'dock' on host 'h1' "
                                 "has no free address")
    assert store.range("") == before
    # A fixed address outside the range but inside the subnet is still fine (as in Docker).
    fixed = ipam.allocate_address(store, DOCKERISH, lease, "c4", "eth0", fixed_ip="10.77.0.100")
    assert fixed == Allocation("dock", "c4", "eth0", "10.77.0.100", 24)


def test_fixed_address_is_exact_idempotent_and_exclusive(store: Store) -> None:
    lease = ipam.ensure_lease(store, FRONT, "h1")
    a = ipam.allocate_address(store, FRONT, lease, "web", "eth0", fixed_ip="10.88.0.50")
    assert a.address == "10.88.0.50"
    revision = store.revision()
    assert ipam.allocate_address(store, FRONT, lease, "web", "eth0", fixed_ip="10.88.0.50") == a
    assert store.revision() == revision
    before = store.range("")
    with pytest.raises(AlreadyExists) as caught:
        ipam.allocate_address(store, FRONT, lease, "db", "eth0", fixed_ip="10.88.0.50")
    assert caught.value.field == "fixed_ip"
    assert str(caught.value) == "fixed_ip: 10.88.0.50 is taken by container 'web'"
    assert store.range("") == before
    # IPAM never picks a fixed address for someone else.
    for i in range(2, 50):
        ipam.allocate_address(store, FRONT, lease, f"c{i}", "eth0")
    assert ipam.allocate_address(store, FRONT, lease, "next", "eth0").address == "10.88.0.51"


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("10.88.1.5", "is outside 10.88.0.0/24, the subnet of network 'front' on host 'h1'"),
        ("10.88.0.0", "network or broadcast"),
        ("10.88.0.255", "network or broadcast"),
        ("10.88.0.1", "is the gateway of network 'front'"),
    ],
)
def test_fixed_address_must_be_usable_in_the_hosts_lease(store: Store, address: str,
                                                         words: str) -> None:
    lease = ipam.ensure_lease(store, FRONT, "h1")
    before = store.range("")
    with pytest.raises(Invalid) as caught:
        ipam.plan_address(store, FRONT, lease, "web", "eth0", address,
                          field="container.fixed_ip")
    assert caught.value.field == "container.fixed_ip"
    assert words in caught.value.message
    assert store.range("") == before


def test_reallocation_frees_and_takes_in_one_txn(store: Store) -> None:
    """An update that changes a container's fixed address: release and allocate together."""
    lease = ipam.ensure_lease(store, FRONT, "h1")
    old = ipam.allocate_address(store, FRONT, lease, "web", "eth0", fixed_ip="10.88.0.50")
    release = ipam.release_ops(store, FRONT, "web", "eth0")
    new, compares, puts = ipam.plan_address(store, FRONT, lease, "web", "eth0", "10.88.0.60",
                                            releasing=old)
    assert store.txn(compares, ipam.merge_ops(release, puts)) is not None
    assert new.address == "10.88.0.60"
    assert ipam.list_allocations(store, FRONT) == [new]
    # Back to no fixed address while releasing: the freed address counts as free again.
    release = ipam.release_ops(store, FRONT, "web", "eth0")
    again, compares, puts = ipam.plan_address(store, FRONT, lease, "web", "eth0",
                                              releasing=new)
    assert again.address == "10.88.0.2"
    assert store.txn(compares, ipam.merge_ops(release, puts)) is not None
    assert ipam.list_allocations(store, FRONT) == [again]
