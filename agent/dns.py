"""The host's DNS resolver: containers find each other by name (issue 19).

Design note. One asyncio loop on a thread of its own serves UDP and TCP on each bridge's gateway
address (port 53), bound to that address only: never a wildcard, so nothing answers on the
underlay. ``IP_FREEBIND`` lets a socket be bound before the bridge holds its address.

What a query means is decided by where it came from: the gateway it arrived on picks the
network's :class:`Zone`, and its source address must be inside that network (else REFUSED), so
a container sees the names of its own network only. The agent hands the server a new set of
zones after every Watch event that changes names (:meth:`DnsServer.serve_networks`): a
:class:`LazyZones`, which knows the networks' gateways at once but builds a network's zone (its
name tables, O(names)) only when a query first asks it, and keeps the zones built before of
the networks that did not change. On an overlay every create anywhere reaches every member
host's agent, which rebuilt the table on each, queried or not, and woke the loop to swap it in:
at 1,000 names, 0.5-0.8 ms of the agent's CPU per name change, on every host (0.02-0.03 ms
now, whatever the number of names). Zones and the answers remembered from them are swapped in
one assignment, from any thread, so an update never drops a query nor leaves a stale answer;
the loop is woken only when a gateway comes or goes (a socket to open or close).

Answers. A container's name, its aliases and ``<name>.<dns_domain>`` answer A with the address;
AAAA for a known name is its IPv6 address on a dual-stack network (issue 20), else NODATA, as
any other type; a name on an IPv6-only network has AAAA only. PTR answers for our addresses
in both families (in-addr.arpa and ip6.arpa). A dual-stack network's zone is served on both
gateways, an IPv6-only one's on its IPv6 gateway. An unknown
single label, an unknown name in the domain and an unknown address of the network are NXDOMAIN
and are not forwarded. Everything else goes to the upstreams (the network's ``dns``, else the
host's resolv.conf): a TTL-honouring cache, at most ``MAX_INFLIGHT`` upstream queries at once,
``UPSTREAM_TIMEOUT`` per upstream, then the next one; a truncated upstream answer is asked again
over TCP. A UDP answer bigger than what the asker takes (512 bytes, or its EDNS0 size) goes out
truncated, and the asker retries over TCP. A packet that does not parse is answered FORMERR when
its header is readable, else dropped; nothing a client sends stops the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import socket
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dnslib import (
    AAAA,
    CLASS,
    EDNS0,
    OPCODE,
    PTR,
    QTYPE,
    RCODE,
    RR,
    A,
    DNSBuffer,
    DNSHeader,
    DNSRecord,
)

if TYPE_CHECKING:  # (at run time the resolver needs no protobuf: a lighter process in bench/)
    from agent.desired import DesiredNetwork

log = logging.getLogger(__name__)

DNS_PORT = 53
LOCAL_TTL = 5  # seconds: short, so a moved or removed container is soon forgotten by caches
UPSTREAM_TIMEOUT = 1.0  # per upstream, per try
MAX_INFLIGHT = 64  # upstream queries at once
CACHE_MAX = 10_000  # entries
NEGATIVE_TTL_MAX = 60
ANSWERS_MAX = 4096  # remembered local answers (then forgotten all at once)
TCP_IDLE = 10.0  # seconds a TCP client may stay silent
EDNS_SIZE = 1232  # what we take and offer (the DNS flag day's value)
CLASS_ANY = 255
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


@dataclass(frozen=True)
class Zone:
    """One network's names, as its gateway's resolver answers them."""

    network: str
    gateway: str
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network  # an IPv6-only network's is IPv6
    domain: str = ""
    upstreams: tuple[str, ...] = ()
    by_name: dict[str, str] = field(default_factory=dict)  # name or alias -> address
    by_address: dict[str, str] = field(default_factory=dict)  # address -> container name
    #: a container's own upstreams, by its address (the asker's source address)
    upstreams_by_address: dict[str, tuple[str, ...]] = field(default_factory=dict)
    by_name6: dict[str, str] = field(default_factory=dict)  # name or alias -> IPv6 address
    cidr6: ipaddress.IPv6Network | None = None  # a dual-stack network's IPv6 CIDR

    def fqdn(self, name: str) -> str:
        return f"{name}.{self.domain}." if self.domain else f"{name}."

    def holds(self, address: str) -> bool:
        """``address`` is in the network (either family): it may ask, its reverse is ours."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in (self.cidr, self.cidr6) if net is not None)


