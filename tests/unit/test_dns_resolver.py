"""The resolver (agent/dns.py): its answers, pure, and its server on loopback with a real
upstream (dnslib's server) on other loopback addresses; real packets, UDP and TCP."""

from __future__ import annotations

import ipaddress
import random
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSServer

from agent import dns, ocispec
from agent.desired import DesiredName, DesiredNetwork
from sdnctl.api.model import Container, Invalid, Network
from sdnctl.api.validate import validate_container, validate_network

NAMES = (DesiredName("db", ("database", "pg"), "10.1.0.5"), DesiredName("web", (), "10.1.1.7"))


def network(**kw: object) -> DesiredNetwork:
    base: dict[str, object] = dict(name="front", driver="overlay", subnet="10.1.0.0/24",
                                   gateway="10.1.0.1", prefixlen=24, mtu=1450, masquerade=True,
                                   cidr="10.1.0.0/16", names=NAMES, dns_domain="svc.lab")
    base.update(kw)
    return DesiredNetwork(**base)  # type: ignore[arg-type]


def zone(**kw: object) -> dns.Zone:
    return dns.zones_from([network(**kw)])["10.1.0.1"]


def ask(z: dns.Zone, name: str, qtype: str = "A") -> DNSRecord | None:
    return dns.answer_local(z, DNSRecord.question(name, qtype))


def test_names_aliases_domain_answer_a() -> None:
    z = zone()
    for name in ("db", "DB.", "database", "pg", "db.svc.lab", "pg.svc.lab."):
        reply = ask(z, name)
        assert reply is not None and reply.header.rcode == RCODE.NOERROR, name
        assert [str(rr.rdata) for rr in reply.rr] == ["10.1.0.5"], name
        assert reply.header.aa == 1
    assert [str(rr.rdata) for rr in ask(z, "web").rr] == ["10.1.1.7"]  # type: ignore[union-attr]


def test_aaaa_of_a_v4_name_is_nodata_and_unknown_is_nxdomain() -> None:
    z = zone()
    aaaa = ask(z, "db", "AAAA")
    assert aaaa is not None and aaaa.header.rcode == RCODE.NOERROR and not aaaa.rr
    for name in ("nosuch", "nosuch.svc.lab"):
        reply = ask(z, name)
        assert reply is not None and reply.header.rcode == RCODE.NXDOMAIN, name


def test_ptr_for_our_addresses_other_names_forwarded() -> None:
    z = zone()
    reply = ask(z, "5.0.1.10.in-addr.arpa", "PTR")
    assert reply is not None and [str(rr.rdata) for rr in reply.rr] == ["db.svc.lab."]
    unknown = ask(z, "99.0.1.10.in-addr.arpa", "PTR")
    assert unknown is not None and unknown.header.rcode == RCODE.NXDOMAIN
    assert ask(z, "8.8.8.8.in-addr.arpa", "PTR") is None
    assert ask(z, "example.com") is None
    assert ask(zone(dns_domain=""), "db.svc.lab") is None  # no domain: not ours
    no_domain = ask(zone(dns_domain=""), "5.0.1.10.in-addr.arpa", "PTR")
    assert no_domain is not None and str(no_domain.rr[0].rdata) == "db."


def test_own_name_wins_over_an_alias() -> None:
    z = zone(names=(DesiredName("a", ("b",), "10.1.0.2"), DesiredName("b", (), "10.1.0.3")))
    assert str(ask(z, "b").rr[0].rdata) == "10.1.0.3"  # type: ignore[union-attr]


def test_formerr_and_truncate() -> None:
    query = DNSRecord.question("db").pack()
    reply = dns.formerr(query[:12] + b"\xff\xff")
    assert reply is not None and DNSRecord.parse(reply).header.rcode == RCODE.FORMERR
    assert dns.formerr(b"\x01\x02") is None
    big = DNSRecord.question("big.example").reply()
    for i in range(60):
        big.add_answer(RR("big.example", QTYPE.A, rdata=A(f"10.9.0.{i}")))
    short = DNSRecord.parse(dns.truncate(big.pack(), 512))
    assert short.header.tc == 1 and not short.rr
    assert dns.truncate(big.pack(), 4096) == big.pack()


# -- the server, on loopback ----------------------------------------------------------------


class Upstream(BaseResolver):  # type: ignore[misc]
    def __init__(self) -> None:
        self.asked: list[str] = []
        self.lock = threading.Lock()

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        name = str(request.q.qname)
        with self.lock:
            self.asked.append(name)
        reply = request.reply()
        if name == "www.example.":
            reply.add_answer(RR(name, QTYPE.A, ttl=300, rdata=A("203.0.113.80")))
        elif name == "big.example.":
            for i in range(80):
                reply.add_answer(RR(name, QTYPE.A, ttl=300, rdata=A(f"203.0.113.{i}")))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


