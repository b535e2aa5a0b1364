"""`sdnctl trace SRC DST`: send ONE real probe and report every hop it crossed and where it died.

Design note. The probe is a real packet, built with scapy by a helper process that runs inside
SRC's network namespace (``nsenter --net``; the CLI itself never changes namespace). It carries a
marker no other packet has: a random ICMP echo id, or a random TCP/UDP source port. Before it
leaves, we arm observers, each looking for that marker only:

- ``tcpdump -c 1`` on every device the probe should cross, in the namespace of the host that
  owns the device: the source's veth (host side), its bridge, the underlay device (for an
  overlay, a BPF filter that looks INSIDE the VXLAN payload, so we also read the VNI), the peer
  host's underlay device and VXLAN device, the destination's bridge and veth;
- nftables tracing on the source host (and the destination host, for an overlay): a temporary
  table of our own (``inet`` and ``bridge`` families, hook prerouting, priority -350) with one
  rule, ``<marker> meta nftrace set 1``, and ``nft monitor trace`` reading the verdicts. A rule
  that drops the probe is named by its comment (every rule of ours has one).

Then the helper sends the probe and waits briefly for an answer, the observers are stopped and
the temporary tables deleted (an ExitStack: also on failure or ^C). ``evaluate`` (pure) turns
what was seen into hops: the last hop that saw the probe is ✓, the first hop after it that did
not is where it died (✗), later hops were not reached (·), and a hop we could not observe but
that the probe evidently passed is "?".

IPv6 (``-6``, or an IPv6 address as DST): the same probe over IPv6 between the containers'
IPv6 addresses (an ICMPv6 echo, or TCP/UDP), matched by ``ip6`` in nftables and in the captures;
inside VXLAN the filter reads the inner IPv6 header (40 bytes; no extension headers). The
outer packet may be IPv6 too (an IPv6 underlay): the VXLAN filter matches either outer family.

Everything happens in lab namespaces on this machine: trace refuses a host that is not a lab
host, and any namespace that is this process's own (the root namespace).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import json
import os
import re
import secrets
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from agent.names import bridge_name, veth_name, vxlan_name
from sdnctl.api import wire
from sdnctl.api.client import Client, CommandError, connect
from sdnctl.api.fields import ip_version
from sdnctl.api.model import MODE_BRIDGE, MODE_CONTAINER, network_mode, spans_hosts
from sdnctl.lab import local
from sdnctl.v1 import sdnctl_pb2 as pb

UNDERLAY_DEV = "eth0"  # a lab host's underlay device (sdnctl.lab.lab.HOST_DEV)
DEFAULT_VXLAN_PORT = 4789
TRACE_TABLE_PREFIX = "sdnctl_trace_"
POLICY_COMMENT = "sdnctl:policy/"  # agent/netpolicy.py's rules (issue 22)
PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17}
STARTUP_TIMEOUT = 5.0  # observers and the probe helper must be ready within this
MONITOR_GRACE = 0.3  # for `nft monitor` to subscribe (it prints nothing when ready)
ANSWER_TIMEOUT = 1.5  # how long the probe waits for an answer
SETTLE = 0.3  # for the last observations to arrive after the answer (or its absence)
RPC_TIMEOUT = 10.0

OK, FAIL, UNKNOWN, NOT_REACHED = "ok", "fail", "unknown", "not-reached"
SYMBOLS = {OK: "✓", FAIL: "✗", UNKNOWN: "?", NOT_REACHED: "·"}


# -- what we trace ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A source or destination: a container (with where it lives) or a bare address."""

    label: str  # as the user named it
    ip: str
    container: str = ""  # "" for an address that is no container of ours
    host: str = ""
    host_netns: str = ""  # the host's namespace on this machine ("" when not a lab host)
    netns: str = ""  # the container's network namespace
    network: str = ""
    driver: str = ""
    veth: str = ""  # host side of its veth
    bridge: str = ""
    vxlan: str = ""  # its network's VXLAN device (overlay)
    vni: int = 0
    vxlan_port: int = 0
    gateway: str = ""  # its network's gateway on its host: the DNS resolver it asks
    ip6: str = ""  # its IPv6 address on a dual-stack network, else ""