def zones_from(networks: Iterable[DesiredNetwork],
               host_upstreams: tuple[str, ...] = ()) -> dict[str, Zone]:
    """The zones of a host's networks, by gateway address: a dual-stack network's zone under
    both its gateways, an IPv6-only network's under its IPv6 one (issue 20)."""
    zones = {}
    for net in networks:
        if not net.gateway and not net.gateway6:
            continue
        by_name: dict[str, str] = {}
        by_address: dict[str, str] = {}  # both families: PTR in in-addr.arpa and ip6.arpa
        by_name6: dict[str, str] = {}
        for entry in net.names:
            for address in filter(None, (entry.address, entry.address6)):
                by_address[address] = entry.container
            if entry.address:
                by_name[entry.container.lower()] = entry.address
            if entry.address6:
                by_name6[entry.container.lower()] = entry.address6
        for entry in net.names:  # a container's own name wins over another's alias
            for alias in entry.aliases:
                if entry.address:
                    by_name.setdefault(alias.lower(), entry.address)
                if entry.address6:
                    by_name6.setdefault(alias.lower(), entry.address6)
        cidr6 = ipaddress.IPv6Network(net.cidr6 or net.subnet6, strict=False) \
            if net.subnet6 else None
        cidr = ipaddress.IPv4Network(net.cidr or net.subnet, strict=False) if net.subnet \
            else cidr6
        assert cidr is not None
        for gateway in filter(None, (net.gateway, net.gateway6)):
            zones[gateway] = Zone(
                network=net.name, gateway=gateway, cidr=cidr,
                domain=net.dns_domain, upstreams=net.dns or host_upstreams,
                by_name=by_name, by_address=by_address, by_name6=by_name6, cidr6=cidr6,
                upstreams_by_address={a: e.dns for e in net.names if e.dns
                                      for a in filter(None, (e.address, e.address6))})
    return zones


class LazyZones(Mapping[str, Zone]):
    """The zones of a host's networks by gateway (as :func:`zones_from` makes them), each
    network's built when first looked up. ``previous``: the zones handed to the server before;
    the ones it built of networks that did not change (the same object) are kept. Lookups
    come from the resolver's loop alone (the one thread that builds)."""

    def __init__(self, networks: Iterable[DesiredNetwork], host_upstreams: tuple[str, ...] = (),
                 previous: LazyZones | None = None) -> None:
        self._upstreams = host_upstreams
        self._networks = {gateway: net for net in networks
                          for gateway in (net.gateway, net.gateway6) if gateway}
        self._built: dict[str, Zone] = {}
        if previous is not None and previous._upstreams == host_upstreams:
            self._built = {gateway: zone for gateway, zone in list(previous._built.items())
                           if self._networks.get(gateway) is previous._networks.get(gateway)}

    def __getitem__(self, gateway: str) -> Zone:
        zone = self._built.get(gateway)
        if zone is None:
            self._built.update(zones_from([self._networks[gateway]], self._upstreams))
            zone = self._built[gateway]
        return zone

    def __contains__(self, gateway: object) -> bool:
        return gateway in self._networks  # (Mapping's would build the zone)

    def __iter__(self) -> Iterator[str]:
        return iter(self._networks)

    def __len__(self) -> int:
        return len(self._networks)

    def built(self) -> set[str]:
        """The gateways whose zone exists now."""
        return set(self._built)


def read_resolv_conf(path: str = "/etc/resolv.conf") -> tuple[str, ...]:
    """The IPv4 nameservers of a resolv.conf (loopback ones are useless to containers' queries
    forwarded from another namespace, but the agent forwards itself, so they are kept)."""
    servers = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    with contextlib.suppress(ValueError):
                        servers.append(str(ipaddress.IPv4Address(parts[1])))
    except OSError:
        pass
    return tuple(servers[:3])


# -- the files inside containers --------------------------------------------------------------

CLOSED_RESOLV_CONF = "# a closed container (network none): no resolver\n"


def resolv_conf(net: DesiredNetwork) -> str:
    """A bridged container's resolv.conf: its network's resolver (ndots left at the default),
    on the IPv6 gateway of an IPv6-only network."""
    lines = [f"nameserver {net.gateway or net.gateway6}"]
    if net.dns_domain:
        lines.append(f"search {net.dns_domain}")
    return "\n".join(lines) + "\n"