def free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        u.bind((address, 0))
        port = u.getsockname()[1]
        t.bind((address, port))
        return port


@pytest.fixture
def upstream() -> Iterator[tuple[Upstream, int]]:
    resolver = Upstream()
    port = free_port("127.0.0.3")
    servers = [DNSServer(resolver, port=port, address="127.0.0.3", tcp=tcp) for tcp in (0, 1)]
    for server in servers:
        server.start_thread()
    yield resolver, port
    for server in servers:
        server.stop()
        server.server.server_close()


def serve(upstreams: tuple[str, ...], upstream_port: int, cidr: str = "127.0.0.0/8",
          timeout: float = 0.3) -> dns.DnsServer:
    server = dns.DnsServer(port=0, upstream_port=upstream_port, timeout=timeout).start()
    z = dns.Zone("front", "127.0.0.1", ipaddress.IPv4Network(cidr), "svc.lab", upstreams,
                 {"db": "10.1.0.5"}, {"10.1.0.5": "db"})
    server.update({"127.0.0.1": z}, wait=True)
    return server


def query(server: dns.DnsServer, name: str, qtype: str = "A", tcp: bool = False,
          edns: bool = False, timeout: float = 5.0) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    if edns:
        q.add_ar(dns.EDNS0(udp_len=4096))
    raw = q.send("127.0.0.1", server.port_of("127.0.0.1"), tcp=tcp, timeout=timeout)
    return DNSRecord.parse(raw)


def test_server_answers_local_names_over_udp_and_tcp(upstream: tuple[Upstream, int]) -> None:
    resolver, port = upstream
    server = serve(("127.0.0.3",), port)
    try:
        for tcp in (False, True):
            reply = query(server, "db.svc.lab", tcp=tcp)
            assert [str(rr.rdata) for rr in reply.rr] == ["10.1.0.5"]
        assert query(server, "nosuch").header.rcode == RCODE.NXDOMAIN
        assert resolver.asked == []  # local names never reach an upstream
    finally:
        server.stop()


def test_repeated_queries_keep_their_id_and_see_zone_changes(
        upstream: tuple[Upstream, int]) -> None:
    _resolver, port = upstream
    server = serve(("127.0.0.3",), port)
    target = ("127.0.0.1", server.port_of("127.0.0.1"))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            for query_id in (1, 2, 3):
                q = DNSRecord.question("db")
                q.header.id = query_id
                s.sendto(q.pack(), target)
                reply = DNSRecord.parse(s.recvfrom(4096)[0])
                assert reply.header.id == query_id
                assert [str(rr.rdata) for rr in reply.rr] == ["10.1.0.5"]
            server.update({"127.0.0.1": dns.Zone(
                "front", "127.0.0.1", ipaddress.IPv4Network("127.0.0.0/8"), "", (),
                {"db": "10.1.0.6"}, {"10.1.0.6": "db"})}, wait=True)
            s.sendto(q.pack(), target)
            assert [str(rr.rdata) for rr in DNSRecord.parse(s.recvfrom(4096)[0]).rr] == \
                ["10.1.0.6"]
    finally:
        server.stop()


def test_lazy_zones_build_a_network_when_asked_and_keep_the_unchanged_ones() -> None:
    """``LazyZones``: every gateway is known at once, a network's zone is built on its first
    lookup (as ``zones_from`` builds it), and zones built before are kept for the networks that
    did not change; a changed one is built again, with its new names."""
    front = network(gateway6="fd00:1::1", subnet6="fd00:1::/64")
    back = network(name="back", subnet="10.2.0.0/24", gateway="10.2.0.1", cidr="10.2.0.0/16",
                   names=(DesiredName("cache", (), "10.2.0.9"),))
    lazy = dns.LazyZones([front, back])
    assert set(lazy) == {"10.1.0.1", "fd00:1::1", "10.2.0.1"} and len(lazy) == 3
    assert "10.2.0.1" in lazy and "10.9.0.1" not in lazy and lazy.built() == set()
    assert lazy["10.1.0.1"] == dns.zones_from([front])["10.1.0.1"]
    assert lazy.built() == {"10.1.0.1", "fd00:1::1"}  # its network's two gateways
    assert lazy.get("10.9.0.1") is None
    moved = replace(front, names=(DesiredName("db", (), "10.1.0.6"),))
    again = dns.LazyZones([moved, back], previous=lazy)
    assert again.built() == set()  # front changed; back was never asked for
    assert lazy["10.2.0.1"].by_name == {"cache": "10.2.0.9"}
    third = dns.LazyZones([moved, back], previous=lazy)
    assert third.built() == {"10.2.0.1"} and third["10.2.0.1"] is lazy["10.2.0.1"]
    assert third["10.1.0.1"].by_name == {"db": "10.1.0.6"}
    other = dns.LazyZones([moved, back], ("192.0.2.53",), previous=third)
    assert other.built() == set()  # other host upstreams: every zone differs
    assert other["10.2.0.1"].upstreams == ("192.0.2.53",)