@dataclass(frozen=True)
class Probe:
    proto: str  # icmp | tcp | udp
    src: str
    dst: str
    port: int = 0  # destination port (tcp, udp)
    marker: int = 0  # ICMP echo id, or TCP/UDP source port
    family: int = 4  # 6: src and dst are IPv6 addresses, the echo is ICMPv6

    def describe(self) -> str:
        if self.proto == "icmp":
            return f"icmp{'v6' if self.family == 6 else ''} echo, id {self.marker}"
        return f"{self.proto}{'6' if self.family == 6 else ''} {self.marker} → {self.port}"

    def nft_match(self) -> str:
        icmp, ip = ("icmpv6", "ip6") if self.family == 6 else ("icmp", "ip")
        l4 = (f"{icmp} type echo-request {icmp} id {self.marker}" if self.proto == "icmp" else
              f"{self.proto} sport {self.marker} {self.proto} dport {self.port}")
        return f"{ip} saddr {self.src} {ip} daddr {self.dst} {l4}"

    def bpf(self, with_source: bool = True) -> str:
        """A tcpdump filter for the probe itself (without its source: after masquerade)."""
        if self.proto == "icmp" and self.family == 6:  # echo request (128) right after the header
            l4 = f"icmp6 and ip6[40] == 128 and ip6[44:2] == {self.marker}"
        elif self.proto == "icmp":
            l4 = "icmp[icmptype] == icmp-echo and icmp[4:2] == " + str(self.marker)
        else:
            l4 = f"{self.proto} src port {self.marker} and {self.proto} dst port {self.port}"
        source = f"src host {self.src} and " if with_source else ""
        return f"{source}dst host {self.dst} and {l4}"

    def bpf_in_vxlan(self, port: int) -> str:
        """A tcpdump filter for the probe inside VXLAN on UDP ``port``, in an outer IPv4 or
        IPv6 packet (an IPv6 underlay, issue 20). Offsets are from the outer UDP header: 8 UDP
        + 8 VXLAN + 14 Ethernet = 30 to the inner IP header (20 bytes; IPv6: 40, its addresses
        compared a 32-bit word at a time). libpcap reads ``udp[...]`` in IPv4 only: behind an
        outer IPv6 header (40 bytes, no extension header: the kernel's VXLAN adds none) the same
        bytes are ``ip6[40 + offset]``."""
        terms = self._inner_terms()
        four = " and ".join([f"udp dst port {port}",
                             *(f"udp[{_slice(o, n)}] == {v}" for o, n, v in terms)])
        six = " and ".join([f"ip6[6] == {PROTOCOLS['udp']}", f"ip6[42:2] == {port}",
                            *(f"ip6[{_slice(40 + o, n)}] == {v}" for o, n, v in terms)])
        return f"({four}) or ({six})"

    def _inner_terms(self) -> list[tuple[int, int, str]]:
        """(offset from the outer UDP header, bytes, value) that identify the probe inside."""
        if self.family == 6:
            words = [(start + 4 * i, 4, f"{int.from_bytes(packed[4 * i:4 * i + 4]):#010x}")
                     for start, address in ((38, self.src), (54, self.dst))
                     for packed in [ipaddress.IPv6Address(address).packed] for i in range(4)]
            next_header = 58 if self.proto == "icmp" else PROTOCOLS[self.proto]  # 58: ICMPv6
            l4 = [(70, 1, "128"), (74, 2, str(self.marker))] if self.proto == "icmp" else \
                [(70, 2, str(self.marker)), (72, 2, str(self.port))]
            return [*words, (36, 1, str(next_header)), *l4]
        src, dst = (int(ipaddress.IPv4Address(a)) for a in (self.src, self.dst))
        l4 = [(50, 1, "8"), (54, 2, str(self.marker))] if self.proto == "icmp" else \
            [(50, 2, str(self.marker)), (52, 2, str(self.port))]
        return [(42, 4, f"{src:#010x}"), (46, 4, f"{dst:#010x}"),
                (39, 1, str(PROTOCOLS[self.proto])), *l4]


def _slice(offset: int, size: int) -> str:
    """A pcap byte slice: ``offset`` alone for one byte, else ``offset:size``."""
    return str(offset) if size == 1 else f"{offset}:{size}"


@dataclass(frozen=True)
class Point:
    """A place where the probe should be seen, in order along its path."""

    host: str
    kind: str  # veth | bridge | nftables | vxlan | underlay | decap | destination
    what: str  # for people: "veth sdnv1234abcd (web)"
    netns: str = ""  # where to observe ("" for the destination's answer)
    device: str = ""  # the capture device ("" when not a capture)
    bpf: str = ""
    vxlan_port: int = 0  # the capture shows VXLAN on this port
    switched: bool = False  # a bridge that switches port to port: judged by the next hop


@dataclass
class Hop:
    host: str
    kind: str
    what: str
    status: str
    detail: str = ""


@dataclass
class TraceResult:
    source: Endpoint
    destination: Endpoint
    probe: Probe
    hops: list[Hop] = field(default_factory=list)

    @property
    def died_at(self) -> Hop | None:
        return next((h for h in self.hops if h.status == FAIL), None)

    @property
    def reached(self) -> bool:
        return bool(self.hops) and self.hops[-1].status == OK