def hosts_file(name: str, address: str, aliases: tuple[str, ...] = ()) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines.append(f"{address or '127.0.1.1'}\t{' '.join((name, *aliases))}")
    return "\n".join(lines) + "\n"


def write_in_place(path: str, text: str) -> None:
    """Write ``text`` to ``path`` unless it already holds it, keeping the inode (a bind mount
    of the file sees the new text; a rename would leave it on the old one)."""
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except FileNotFoundError:
        pass
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)


# -- answering ------------------------------------------------------------------------------


def _reply(request: DNSRecord, rcode: int = RCODE.NOERROR, authoritative: bool = True
           ) -> DNSRecord:
    reply = DNSRecord(DNSHeader(id=request.header.id, qr=1, aa=int(authoritative), ra=1,
                                rd=request.header.rd, rcode=rcode), q=request.q)
    if _edns_size(request):
        reply.add_ar(EDNS0(udp_len=EDNS_SIZE))
    return reply


def _edns_size(request: DNSRecord) -> int:
    """The asker's EDNS0 UDP size, 0 when it sent no OPT record."""
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return max(512, min(int(rr.rclass), 65535))
    return 0


def _reverse_address(qname: str) -> str | None:
    """``4.3.2.1.in-addr.arpa`` → ``1.2.3.4``, 32 nibbles ``.ip6.arpa`` → the IPv6 address
    (compressed); None for anything else."""
    if qname.endswith(".ip6.arpa"):
        nibbles = qname[: -len(".ip6.arpa")].split(".")
        if len(nibbles) != 32 or not all(len(n) == 1 and n in "0123456789abcdef"
                                         for n in nibbles):
            return None
        return str(ipaddress.IPv6Address(int("".join(reversed(nibbles)), 16)))
    if not qname.endswith(".in-addr.arpa"):
        return None
    octets = qname[: -len(".in-addr.arpa")].split(".")
    if len(octets) != 4:
        return None
    try:
        return str(ipaddress.IPv4Address(".".join(reversed(octets))))
    except ValueError:
        return None


def answer_local(zone: Zone, request: DNSRecord) -> DNSRecord | None:
    """The zone's answer to ``request``, or None when the question is not ours (forward it)."""
    question = request.q
    qname = str(question.qname).lower().rstrip(".")
    if question.qclass not in (CLASS.IN, CLASS_ANY):
        return None
    address = _reverse_address(qname)
    if address is not None:
        if address in zone.by_address:
            reply = _reply(request)
            if question.qtype in (QTYPE.PTR, QTYPE.ANY):
                reply.add_answer(RR(question.qname, QTYPE.PTR, ttl=LOCAL_TTL,
                                    rdata=PTR(zone.fqdn(zone.by_address[address]))))
            return reply
        if zone.holds(address):
            return _reply(request, RCODE.NXDOMAIN)
        return None
    if zone.domain and (qname == zone.domain or qname.endswith("." + zone.domain)):
        if qname == zone.domain:
            return _reply(request)  # the domain exists; it holds no records itself
        label = qname[: -len(zone.domain) - 1]
    elif qname and "." not in qname:
        label = qname
    else:
        return None
    target, target6 = zone.by_name.get(label), zone.by_name6.get(label)
    if target is None and target6 is None:
        return _reply(request, RCODE.NXDOMAIN)
    reply = _reply(request)
    if target and question.qtype in (QTYPE.A, QTYPE.ANY):
        reply.add_answer(RR(question.qname, QTYPE.A, ttl=LOCAL_TTL, rdata=A(target)))
    if target6 and question.qtype in (QTYPE.AAAA, QTYPE.ANY):
        reply.add_answer(RR(question.qname, QTYPE.AAAA, ttl=LOCAL_TTL, rdata=AAAA(target6)))
    return reply  # the rest: NODATA (the name exists, with no record of that type)


def formerr(data: bytes) -> bytes | None:
    """FORMERR for a packet whose header reads as a query; None (drop it) otherwise."""
    if len(data) < 12:
        return None
    try:
        header = DNSHeader.parse(DNSBuffer(data[:12]))
    except Exception:
        return None
    if header.qr:
        return None  # never answer an answer (no loops between resolvers)
    return DNSRecord(DNSHeader(id=header.id, qr=1, ra=1, rcode=RCODE.FORMERR)).pack()