def test_new_names_on_the_same_gateways_are_served_when_update_returns(
        upstream: tuple[Upstream, int]) -> None:
    """Zones on the gateways listened on already are swapped in by ``update`` itself (no
    round through the loop): the first query after ``serve_networks`` (the agent's call)
    sees them."""
    _resolver, port = upstream
    server = dns.DnsServer(port=0, upstream_port=port, timeout=0.3).start()
    lan = network(subnet="127.0.0.0/8", gateway="127.0.0.1", cidr="127.0.0.0/8")
    try:
        server.update(dns.LazyZones([lan]), wait=True)  # (the first listens: waited for)
        assert [str(rr.rdata) for rr in query(server, "db").rr] == ["10.1.0.5"]
        for i in range(6, 26):
            lan = replace(lan, names=(DesiredName("db", (), f"10.1.0.{i}"),))
            server.serve_networks([lan])
            assert [str(rr.rdata) for rr in query(server, "db").rr] == [f"10.1.0.{i}"]
    finally:
        server.stop()


def test_forwarding_cache_and_tcp_fallback(upstream: tuple[Upstream, int]) -> None:
    resolver, port = upstream
    server = serve(("127.0.0.3",), port)
    try:
        reply = query(server, "www.example")
        assert [str(rr.rdata) for rr in reply.rr] == ["203.0.113.80"]
        again = query(server, "www.example")
        assert [str(rr.rdata) for rr in again.rr] == ["203.0.113.80"]
        assert 0 < again.rr[0].ttl <= 300
        assert resolver.asked.count("www.example.") == 1  # the second came from the cache
        assert query(server, "nosuch.example").header.rcode == RCODE.NXDOMAIN
        big = query(server, "big.example")  # 80 records do not fit 512 bytes
        assert big.header.tc == 1 and not big.rr
        full = query(server, "big.example", tcp=True)
        assert len(full.rr) == 80 and full.header.tc == 0
        edns = query(server, "big.example", edns=True)  # 4096 bytes: it fits
        assert len(edns.rr) == 80
    finally:
        server.stop()


def test_failover_and_dead_upstreams_do_not_stall_local_names(
        upstream: tuple[Upstream, int]) -> None:
    _resolver, port = upstream
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.4", port))  # takes queries, never answers
        server = serve(("127.0.0.4", "127.0.0.3"), port)
        try:
            reply = query(server, "www.example")  # the first upstream times out: the next
            assert [str(rr.rdata) for rr in reply.rr] == ["203.0.113.80"]
            dead = serve(("127.0.0.4",), port, timeout=2.0)
            try:
                # positive control first: the dead upstream really is asked, and fails
                replies: list[DNSRecord] = []
                slow = threading.Thread(target=lambda: replies.append(
                    query(dead, "other.example", timeout=10)))
                slow.start()
                local = query(dead, "db", timeout=0.5)  # answered while the upstream hangs
                assert [str(rr.rdata) for rr in local.rr] == ["10.1.0.5"]
                slow.join()
                assert replies[0].header.rcode == RCODE.SERVFAIL
            finally:
                dead.stop()
        finally:
            server.stop()


def test_a_containers_own_upstreams_win_over_its_networks(
        upstream: tuple[Upstream, int]) -> None:
    resolver, port = upstream
    server = dns.DnsServer(port=0, upstream_port=port, timeout=0.3).start()
    try:
        def zone(own: tuple[str, ...]) -> dns.Zone:
            return dns.Zone("front", "127.0.0.1", ipaddress.IPv4Network("127.0.0.0/8"), "",
                            ("127.0.0.9",), {}, {}, {"127.0.0.1": own} if own else {})

        server.update({"127.0.0.1": zone(())}, wait=True)
        # control: the network's upstream (nothing listens there) fails
        assert query(server, "www.example").header.rcode == RCODE.SERVFAIL
        server.update({"127.0.0.1": zone(("127.0.0.3",))}, wait=True)  # the asker's own
        assert [str(rr.rdata) for rr in query(server, "www.example").rr] == ["203.0.113.80"]
        assert resolver.asked == ["www.example."]
    finally:
        server.stop()