# -- the path (pure) -------------------------------------------------------------------------


def _veth_point(e: Endpoint) -> Point:
    return Point(e.host, "veth", f"veth {e.veth} ({e.container})", e.host_netns, e.veth)


def _bridge_point(e: Endpoint, switched: bool = False) -> Point:
    return Point(e.host, "bridge", f"bridge {e.bridge} ({e.network})", e.host_netns,
                 "" if switched else e.bridge, switched=switched)


def plan_points(src: Endpoint, dst: Endpoint, probe: Probe) -> list[Point]:
    """Where the probe should be seen, from the source's veth to the destination's answer."""
    plain, egress = probe.bpf(), probe.bpf(with_source=False)
    nft = Point(src.host, "nftables", "nftables", src.host_netns)
    points = [_veth_point(src)]
    same_host = bool(dst.container) and dst.host == src.host
    if same_host and dst.bridge == src.bridge:
        points += [nft, _bridge_point(src, switched=True), _veth_point(dst)]
    elif same_host:
        points += [_bridge_point(src), nft, _bridge_point(dst), _veth_point(dst)]
    elif dst.container and spans_hosts(dst.driver):
        port = dst.vxlan_port or DEFAULT_VXLAN_PORT
        inner = probe.bpf_in_vxlan(port)
        points += [_bridge_point(src), nft,
                   Point(src.host, "vxlan", f"VXLAN out of {UNDERLAY_DEV}", src.host_netns,
                         UNDERLAY_DEV, inner, vxlan_port=port)]
        if dst.host_netns:
            points += [
                Point(dst.host, "underlay", f"peer host: VXLAN in on {UNDERLAY_DEV}",
                      dst.host_netns, UNDERLAY_DEV, inner, vxlan_port=port),
                Point(dst.host, "decap", f"decapsulated on {dst.vxlan}", dst.host_netns,
                      dst.vxlan),
                Point(dst.host, "nftables", "nftables", dst.host_netns),
                _bridge_point(dst), _veth_point(dst)]
    else:  # another host without an overlay, or the outside world: out through the underlay
        points += [_bridge_point(src), nft,
                   Point(src.host, "underlay", f"out of {UNDERLAY_DEV}", src.host_netns,
                         UNDERLAY_DEV, egress)]
    who = dst.ip if dst.label == dst.ip else f"{dst.label} ({dst.ip})"
    points.append(Point(dst.host or "outside", "destination", who))
    return [dataclasses.replace(p, bpf=p.bpf or plain) if p.device else p for p in points]


# -- reading what was seen (pure) ------------------------------------------------------------

_NFT_LINE = re.compile(r"^trace id (?P<id>\S+) (?P<family>\S+) (?P<table>\S+) (?P<chain>\S+) "
                       r"(?P<kind>packet|rule|verdict|policy|unknown):? ?(?P<rest>.*)$")
_VERDICT = re.compile(r"\(verdict (?P<verdict>\w+)[^)]*\)\s*$")
_COMMENT = re.compile(r'comment "(?P<comment>[^"]*)"')


def nft_verdict(lines: list[str]) -> tuple[str, str]:
    """(status, detail) of one host's ``nft monitor trace`` lines for the probe."""
    chains: list[str] = []
    seen = False
    for line in lines:
        m = _NFT_LINE.match(line.strip())
        if not m:
            continue
        seen = True
        if m["table"].startswith(TRACE_TABLE_PREFIX):
            continue
        where = f"{m['family']} {m['table']} {m['chain']}"
        if where not in chains:
            chains.append(where)
        rest = m["rest"].strip()
        if m["kind"] == "rule":
            verdict = _VERDICT.search(rest)
            if verdict and verdict["verdict"] in ("drop", "reject"):
                comment = _COMMENT.search(rest)
                rule = comment["comment"] if comment else _VERDICT.sub("", rest).strip()
                return FAIL, f"{where}: {verdict['verdict']} (rule \"{rule}\"){_policy(rule)}"
        elif m["kind"] in ("policy", "verdict") and rest.split()[:1] == ["drop"]:
            return FAIL, f"{where}: drop ({m['kind']})"
    if not seen:
        return FAIL, "no trace event (the probe never reached this host's netfilter hooks)"
    return OK, "accept" + (f" ({', '.join(chains)})" if chains else "")