def truncate(reply: bytes, limit: int) -> bytes:
    """``reply`` if it fits in ``limit`` bytes, else its header and question with TC set."""
    if len(reply) <= limit:
        return reply
    record = DNSRecord.parse(reply)
    short = DNSRecord(DNSHeader(id=record.header.id, qr=1, aa=record.header.aa, ra=1,
                                rd=record.header.rd, tc=1, rcode=record.header.rcode),
                      q=record.q)
    return short.pack()


# -- forwarding ------------------------------------------------------------------------------


class Cache:
    """Upstream answers by question, each kept for its smallest TTL."""

    def __init__(self, max_entries: int = CACHE_MAX) -> None:
        self.entries: OrderedDict[tuple[str, int, int], tuple[float, float, bytes]] = \
            OrderedDict()
        self.max_entries = max_entries
        self.hits = self.misses = 0

    def get(self, key: tuple[str, int, int], query_id: int) -> bytes | None:
        entry = self.entries.get(key)
        now = time.monotonic()
        if entry is None or entry[1] <= now:
            if entry is not None:
                del self.entries[key]
            self.misses += 1
            return None
        stored, _, raw = entry
        self.hits += 1
        record = DNSRecord.parse(raw)
        elapsed = int(now - stored)
        for rr in (*record.rr, *record.auth):
            rr.ttl = max(0, rr.ttl - elapsed)
        record.header.id = query_id
        return record.pack()

    def put(self, key: tuple[str, int, int], raw: bytes) -> None:
        record = DNSRecord.parse(raw)
        if record.header.rcode not in (RCODE.NOERROR, RCODE.NXDOMAIN) or record.header.tc:
            return
        ttls = [rr.ttl for rr in record.rr]
        if not ttls:  # negative: the SOA's TTL, bounded
            ttls = [min(rr.ttl, NEGATIVE_TTL_MAX) for rr in record.auth] or [0]
        ttl = min(ttls)
        if ttl <= 0:
            return
        now = time.monotonic()
        self.entries[key] = (now, now + ttl, raw)
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)


async def query_udp(server: str, data: bytes, timeout: float, port: int = DNS_PORT) -> bytes:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((server, port))
        await loop.sock_sendall(sock, data)
        deadline = loop.time() + timeout
        while True:
            answer = await asyncio.wait_for(loop.sock_recv(sock, 65535),
                                            max(0.0, deadline - loop.time()))
            if answer[:2] == data[:2]:
                return answer  # (another ID: a stray or spoofed packet; keep waiting)


async def query_tcp(server: str, data: bytes, timeout: float, port: int = DNS_PORT) -> bytes:
    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(server, port)
        try:
            writer.write(struct.pack("!H", len(data)) + data)
            await writer.drain()
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            return await reader.readexactly(length)
        finally:
            writer.close()

    return await asyncio.wait_for(exchange(), timeout)


class Forwarder:
    """Upstream queries: the cache first, then each upstream in turn (UDP, TCP if truncated)."""

    def __init__(self, timeout: float = UPSTREAM_TIMEOUT, max_inflight: int = MAX_INFLIGHT,
                 upstream_port: int = DNS_PORT) -> None:
        self.cache = Cache()
        self.timeout = timeout
        self.upstream_port = upstream_port
        self.inflight = asyncio.Semaphore(max_inflight)
        self.failures = 0

    async def forward(self, request: DNSRecord, upstreams: tuple[str, ...]) -> bytes:
        question = request.q
        key = (str(question.qname).lower(), int(question.qtype), int(question.qclass))
        cached = self.cache.get(key, request.header.id)
        if cached is not None:
            return cached
        if not upstreams:
            return _reply(request, RCODE.SERVFAIL, authoritative=False).pack()
        upstream_id = random.randrange(65536)
        query = DNSRecord(DNSHeader(id=upstream_id, rd=1), q=question)
        query.add_ar(EDNS0(udp_len=EDNS_SIZE))
        data = query.pack()
        async with self.inflight:
            for server in upstreams:
                try:
                    answer = await query_udp(server, data, self.timeout, self.upstream_port)
                    if DNSRecord.parse(answer).header.tc:
                        answer = await query_tcp(server, data, self.timeout, self.upstream_port)
                    self.cache.put(key, answer)
                    return _with_id(answer, request.header.id)
                except (OSError, TimeoutError, asyncio.IncompleteReadError, Exception) as e:
                    self.failures += 1
                    log.debug("upstream %s failed for %s: %s", server, key[0], e)
        return _reply(request, RCODE.SERVFAIL, authoritative=False).pack()