def test_askers_outside_the_network_are_refused(upstream: tuple[Upstream, int]) -> None:
    _resolver, port = upstream
    server = serve(("127.0.0.3",), port, cidr="127.0.0.0/8")
    try:
        assert query(server, "db").header.rcode == RCODE.NOERROR  # control: we may ask
        server.update({"127.0.0.1": dns.Zone("front", "127.0.0.1",
                                             ipaddress.IPv4Network("10.1.0.0/16"))}, wait=True)
        assert query(server, "db").header.rcode == RCODE.REFUSED
    finally:
        server.stop()


def test_garbage_is_dropped_or_formerr_and_the_server_lives_on(
        upstream: tuple[Upstream, int]) -> None:
    _resolver, port = upstream
    server = serve(("127.0.0.3",), port)
    target = ("127.0.0.1", server.port_of("127.0.0.1"))
    try:
        assert query(server, "db").header.rcode == RCODE.NOERROR
        good = DNSRecord.question("db").pack()
        rng = random.Random(19)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(10)
            for i in range(2000):
                size = rng.randrange(0, 300)
                junk = bytes(rng.randrange(256) for _ in range(size))
                if i % 3 == 0:  # a real header with a mangled body
                    junk = good[:12] + junk
                s.sendto(junk, target)
            s.sendto(good[:12] + b"\xc0\x0c" * 4, target)  # a compression loop
            answer = DNSRecord.parse(s.recvfrom(4096)[0])
            while answer.header.id != DNSRecord.parse(good).header.id or answer.header.rcode \
                    != RCODE.FORMERR:
                answer = DNSRecord.parse(s.recvfrom(4096)[0])
        with socket.create_connection(target, timeout=2) as t:
            t.sendall(b"\x00\x05hello")  # garbage over TCP too
        # The flood may still fill the server's receive queue (UDP drops what overflows): ask
        # again as a stub resolver does, then the answer must come.
        for attempt in range(5):
            try:
                reply = query(server, "db", timeout=2)
                break
            except TimeoutError:
                if attempt == 4:
                    raise
        assert [str(rr.rdata) for rr in reply.rr] == ["10.1.0.5"]
        assert [str(rr.rdata) for rr in query(server, "db", tcp=True).rr] == ["10.1.0.5"]
    finally:
        server.stop()


# -- the API fields and the files inside containers ------------------------------------------


def test_bad_dns_fields_name_the_field() -> None:
    good = Network("front", "10.1.0.0/16", dns_domain="svc.lab", dns=("203.0.113.53",))
    assert validate_network(good) == good  # control
    for bad, field in ((dict(dns_domain="svc..lab"), "network.dns_domain"),
                       (dict(dns_domain="Svc_lab"), "network.dns_domain"),
                       (dict(dns=("nope",)), "network.dns[0]"),
                       (dict(dns=("1.1.1.1",) * 4), "network.dns")):
        with pytest.raises(Invalid) as e:
            validate_network(Network("front", "10.1.0.0/16", **bad))  # type: ignore[arg-type]
        assert e.value.field == field
    ok = Container("web", "h1", "front", aliases=("www", "site"), dns=("192.0.2.53",))
    assert validate_container(ok) == ok
    for ctr, field in ((Container("web", "h1", "front", aliases=("No Way",)),
                        "container.aliases[0]"),
                       (Container("web", "h1", "host", aliases=("www",)), "container.aliases"),
                       (Container("web", "h1", "front", dns=("x",)), "container.dns[0]"),
                       (Container("web", "h1", "none", dns=("1.1.1.1",)), "container.dns")):
        with pytest.raises(Invalid) as e:
            validate_container(ctr)
        assert e.value.field == field


def test_resolv_conf_hosts_and_their_mounts() -> None:
    assert dns.resolv_conf(network()) == "nameserver 10.1.0.1\nsearch svc.lab\n"
    assert dns.resolv_conf(network(dns_domain="")) == "nameserver 10.1.0.1\n"
    assert "10.1.0.5\tdb database" in dns.hosts_file("db", "10.1.0.5", ("database",))
    spec = ocispec.build(ocispec.SpecInput(args=("sh",), hostname="db", etc_files=(
        ("/etc/resolv.conf", "/run/x/db.resolv.conf"),)))
    mount = [m for m in spec["mounts"] if m["destination"] == "/etc/resolv.conf"]
    assert mount == [{"destination": "/etc/resolv.conf", "type": "bind",
                      "source": "/run/x/db.resolv.conf",
                      "options": ["bind", "nosuid", "nodev", "noexec", "ro"]}]