def _policy(comment: str) -> str:
    """What a network policy's drop rule means (issue 22), for people; "" for other rules."""
    if not comment.startswith(POLICY_COMMENT):
        return ""
    name, direction, _ = comment[len(POLICY_COMMENT):].rsplit("/", 2)
    return (f": network policy {name!r} isolates the "
            f"{'destination for ingress' if direction == 'ingress' else 'source for egress'}"
            " and no rule of the policies selecting it allows this probe")


_VNI = re.compile(r"\bvni (\d+)")
_OUTER = re.compile(r"IP (\d+\.\d+\.\d+\.\d+)\.\d+ > (\d+\.\d+\.\d+\.\d+)\.(\d+):"
                    r"|IP6 ([0-9a-f:]+)\.\d+ > ([0-9a-f:]+)\.(\d+):")
_ADDRESSES = re.compile(r"IP (\d+\.\d+\.\d+\.\d+)(?:\.\d+)? > (\d+\.\d+\.\d+\.\d+)"
                        r"|IP6 ([0-9a-f:]+?)(?:\.\d+)? > ([0-9a-f:]+?)(?:\.\d+)?:")


def capture_detail(point: Point, lines: list[str]) -> str:
    """What a capture saw, for people: on the underlay the addresses (after masquerade); for
    VXLAN the outer addresses, port and VNI."""
    text = " ".join(lines)
    if point.kind == "underlay" and not point.vxlan_port:
        seen = _ADDRESSES.search(text)
        if not seen:
            return ""
        return f"{seen[1]} → {seen[2]}" if seen[1] else f"{seen[3]} → {seen[4]}"
    if not point.vxlan_port:
        return ""
    outer, vni = _OUTER.search(text), _VNI.search(text)
    found = [g for g in outer.groups() if g] if outer else []
    parts = [f"{found[0]} → {found[1]} udp/{found[2]}" if found else f"udp/{point.vxlan_port}"]
    if vni:
        parts.append(f"vni {vni[1]}")
    return " ".join(parts)


def classify_answer(probe: Probe, answer: dict[str, Any] | None,
                    delivered: bool) -> tuple[str, str]:
    """(status, detail) of the destination from the probe's answer. ``delivered``: the
    destination's veth saw the probe (a UDP service may rightly say nothing)."""
    if not answer:
        if probe.proto == "udp" and delivered:
            return OK, "delivered (no answer: nothing listening answers on udp)"
        return FAIL, "no answer" + (" (the answer was lost on the way back)" if delivered else "")
    rtt = f" in {answer['rtt_ms']:.1f} ms" if answer.get("rtt_ms") is not None else ""
    src = answer.get("src", "")
    kind = answer.get("kind")
    if kind == "echo-reply":
        return OK, f"echo reply{rtt}"
    if kind == "tcp" and src == probe.dst:
        flags = answer.get("flags", "")
        state = "open (SYN-ACK)" if "S" in flags and "A" in flags else \
            "closed (RST)" if "R" in flags else f"answered ({flags})"
        return OK, f"port {probe.port} {state}{rtt}"
    if kind == "icmp-error":
        what = f"ICMP type {answer.get('type')} code {answer.get('code')} from {src}"
        unreachable = (1, 4) if probe.family == 6 else (3, 3)  # port unreachable
        if src == probe.dst and (answer.get("type"), answer.get("code")) == unreachable:
            return OK, f"port {probe.port} closed ({what}){rtt}"
        return FAIL, what
    return FAIL, f"unexpected answer from {src}: {answer.get('summary', kind)}"


def evaluate(points: list[Point], probe: Probe, captures: dict[int, list[str] | str],
             traces: dict[str, list[str]], sent: dict[str, Any]) -> list[Hop]:
    """Hops from observations. ``captures[i]``: the lines point i's tcpdump printed, or a string
    saying why it could not watch; ``traces``: nft trace lines per namespace; ``sent``: the
    probe helper's report, ``{"answer": ...}`` or ``{"error": ...}``."""
    raw: list[Hop] = []
    for i, p in enumerate(points):
        status, detail = UNKNOWN, ""
        if p.kind == "nftables":
            status, detail = nft_verdict(traces.get(p.netns, []))
        elif p.device:
            seen = captures.get(i, "not watched")
            if isinstance(seen, str):
                detail = f"could not watch: {seen}"
            else:
                status = OK if seen else FAIL
                detail = capture_detail(p, seen) if seen else "not seen"
        elif p.kind == "destination":
            delivered = bool(raw) and raw[-1].kind == "veth" and raw[-1].status == OK
            if "error" in sent:
                status, detail = FAIL, f"probe not sent: {sent['error']}"
            else:
                status, detail = classify_answer(probe, sent.get("answer"), delivered)
        raw.append(Hop(p.host, p.kind, p.what, status, detail))
    for i, p in enumerate(points):  # a switching bridge is as good as the port after it
        if p.switched and i + 1 < len(raw):
            raw[i].status = raw[i + 1].status
            raw[i].detail = "switched" if raw[i].status == OK else "not switched"
    last_ok = max((i for i, h in enumerate(raw) if h.status == OK), default=-1)
    died = False
    for i, hop in enumerate(raw):
        if i < last_ok and hop.status != OK:
            hop.status = UNKNOWN
        elif i > last_ok and died:
            hop.status, hop.detail = NOT_REACHED, "not reached"
        elif i > last_ok and hop.status != OK:
            hop.status, died = FAIL, True
    return raw