def _with_id(raw: bytes, query_id: int) -> bytes:
    return struct.pack("!H", query_id) + raw[2:]


# -- serving ---------------------------------------------------------------------------------


class Resolver:
    """Bytes in, bytes out: the zone of the gateway a query reached, the forwarder for the rest."""

    def __init__(self, forwarder: Forwarder) -> None:
        #: The zones, and the local answers made from them by (gateway, asker, the query
        #: without its ID): a repeated query (the same name, type, flags and EDNS, as stub
        #: resolvers send) skips parsing and building. Replaced together, in one assignment
        #: (any thread): a query reads the pair once, so an answer it made from old zones
        #: goes into the old zones' table, never into the new one.
        self.current: tuple[Mapping[str, Zone], dict[tuple[str, str, bytes], bytes]] = ({}, {})
        self.forwarder = forwarder
        self.queries = self.dropped = 0

    @property
    def zones(self) -> Mapping[str, Zone]:
        return self.current[0]

    @zones.setter
    def zones(self, zones: Mapping[str, Zone]) -> None:
        self.current = (zones, {})

    async def handle(self, data: bytes, gateway: str, source: str, udp: bool) -> bytes | None:
        self.queries += 1
        try:
            request = DNSRecord.parse(data)
        except Exception:
            self.dropped += 1
            return formerr(data)
        try:
            reply = await self._answer(request, gateway, source)
        except Exception:
            log.exception("could not answer a query from %s", source)
            reply = _reply(request, RCODE.SERVFAIL, authoritative=False).pack()
        if udp and reply:
            reply = truncate(reply, _edns_size(request) or 512)
        return reply

    def answer_now(self, request: DNSRecord, gateway: str, source: str,
                   zones: Mapping[str, Zone] | None = None) -> bytes | None:
        """The answer when it needs no upstream (local names, refusals), else None
        (``zones``: as the caller read them; default: the current ones)."""
        if request.header.qr:
            return b""  # an answer sent to us: drop
        if request.header.opcode != OPCODE.QUERY:
            return _reply(request, RCODE.NOTIMP).pack()
        if len(request.questions) != 1:
            return _reply(request, RCODE.FORMERR).pack()
        zone = (self.zones if zones is None else zones).get(gateway)
        if zone is None or not zone.holds(source):
            return _reply(request, RCODE.REFUSED, authoritative=False).pack()
        local = answer_local(zone, request)
        return local.pack() if local is not None else None

    async def _answer(self, request: DNSRecord, gateway: str, source: str) -> bytes | None:
        zones = self.zones
        now = self.answer_now(request, gateway, source, zones)
        if now is not None:
            return now or None
        zone = zones[gateway]
        upstreams = zone.upstreams_by_address.get(source) or zone.upstreams
        return await self.forwarder.forward(request, upstreams)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver, gateway: str) -> None:
        self.resolver = resolver
        self.gateway = gateway
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        key = (self.gateway, addr[0], data[2:])
        zones, answers = self.resolver.current
        known = answers.get(key)
        if known is not None and self.transport is not None and len(data) >= 12:
            self.resolver.queries += 1
            self.transport.sendto(data[:2] + known, addr)
            return
        try:
            request = DNSRecord.parse(data)
            now = self.resolver.answer_now(request, self.gateway, addr[0], zones)
        except Exception:
            now = None
            request = None
        if request is not None and now is not None:  # local: answered without a task
            self.resolver.queries += 1
            if now and self.transport is not None:
                reply = truncate(now, _edns_size(request) or 512)
                self.transport.sendto(reply, addr)
                if len(answers) >= ANSWERS_MAX:
                    answers.clear()
                answers[key] = reply[2:]
            return
        asyncio.get_running_loop().create_task(self._slow(data, addr))

    async def _slow(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self.resolver.handle(data, self.gateway, addr[0], udp=True)
        if reply and self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("dns udp on %s: %s", self.gateway, exc)


def bound_socket(kind: int, address: str, port: int) -> socket.socket:
    """A socket bound to ``address`` only (IP_FREEBIND: before the address exists; Linux
    honours it on IPv6 sockets too, where the kernel's DAD-less address may come later)."""
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((address, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class DnsServer:
    """The resolver's loop on a thread of its own, listening on each zone's gateway."""

    def __init__(self, port: int = DNS_PORT, upstream_port: int = DNS_PORT,
                 timeout: float = UPSTREAM_TIMEOUT) -> None:
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.forwarder_args = (timeout, MAX_INFLIGHT, upstream_port)
        self.resolver: Resolver | None = None
        self.listeners: dict[str, tuple[asyncio.DatagramTransport, asyncio.Server, int]] = {}
        self.thread = threading.Thread(target=self._run, name="dns", daemon=True)
        self.ready = threading.Event()
        self.latest: Mapping[str, Zone] = {}
        self.latest_lock = threading.Lock()
        #: the gateways listened on once the updates scheduled so far are done, and how many
        #: are still to run (both under latest_lock)
        self._gateways: frozenset[str] = frozenset()
        self._scheduled = 0

    def start(self) -> DnsServer:
        self.thread.start()
        self.ready.wait()
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.resolver = Resolver(Forwarder(*self.forwarder_args))
        self.updating = asyncio.Lock()
        self.ready.set()
        self.loop.run_forever()

    def serve_networks(self, networks: Iterable[DesiredNetwork],
                       host_upstreams: tuple[str, ...] = ()) -> None:
        """Serve ``networks``' names from now on: :meth:`update` with a :class:`LazyZones`
        that keeps the zones built for the networks that did not change."""
        with self.latest_lock:
            previous = self.latest if isinstance(self.latest, LazyZones) else None
        self.update(LazyZones(networks, host_upstreams, previous))

    def update(self, zones: Mapping[str, Zone], wait: bool = False) -> None:
        """Serve ``zones`` from now on; listen on new gateways, close gone ones. Updates may
        overlap: each applies the latest zones handed in, never an older one. Zones on the
        gateways listened on already (and no update pending) are swapped in at once, without
        the loop (see the module note)."""
        with self.latest_lock:
            self.latest = zones
            if (self.resolver is not None and not self._scheduled
                    and frozenset(zones) == self._gateways):
                self.resolver.zones = zones
                return
            self._scheduled += 1
        future = asyncio.run_coroutine_threadsafe(self._update(), self.loop)
        if wait:
            future.result(timeout=10)

    def port_of(self, gateway: str) -> int:
        return self.listeners[gateway][2]

    async def _update(self) -> None:
        assert self.resolver is not None
        try:
            async with self.updating:  # one at a time: listening takes awaits
                with self.latest_lock:
                    zones = self.latest
                for gateway in list(self.listeners):
                    if gateway not in zones:
                        udp, tcp, _ = self.listeners.pop(gateway)
                        udp.close()
                        tcp.close()
                for gateway in zones:
                    if gateway not in self.listeners:
                        try:
                            self.listeners[gateway] = await self._listen(gateway)
                        except OSError as e:
                            log.warning("dns: could not listen on %s:%d: %s", gateway,
                                        self.port, e)
                with self.latest_lock:
                    self.resolver.zones = self.latest  # one assignment: old or new, whole
                    self._gateways = frozenset(self.listeners)
        finally:
            with self.latest_lock:
                self._scheduled -= 1

    async def _listen(self, gateway: str) -> tuple[asyncio.DatagramTransport, asyncio.Server,
                                                   int]:
        assert self.resolver is not None
        resolver = self.resolver
        tcp_sock = bound_socket(socket.SOCK_STREAM, gateway, self.port)
        port = tcp_sock.getsockname()[1]
        try:
            udp_sock = bound_socket(socket.SOCK_DGRAM, gateway, port)
        except OSError:
            tcp_sock.close()
            raise
        udp, _ = await self.loop.create_datagram_endpoint(lambda: _Udp(resolver, gateway),
                                                          sock=udp_sock)

        async def serve_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            source = writer.get_extra_info("peername")[0]
            try:
                while True:
                    (length,) = struct.unpack(
                        "!H", await asyncio.wait_for(reader.readexactly(2), TCP_IDLE))
                    data = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE)
                    reply = await resolver.handle(data, gateway, source, udp=False)
                    if reply is None:
                        break
                    writer.write(struct.pack("!H", len(reply)) + reply)
                    await writer.drain()
            except (asyncio.IncompleteReadError, TimeoutError, OSError, struct.error):
                pass
            finally:
                writer.close()

        tcp = await asyncio.start_server(serve_tcp, sock=tcp_sock)
        return udp, tcp, port

    def stop(self) -> None:
        async def close() -> None:
            for udp, tcp, _ in self.listeners.values():
                udp.close()
                tcp.close()
            self.listeners.clear()

        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