# -- output (pure) ---------------------------------------------------------------------------


def _endpoint_text(e: Endpoint) -> str:
    where = f" on {e.host}" if e.host else ""
    return f"{e.label} ({e.ip}{where})" if e.label != e.ip else f"{e.ip}{where}"


def format_text(result: TraceResult) -> str:
    lines = [f"trace {_endpoint_text(result.source)} → {_endpoint_text(result.destination)}: "
             f"{result.probe.describe()}"]
    width = max((len(h.host) for h in result.hops), default=0)
    for h in result.hops:
        text = f"  {SYMBOLS[h.status]} {h.host:<{width}}  {h.what}"
        if h.detail:
            text += f" {h.detail}" if h.kind == "nftables" else f": {h.detail}"
        lines.append(text)
    died = result.died_at
    if result.reached:
        lines.append(f"reached {result.destination.label}")
    elif died is not None:
        detail = f" {died.detail}" if died.kind == "nftables" else f": {died.detail}"
        lines.append(f"died at {died.host} {died.what}{detail}")
    return "\n".join(lines)


def result_json(result: TraceResult) -> dict[str, Any]:
    died = result.died_at
    return {
        "source": dataclasses.asdict(result.source),
        "destination": dataclasses.asdict(result.destination),
        "probe": dataclasses.asdict(result.probe),
        "hops": [dataclasses.asdict(h) for h in result.hops],
        "reached": result.reached,
        "died_at": dataclasses.asdict(died) if died else None,
    }


# -- resolving names through the controller --------------------------------------------------


def _rpc_get(call: Any, name: str, what: str) -> Any:
    try:
        return call(pb.GetRequest(name=name), timeout=RPC_TIMEOUT)
    except wire.RpcError as e:
        raise CommandError(f"trace: could not find {what} {name!r}: "
                           f"{e.details()}") from e




def resolve(client: Client, name: str, via: Endpoint | None = None) -> Endpoint:
    """A container by name (joined containers: their donor's interface), or an IPv4 or IPv6
    address (a container's when one has it), or a DNS name (an alias, ``db.svc.lab``) looked
    up through ``via``'s resolver from inside its namespace, as ``via`` itself would."""
    if ip_version(name) == 6:
        listed = client.api.ListContainers(pb.ListRequest(), timeout=RPC_TIMEOUT).containers
        owner = next((c for c in listed if c.ip6 == name), None)
        if owner is None:
            return Endpoint(label=name, ip="", ip6=name)
        return dataclasses.replace(_container_endpoint(client, owner), label=name)
    if via is not None and via.netns and ip_version(name) != 4:
        try:
            client.api.GetContainer(pb.GetRequest(name=name), timeout=RPC_TIMEOUT)
        except wire.RpcError as e:
            if e.code() not in (wire.StatusCode.NOT_FOUND,
                                wire.StatusCode.INVALID_ARGUMENT):  # "db.svc.lab": no name
                raise CommandError(f"trace: could not find container {name!r}: "
                                   f"{e.details()}") from e
            address, why = local.lookup_a(via.netns, via.gateway, name, RPC_TIMEOUT)
            if not address:
                raise CommandError(f"trace: {why}") from None
            return dataclasses.replace(resolve(client, address), label=name)
    if ip_version(name) == 4:
        listed = client.api.ListContainers(pb.ListRequest(), timeout=RPC_TIMEOUT).containers
        owner = next((c for c in listed if c.ip == name), None)
        if owner is None:
            return Endpoint(label=name, ip=name)
        return dataclasses.replace(_container_endpoint(client, owner), label=name)
    return _container_endpoint(client, _rpc_get(client.api.GetContainer, name, "container"))


def _container_endpoint(client: Client, ctr: pb.Container) -> Endpoint:
    mode, donor = network_mode(ctr.network)
    iface_owner = ctr
    if mode == MODE_CONTAINER:
        iface_owner = _rpc_get(client.api.GetContainer, donor, "container")
        mode = network_mode(iface_owner.network)[0]
    if mode != MODE_BRIDGE or not (iface_owner.ip or iface_owner.ip6):
        raise CommandError(f"trace: container {ctr.name!r} has no interface on a network "
                           f"(network mode {ctr.network!r})")
    host = _rpc_get(client.api.GetHost, ctr.host, "host")
    net = _rpc_get(client.api.GetNetwork, iface_owner.network, "network")
    return Endpoint(
        label=ctr.name, ip=iface_owner.ip, container=ctr.name, host=ctr.host,
        host_netns=host.netns if host.lab else "", netns=ctr.status.netns,
        network=net.name, driver=net.driver or "bridge",
        veth=veth_name(iface_owner.name, iface_owner.interface or "eth0"),
        bridge=bridge_name(net.name),
        vxlan=vxlan_name(net.name) if spans_hosts(net.driver) else "",
        vni=net.vni, vxlan_port=net.vxlan_port or (DEFAULT_VXLAN_PORT
                                                   if spans_hosts(net.driver) else 0),
        gateway=iface_owner.gateway, ip6=iface_owner.ip6)


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def refuse_root_namespace(path: str, what: str) -> None:
    """Trace acts only in lab namespaces: never in this process's own (the root) namespace."""
    mine = {_inode("/proc/self/ns/net"), _inode("/proc/1/ns/net")} - {None}
    have = _inode(path) if path else None
    if have is None:
        raise CommandError(f"trace: the namespace of {what} ({path or 'none'}) is not on this "
                           "machine; trace works only for lab hosts")
    if have in mine:
        raise CommandError(f"trace: {what} is in this machine's root network namespace; "
                           "trace works only inside lab hosts")


def check_local(src: Endpoint, dst: Endpoint) -> None:
    if not src.host_netns:
        raise CommandError(f"trace: {src.label!r} runs on host {src.host!r}, which is not a lab "
                           "host: trace works only for lab hosts (namespaces on this machine)")
    refuse_root_namespace(src.netns, f"container {src.container!r}")
    refuse_root_namespace(src.host_netns, f"host {src.host!r}")
    if dst.host_netns:
        refuse_root_namespace(dst.host_netns, f"host {dst.host!r}")


# -- observers and the probe (the kernel) ----------------------------------------------------


def _nsenter(netns: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net={netns}", *argv]


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """End a process we started, by its PID; its output."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=2)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def _read_until(proc: subprocess.Popen[str], stream: Any, text: str, deadline: float) -> str:
    """Read ``stream`` until it says ``text``: "" when it did, else what it said instead.
    Reads the file descriptor itself: a buffered reader would hide lines from select()."""
    fd, seen = stream.fileno(), b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            return seen.decode(errors="replace").strip() or f"exited with status {proc.wait()}"
        seen += chunk
        if text.encode() in seen:
            return ""
    return seen.decode(errors="replace").strip() or "did not start in time"


class Capture:
    """``tcpdump -c 1`` for the probe on one device of one namespace."""

    def __init__(self, point: Point) -> None:
        extra = ["-T", "vxlan"] if point.vxlan_port not in (0, DEFAULT_VXLAN_PORT) else []
        self.proc = subprocess.Popen(
            _nsenter(point.netns, "tcpdump", "-n", "-l", "-p", "--immediate-mode", "-c", "1",
                     *extra, "-i", point.device, point.bpf),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.problem = ""

    def wait_ready(self, deadline: float) -> None:
        self.problem = _read_until(self.proc, self.proc.stderr, "listening on", deadline)

    def result(self) -> list[str] | str:
        out, _ = _stop(self.proc)
        return self.problem or [line for line in out.splitlines() if line.strip()]

    def close(self) -> None:
        if self.proc.returncode is None:
            _stop(self.proc)


class NftTrace:
    """A temporary table that sets nftrace on the probe, and ``nft monitor trace``."""

    def __init__(self, netns: str, probe: Probe) -> None:
        self.netns = netns
        self.table = TRACE_TABLE_PREFIX + secrets.token_hex(4)
        self.started = 0.0
        self.monitor: subprocess.Popen[str] | None = None
        script = "".join(
            f"add table {family} {self.table}\n"
            f"add chain {family} {self.table} pre {{ type filter hook prerouting "
            f"priority -350; }}\n"
            f"add rule {family} {self.table} pre {probe.nft_match()} meta nftrace set 1\n"
            for family in ("inet", "bridge"))
        self._nft(script, "add")

    def _nft(self, script: str, verb: str) -> None:
        done = subprocess.run(_nsenter(self.netns, "nft", "-f", "-"), input=script, text=True,
                              capture_output=True, timeout=10, check=False)
        if done.returncode != 0:
            raise CommandError(f"trace: could not {verb} table {self.table!r} in "
                               f"{self.netns}: {done.stderr.strip()}")

    def start(self) -> None:
        self.monitor = subprocess.Popen(_nsenter(self.netns, "nft", "monitor", "trace"),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.started = time.monotonic()

    def result(self) -> list[str]:
        if self.monitor is None:
            return []
        out, _ = _stop(self.monitor)
        return out.splitlines()

    def close(self) -> None:
        try:
            if self.monitor is not None and self.monitor.returncode is None:
                _stop(self.monitor)
        finally:
            self._nft("".join(f"delete table {f} {self.table}\n" for f in ("inet", "bridge")),
                      "delete")


class Prober:
    """The helper that sends the probe from inside the source's namespace (see probe_main)."""

    def __init__(self, netns: str, probe: Probe, timeout: float) -> None:
        spec = json.dumps({**dataclasses.asdict(probe), "timeout": timeout})
        self.proc = subprocess.Popen(
            _nsenter(netns, sys.executable, "-m", "sdnctl.lab.trace", "--probe", spec),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.problem = ""

    def wait_ready(self, deadline: float) -> None:
        self.problem = _read_until(self.proc, self.proc.stdout, "ready", deadline)

    def send(self, timeout: float) -> dict[str, Any]:
        if self.problem:
            return {"error": f"the probe helper did not start: {self.problem}"}
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        try:
            out, err = self.proc.communicate(timeout=timeout + 5)
        except subprocess.TimeoutExpired:
            return {"error": "the probe helper did not finish"}
        try:
            result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
            return result
        except (ValueError, IndexError):
            return {"error": f"the probe helper failed: {err.strip()[-300:]}"}

    def close(self) -> None:
        if self.proc.returncode is None:
            _stop(self.proc)


def run_trace(src: Endpoint, dst: Endpoint, probe: Probe) -> TraceResult:
    points = plan_points(src, dst, probe)
    with contextlib.ExitStack() as stack:
        prober = Prober(src.netns, probe, ANSWER_TIMEOUT)
        stack.callback(prober.close)
        traces: dict[str, NftTrace] = {}
        for p in points:
            if p.kind == "nftables" and p.netns not in traces:
                traces[p.netns] = NftTrace(p.netns, probe)
                stack.callback(traces[p.netns].close)
                traces[p.netns].start()
        captures: dict[int, Capture] = {}
        for i, p in enumerate(points):
            if p.device:
                captures[i] = Capture(p)
                stack.callback(captures[i].close)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        for capture in captures.values():
            capture.wait_ready(deadline)
        prober.wait_ready(deadline)
        latest = max((t.started for t in traces.values()), default=0.0)
        time.sleep(max(0.0, latest + MONITOR_GRACE - time.monotonic()))
        answer = prober.send(ANSWER_TIMEOUT)
        time.sleep(SETTLE)
        seen = {i: c.result() for i, c in captures.items()}
        lines = {netns: t.result() for netns, t in traces.items()}
    hops = evaluate(points, probe, seen, lines, answer)
    return TraceResult(src, dst, probe, hops)


# -- the probe helper (runs inside the source's namespace) ----------------------------------


def probe_main(spec_json: str) -> int:
    """Build the probe, say "ready", wait for "go", send it, print the answer as JSON."""
    from scapy.config import conf
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
    from scapy.sendrecv import sr1
    from scapy.supersocket import L3RawSocket, L3RawSocket6

    spec = json.loads(spec_json)
    six = spec.get("family") == 6
    # the kernel routes and resolves neighbours, as for any packet (sr1 takes conf.L3socket
    # for an IPv6 packet too)
    conf.L3socket = conf.L3socket6 = L3RawSocket6 if six else L3RawSocket
    ip = IPv6(src=spec["src"], dst=spec["dst"]) if six else IP(src=spec["src"], dst=spec["dst"])
    if spec["proto"] == "icmp" and six:
        packet = ip / ICMPv6EchoRequest(id=spec["marker"], seq=1)
    elif spec["proto"] == "icmp":
        packet = ip / ICMP(type=8, id=spec["marker"], seq=1)
    elif spec["proto"] == "tcp":
        packet = ip / TCP(sport=spec["marker"], dport=spec["port"], flags="S",
                          seq=secrets.randbits(32))
    else:
        packet = ip / UDP(sport=spec["marker"], dport=spec["port"]) / b"sdnctl-trace"
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    started = time.time()
    reply = sr1(packet, timeout=spec["timeout"], verbose=0)
    print(json.dumps({"answer": _describe_answer(reply, started)}), flush=True)
    return 0


def _describe_answer(reply: Any, started: float) -> dict[str, Any] | None:
    if reply is None:
        return None
    from scapy.layers.inet import ICMP, TCP
    from scapy.layers.inet6 import ICMPv6EchoReply, _ICMPv6Error

    answer: dict[str, Any] = {"src": reply.src, "summary": reply.summary(),
                              "rtt_ms": (float(reply.time) - started) * 1000}
    if reply.haslayer(TCP):
        answer.update(kind="tcp", flags=str(reply[TCP].flags))
    elif reply.haslayer(ICMPv6EchoReply):
        answer.update(kind="echo-reply")
    elif reply.haslayer(_ICMPv6Error):
        error = reply[_ICMPv6Error]
        answer.update(kind="icmp-error", type=int(error.type), code=int(error.code))
    elif reply.haslayer(ICMP) and reply[ICMP].type == 0:
        answer.update(kind="echo-reply")
    elif reply.haslayer(ICMP):
        answer.update(kind="icmp-error", type=int(reply[ICMP].type), code=int(reply[ICMP].code))
    else:
        answer.update(kind="other")
    return answer


# -- the verb --------------------------------------------------------------------------------


def make_probe(src: Endpoint, dst: Endpoint, proto: str, port: int | None,
               marker: int | None = None, family: int = 4) -> Probe:
    """The probe from ``src`` to ``dst``; ``family`` 6 between their IPv6 addresses."""
    if proto == "icmp" and port:
        raise CommandError("trace: --port needs --proto tcp or udp")
    if proto != "icmp" and not port:
        raise CommandError(f"trace: --proto {proto} needs --port")
    if family == 6:
        for e in (src, dst):
            if not e.ip6:
                raise CommandError(f"trace: {e.label} has no IPv6 address (its network has "
                                   "no subnet6)")
    return Probe(proto=proto, src=src.ip6 if family == 6 else src.ip,
                 dst=dst.ip6 if family == 6 else dst.ip, port=port or 0,
                 marker=marker or 33000 + secrets.randbelow(28000), family=family)


def in_family(e: Endpoint, family: int) -> Endpoint:
    """``e`` shown by its address in ``family`` (the hops and the text name that address)."""
    if family != 6:
        return e
    label = e.ip6 if e.label in (e.ip, e.ip6) else e.label
    return dataclasses.replace(e, ip=e.ip6, label=label)


def cmd_trace(args: argparse.Namespace) -> int:
    proto = args.proto or ("tcp" if args.port else "icmp")
    client = connect()
    try:
        src = resolve(client, args.src)
        dst = resolve(client, args.dst, via=src)
    finally:
        client.close()
    if not src.container:
        raise CommandError(f"trace: the source must be a container, not {args.src!r}")
    check_local(src, dst)
    # an IPv6-only source (issue 20) has IPv6 only: -6 is implied
    family = 6 if args.ipv6 or ip_version(args.dst) == 6 or not src.ip else 4
    probe = make_probe(src, dst, proto, args.port, family=family)
    result = run_trace(in_family(src, family), in_family(dst, family), probe)
    if args.json:
        print(json.dumps(result_json(result), indent=2))
    else:
        print(format_text(result))
    return 0 if result.reached else 1


def register(sub: Any) -> None:
    """Add this module's verbs to the sdnctl argument parser's sub-parsers."""
    p = sub.add_parser(
        "trace", help="send one real probe and show each hop it crossed (lab hosts)",
        description="Sends ONE probe (scapy, from inside SRC's network namespace) to DST, a "
        "container or an IPv4 or IPv6 address, and reports each hop: veth, bridge, the nftables "
        "verdict (traced with a temporary table, removed afterwards), VXLAN encapsulation on "
        "the underlay, the peer host, the destination. Works for lab hosts (namespaces on "
        "this machine) only. Exit status 0 when the destination answered.")
    p.add_argument("src", metavar="SRC", help="a container")
    p.add_argument("dst", metavar="DST", help="a container or an IPv4 or IPv6 address")
    p.add_argument("-6", "--ipv6", action="store_true",
                   help="probe over IPv6, between the containers' IPv6 addresses (implied by an "
                   "IPv6 DST)")
    p.add_argument("--port", type=int, help="destination port (implies --proto tcp)")
    p.add_argument("--proto", choices=tuple(PROTOCOLS), help="default icmp (tcp with --port)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_trace)


@contextlib.contextmanager
def _no_traceback() -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"] and len(sys.argv) == 3:
        with _no_traceback():
            raise SystemExit(probe_main(sys.argv[2]))
    raise SystemExit("usage: python -m sdnctl.lab.trace --probe SPEC (used by `sdnctl trace`)")
