"""The firewall against a real kernel: isolation, internal networks, published ports,
anti-spoofing and conntrack flushing, proven with real packets.

The lab (all names carry the test's ``run_prefix``): a host namespace H with three bridges —
front (10.81.1.0/24), back (10.81.2.0/24) and an internal one (10.81.3.0/24) — containers f1, f2
on front, b1 on back, i1 on internal, and an "outside" namespace O joined to H by a plain veth
(H 198.51.100.1, O 198.51.100.2; O has no route to the container subnets). The IPv6 hairpin
test adds IPv6 to front, f1, f2 (fd00:81:1::/64) and the uplink (2001:db8:81::/64). We act through
``Links``, ``Firewall`` and ``conntrack`` and assert with ping, TCP/UDP clients, tcpdump, scapy,
``nft -j`` counters and raw conntrack dumps.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from helpers.capture import Capture, Control
from helpers.capture import capture as tcpdump
from helpers.namespaces import UPLINK_H, UPLINK_O, build_uplink, in_ns
from pyroute2 import Conntrack

from agent.kernel import conntrack, firewall, nft, nftcounters, sysctl
from agent.kernel.firewall import (
    BridgeNet,
    Firewall,
    FirewallSpec,
    PortGuard,
    PortRule,
    VxlanFilter,
    fingerprint,
)
from agent.kernel.links import Links
from agent.kernel.netns import create_netns, netns_path, remove_netns, run_in_netns
from agent.names import bridge_name, container_mac, link_local, veth_name
from agent.nftrules import render, sha_item

pytestmark = pytest.mark.netns

MTU = 1500
PYTHON = sys.executable  # the venv's: it has scapy
NETWORKS = {"front": "10.81.1", "back": "10.81.2", "inside": "10.81.3"}
CONTAINERS = {"f1": ("front", "10.81.1.2"), "f2": ("front", "10.81.1.3"),
              "b1": ("back", "10.81.2.2"), "i1": ("inside", "10.81.3.2")}
WEB = PortRule("f1", bridge_name("front"), "10.81.1.2", "tcp", "", 8080, 80)
DNS = PortRule("f1", bridge_name("front"), "10.81.1.2", "udp", "", 5353, 53)
LOCAL = PortRule("f1", bridge_name("front"), "10.81.1.2", "tcp", "127.0.0.1", 9090, 80)

SERVER = textwrap.dedent("""\
    import select, socket
    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("0.0.0.0", 80)); t.listen(16)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 53))
    print("ready", flush=True)
    while True:
        for s in select.select([t, u], [], [])[0]:
            if s is t:
                c, peer = t.accept(); c.sendall(f"{peer[0]}\\n".encode()); c.close()
                print("tcp", peer[0], flush=True)
            else:
                data, peer = u.recvfrom(100); u.sendto(f"{peer[0]}\\n".encode(), peer)
                print("udp", peer[0], flush=True)
""")
CLIENT = textwrap.dedent("""\
    import socket, sys
    proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if proto == "tcp":
        s = socket.create_connection((host, port), timeout=2)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
        s.sendto(b"x", (host, port))
    print(s.recv(100).decode().strip())
""")




@dataclass
class FwLab:
    prefix: str
    host: str
    outside: str
    containers: dict[str, str]  # name -> netns path
    links: Links
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def ping(self, src: str, dst: str) -> subprocess.CompletedProcess[str]:
        return in_ns(self.containers.get(src, src), "ping", "-c1", "-W1", "-n", dst, check=False)

    def can_ping(self, src: str, dst: str) -> bool:
        return self.ping(src, dst).returncode == 0

    def spec(self, allowed: tuple[tuple[str, str], ...] = (), ports: tuple[PortRule, ...] = (),
             guards: bool = False) -> FirewallSpec:
        nets = tuple(BridgeNet(n, bridge_name(n), f"{p}.0/24", masquerade=True,
                               internal=(n == "inside")) for n, p in NETWORKS.items())
        gs = tuple(PortGuard(c, veth_name(c, "eth0"), container_mac(ip), ip)
                   for c, (_, ip) in CONTAINERS.items()) if guards else ()
        return FirewallSpec(networks=nets, allowed=allowed, ports=ports, guards=gs)

    def start(self, path: str, *argv: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["nsenter", f"--net={path}", *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    def client(self, src: str, proto: str, host: str, port: int) -> str | None:
        done = in_ns(self.containers.get(src, src), PYTHON, "-c", CLIENT, proto, host,
                     str(port), check=False)
        return done.stdout.strip() if done.returncode == 0 else None

    def counters(self) -> dict[str, int]:
        """Packets per rule comment in ``bridge sdnctl`` (summed over rules sharing one)."""
        out = in_ns(self.host, "nft", "-j", "list", "table", "bridge", "sdnctl").stdout
        found: dict[str, int] = {}
        for item in json.loads(out)["nftables"]:
            rule = item.get("rule")
            if rule is None:
                continue
            packets = sum(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
            found[rule["comment"]] = found.get(rule["comment"], 0) + packets
        return found


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


@pytest.fixture
def fwlab(run_prefix: str) -> Iterator[FwLab]:
    names = ["h", "o", *CONTAINERS]
    made: list[str] = []
    links: Links | None = None
    lab: FwLab | None = None
    try:
        for n in names:
            path = netns_path(f"{run_prefix}{n}")
            create_netns(path)
            made.append(path)
        host, outside = made[0], made[1]
        links = Links(host)
        lab = FwLab(run_prefix, host, outside, dict(zip(CONTAINERS, made[2:], strict=True)),
                    links)
        for net, p in NETWORKS.items():
            links.ensure_bridge(bridge_name(net), f"sdnctl:net/{net}", f"{p}.1/24", MTU)
        for c, (net, ip) in CONTAINERS.items():
            links.ensure_veth(veth_name(c, "eth0"), f"sdnctl:ctr/{c}/eth0", bridge_name(net), MTU,
                              lab.containers[c], "eth0", f"{ip}/24", f"{NETWORKS[net]}.1",
                              mac=container_mac(ip))
        build_uplink(host, outside)
        run_in_netns(host, sysctl.ensure_ip_forward)
        yield lab
    finally:
        for proc in lab.procs if lab else []:
            _stop(proc)
        if links is not None:
            links.close()
        for path in reversed(made):
            remove_netns(path)


@contextmanager
def capture(lab: FwLab, path: str, bpf: str, control: Control | None = None) -> Iterator[Capture]:
    """tcpdump -e in ``path`` on eth0 (or up1), proved ready by a control packet."""
    dev = "up1" if path == lab.outside else "eth0"
    with tcpdump(path, dev, bpf, "-e", control=control) as cap:
        yield cap


def mac_of(path: str, ifname: str) -> str:
    """Through ip, not /sys: nsenter keeps the mount namespace, so /sys shows the root's links."""
    return str(json.loads(in_ns(path, "ip", "-j", "link", "show", ifname).stdout)[0]["address"])


def ct_entries(path: str) -> list[Any]:
    def dump() -> list[Any]:
        with Conntrack() as ct:
            return list(ct.dump_entries())
    return run_in_netns(path, dump)


def addresses(entry: Any) -> set[str]:
    o, r = entry.tuple_orig, entry.tuple_reply
    return {o.saddr, o.daddr, r.saddr, r.daddr}


# --- isolation ------------------------------------------------------------------------------


def test_bridges_are_isolated_until_allowed_then_routed_without_nat(fwlab: FwLab) -> None:
    fw = Firewall(fwlab.host)
    b1 = CONTAINERS["b1"][1]
    fw.apply(fwlab.spec())
    assert fwlab.can_ping("f1", "10.81.1.3")  # same bridge: untouched
    assert not fwlab.can_ping("f1", b1)
    assert not fwlab.can_ping("b1", CONTAINERS["f1"][1])
    # what the live view shows: the bridged flow (counted by the bridge table's set, whether
    # or not br_netfilter lets conntrack see it; f2 answered, so it is one flow from f1) and
    # each network's isolation drops
    fw.read_counters()
    assert fw.bridged_flows() == [("10.81.1.2", "10.81.1.3", "icmp", 2, 168)]
    assert fw.network_drops() == {("front", "isolation"): 1, ("back", "isolation"): 1}

    fw.apply(fwlab.spec(allowed=(("back", "front"),)))  # order-free
    with capture(fwlab, fwlab.containers["b1"], "icmp[icmptype] == icmp-echo") as cap:
        done = fwlab.ping("f1", b1)
        out = cap.stop()
    assert done.returncode == 0, done.stdout
    assert "ttl=63" in done.stdout, done.stdout  # one routed hop, TTL - 1
    assert f"10.81.1.2 > {b1}: ICMP echo request" in out, out  # the real source, no NAT
    assert fwlab.can_ping("b1", CONTAINERS["f1"][1])
    assert not fwlab.can_ping("f1", CONTAINERS["i1"][1])  # only the allowed pair

    # A flow that is running when the pair goes is cut too (the rules are stateless).
    pinger = fwlab.start(fwlab.containers["f1"], "ping", "-n", "-i", "0.2", b1)
    with capture(fwlab, fwlab.containers["b1"], "icmp[icmptype] == icmp-echo") as cap:
        cap.wait_for(f"> {b1}: ICMP echo request")  # the flow runs
    fw.apply(fwlab.spec())
    assert run_in_netns(fwlab.host, lambda: conntrack.flush_between("10.81.1.0/24",
                                                                    "10.81.2.0/24")) >= 1
    # f1 keeps sending (three more requests leave it), and none reaches b1
    request = f"> {b1}: ICMP echo request"
    with capture(fwlab, fwlab.containers["f1"], "icmp[icmptype] == icmp-echo") as sent, \
            capture(fwlab, fwlab.containers["b1"], "icmp[icmptype] == icmp-echo") as got:
        already = sum(request in line for line in sent.lines())
        sent.wait_for(request, count=already + 3)
        assert got.stop() == ""
    _stop(pinger)
    assert not fwlab.can_ping("f1", b1)
    assert not fwlab.can_ping("b1", CONTAINERS["f1"][1])


def test_internal_network_has_no_egress_and_others_masquerade(fwlab: FwLab) -> None:
    fw = Firewall(fwlab.host)
    fw.apply(fwlab.spec())
    with capture(fwlab, fwlab.outside, "icmp[icmptype] == icmp-echo") as cap:
        assert fwlab.can_ping("f1", UPLINK_O)
        out = cap.stop()
    assert f"{UPLINK_H} > {UPLINK_O}: ICMP echo request" in out, out
    assert not fwlab.can_ping("i1", UPLINK_O)
    assert not fwlab.can_ping("i1", CONTAINERS["f1"][1])
    assert fwlab.can_ping("i1", "10.81.3.1")  # its gateway (the host) stays reachable
    # An internal network reaches an allowed bridge, still not the outside, and is never NATed.
    fw.apply(fwlab.spec(allowed=(("inside", "front"),)))
    assert fwlab.can_ping("i1", CONTAINERS["f1"][1])
    assert fwlab.can_ping("f1", CONTAINERS["i1"][1])
    assert not fwlab.can_ping("i1", UPLINK_O)
    assert not fwlab.can_ping("i1", CONTAINERS["b1"][1])
    rules = in_ns(fwlab.host, "nft", "list", "table", "inet", "sdnctl").stdout
    assert "10.81.3.0/24" not in rules  # no masquerade for it


# --- published ports ------------------------------------------------------------------------


def _start_server(fwlab: FwLab) -> subprocess.Popen[str]:
    server = fwlab.start(fwlab.containers["f1"], PYTHON, "-c", SERVER)
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "ready"
    return server


def test_published_ports_keep_the_client_address(fwlab: FwLab) -> None:
    fw = Firewall(fwlab.host)
    fw.apply(fwlab.spec(ports=(WEB, DNS, LOCAL)))
    _start_server(fwlab)
    # From the outside, through the host's underlay address: the container sees the client.
    assert fwlab.client(fwlab.outside, "tcp", UPLINK_H, 8080) == UPLINK_O
    assert fwlab.client(fwlab.outside, "udp", UPLINK_H, 5353) == UPLINK_O
    # Hairpin: a container on the same bridge, through the host's address (masqueraded to the
    # gateway so that the answer comes back through the host).
    assert fwlab.client("f2", "tcp", UPLINK_H, 8080) == "10.81.1.1"
    # Another bridge reaches a published port (DNAT'd flows pass isolation), without NAT.
    assert fwlab.client("b1", "tcp", UPLINK_H, 8080) == CONTAINERS["b1"][1]
    # An internal network does not.
    assert fwlab.client("i1", "tcp", "10.81.3.1", 8080) is None
    # The host itself, on loopback: the 127.0.0.1 port and the any-address port.
    assert fwlab.client(fwlab.host, "tcp", "127.0.0.1", 9090) == "10.81.1.1"
    assert fwlab.client(fwlab.host, "tcp", "127.0.0.1", 8080) == "10.81.1.1"
    assert fwlab.client(fwlab.host, "tcp", UPLINK_H, 8080) == UPLINK_H
    # The 127.0.0.1 port is not on the underlay address ...
    assert fwlab.client(fwlab.outside, "tcp", UPLINK_H, 9090) is None


def test_loopback_ports_are_not_reachable_from_another_host(fwlab: FwLab) -> None:
    """... nor through a frame sent to the host's MAC with destination 127.0.0.1 (moby#45610),
    for the 127.0.0.1 port and for the any-address one."""
    fw = Firewall(fwlab.host)
    fw.apply(fwlab.spec(ports=(WEB, LOCAL)))
    h_mac = mac_of(fwlab.host, "up0")
    script = textwrap.dedent(f"""\
        from scapy.all import Ether, IP, TCP, sendp
        for port in (9090, 8080):
            sendp(Ether(dst="{h_mac}") / IP(src="{UPLINK_O}", dst="127.0.0.1") /
                  TCP(sport=40000 + port, dport=port, flags="S"), iface="up1", verbose=False)
    """)
    with capture(fwlab, fwlab.containers["f1"], "tcp port 80", Control("tcp", dport=80)) as cap:
        in_ns(fwlab.outside, PYTHON, "-c", script)
        assert cap.stop() == ""


# --- IPv6 hairpin (issue 20) ----------------------------------------------------------------

FRONT6 = "fd00:81:1::"  # front's IPv6 lease: the bridge ::1, f1 ::2, f2 ::3
UPLINK6_H, UPLINK6_O = "2001:db8:81::1", "2001:db8:81::2"
BRIDGE_NF6 = "net.bridge.bridge-nf-call-ip6tables"
SERVER6 = textwrap.dedent("""\
    import socket
    t = socket.socket(socket.AF_INET6); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("::", 80)); t.listen(16)
    print("ready", flush=True)
    while True:
        c, peer = t.accept(); c.sendall(f"{peer[0]}\\n".encode()); c.close()
""")


def _add_ipv6(fwlab: FwLab) -> None:
    """IPv6 beside IPv4 on front (its bridge, f1 and f2) and on the uplink, and IPv6 forwarding
    in the host (``nodad``: every address usable at once)."""
    in_ns(fwlab.host, "ip", "addr", "add", f"{FRONT6}1/64", "dev", bridge_name("front"), "nodad")
    in_ns(fwlab.host, "ip", "addr", "add", f"{UPLINK6_H}/64", "dev", "up0", "nodad")
    in_ns(fwlab.outside, "ip", "addr", "add", f"{UPLINK6_O}/64", "dev", "up1", "nodad")
    for name, last in (("f1", 2), ("f2", 3)):
        path = fwlab.containers[name]
        in_ns(path, "ip", "addr", "add", f"{FRONT6}{last}/64", "dev", "eth0", "nodad")
        in_ns(path, "ip", "-6", "route", "add", "default", "via", f"{FRONT6}1")
    run_in_netns(fwlab.host, lambda: sysctl.ensure_sysctl("net.ipv6.conf.all.forwarding", "1"))


def _bridge_nf6(path: str | None = None) -> str | None:
    """``net.bridge.bridge-nf-call-ip6tables`` in ``path`` (None: ours), None without
    br_netfilter."""
    def read() -> str | None:
        return sysctl.read_sysctl(BRIDGE_NF6) if os.path.exists(
            sysctl.sysctl_path(BRIDGE_NF6)) else None
    return read() if path is None else run_in_netns(path, read)


def _bridged_answers_unseen(host: str) -> None:
    """Bridged IPv6 frames skip the host's netfilter hooks, as on a host without br_netfilter
    (where it is loaded, new namespaces start with it on: conntrack would then un-DNAT the
    server's answer on the bridge, and a hairpin would work without being masqueraded). Per
    namespace since Linux 5.3: checked, so the root namespace's value never changes."""
    if _bridge_nf6(host) is None:
        return  # no br_netfilter: nothing to turn off
    root = _bridge_nf6()
    run_in_netns(host, lambda: sysctl.ensure_sysctl(BRIDGE_NF6, "0"))
    if _bridge_nf6() != root:
        assert root is not None
        sysctl.ensure_sysctl(BRIDGE_NF6, root)
        pytest.fail(f"{BRIDGE_NF6} is not per namespace on this kernel: restored, not tested")


def _delete_rule(path: str, comment: str) -> None:
    """Delete our rule with ``comment`` by hand (drift), by its handle."""
    listed = json.loads(in_ns(path, "nft", "-j", "list", "chain", "inet", "sdnctl",
                              "postrouting").stdout)["nftables"]
    (handle,) = [item["rule"]["handle"] for item in listed
                 if item.get("rule", {}).get("comment") == comment]
    in_ns(path, "nft", "delete", "rule", "inet", "sdnctl", "postrouting", "handle", str(handle))


def test_ipv6_hairpin_is_masqueraded_and_answered_through_the_host(fwlab: FwLab) -> None:
    """A container reaches a port published on the host's IPv6 addresses from its own bridge,
    through the host's address: masqueraded to the bridge's IPv6 gateway, so that the answer
    comes back through the host; the outside keeps its address. Without that one rule the
    answer goes straight over the bridge and the hairpin breaks."""
    _add_ipv6(fwlab)
    _bridged_answers_unseen(fwlab.host)
    front6 = f"{FRONT6}/64"
    every = replace(WEB, container_ip6=f"{FRONT6}2")  # "": every address, IPv6 included
    only6 = replace(every, host_ip="::", host_port=8082)
    spec = fwlab.spec(ports=(every, only6))
    spec = replace(spec, networks=tuple(replace(n, subnet6=front6) if n.network == "front"
                                        else n for n in spec.networks))
    fw = Firewall(fwlab.host)
    fw.apply(spec)
    server = fwlab.start(fwlab.containers["f1"], PYTHON, "-c", SERVER6)
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    # positive controls: f2 reaches f1 directly (its own address), the outside reaches the
    # published ports through the host's IPv6 address (DNAT'd, its address kept)
    assert fwlab.client("f2", "tcp", f"{FRONT6}2", 80) == f"{FRONT6}3"
    for port in (8080, 8082):
        assert fwlab.client(fwlab.outside, "tcp", UPLINK6_H, port) == UPLINK6_O
    # the hairpin: through the host's address, and through the bridge's own
    for address, port in ((UPLINK6_H, 8080), (UPLINK6_H, 8082), (f"{FRONT6}1", 8082)):
        assert fwlab.client("f2", "tcp", address, port) == f"{FRONT6}1", (address, port)
    # the rule is what makes it work: without it the answer comes from f1's own address,
    # which f2 never called (the outside is not affected)
    _delete_rule(fwlab.host, "sdnctl:net/front/hairpin/ip6")
    assert fwlab.client("f2", "tcp", UPLINK6_H, 8082) is None
    assert fwlab.client(fwlab.outside, "tcp", UPLINK6_H, 8082) == UPLINK6_O
    assert fw.observe() != fingerprint(spec)  # drift, which the next apply repairs
    fw.apply(spec)
    assert fwlab.client("f2", "tcp", UPLINK6_H, 8082) == f"{FRONT6}1"


# --- anti-spoofing --------------------------------------------------------------------------


def test_spoofed_frames_are_dropped_and_counted(fwlab: FwLab) -> None:
    fw = Firewall(fwlab.host)
    fw.apply(fwlab.spec(guards=True))
    f1_ip, f2_ip = CONTAINERS["f1"][1], CONTAINERS["f2"][1]
    f1_mac, f2_mac = container_mac(f1_ip), container_mac(f2_ip)
    assert mac_of(fwlab.containers["f1"], "eth0") == f1_mac
    assert fwlab.can_ping("f2", "10.81.1.1")  # f2 knows its gateway's MAC now
    before = fwlab.counters()
    script = textwrap.dedent(f"""\
        from scapy.all import ARP, Ether, ICMP, IP, IPv6, ICMPv6ND_RA, UDP, sendp
        def send(p): sendp(p, iface="eth0", verbose=False)
        send(Ether(src="{f2_mac}", dst="{f2_mac}") / IP(src="{f1_ip}", dst="{f2_ip}") /
             ICMP(id=1001))                                       # forged source MAC
        send(Ether(src="{f2_mac}", dst="{f2_mac}") / IP(src="{f2_ip}", dst="{f2_ip}") /
             ICMP(id=1004))  # f2 whole (MAC and IP: the fast path's key holds the port too)
        send(Ether(src="{f1_mac}", dst="33:33:00:00:00:01") /
             IPv6(src="fe80::99", dst="ff02::1") / UDP(dport=9))  # forged IPv6 source, not ICMPv6
        send(Ether(src="{f1_mac}", dst="{f2_mac}") / IP(src="10.81.1.99", dst="{f2_ip}") /
             ICMP(id=1002))                                       # forged source IP
        send(Ether(src="{f1_mac}", dst="{f2_mac}") / ARP(op=2, hwsrc="{f1_mac}",
             psrc="10.81.1.1", hwdst="{f2_mac}", pdst="{f2_ip}"))  # ARP reply for the gateway
        send(Ether(src="{f1_mac}", dst="{f2_mac}") / ARP(op=2, hwsrc="02:42:00:00:00:99",
             psrc="{f1_ip}", hwdst="{f2_mac}", pdst="{f2_ip}"))    # ARP with a forged sender MAC
        send(Ether(src="{f1_mac}", dst="33:33:00:00:00:01") /
             IPv6(src="{link_local(f1_mac)}", dst="ff02::1") / ICMPv6ND_RA())  # router advert
        send(Ether(src="{f1_mac}", dst="{f2_mac}") / IP(src="{f1_ip}", dst="{f2_ip}") /
             ICMP(id=1003))                                       # honest
    """)
    with capture(fwlab, fwlab.containers["f2"], "icmp or arp") as cap:
        in_ns(fwlab.containers["f1"], PYTHON, "-c", script)
        out = cap.stop()
    assert "id 1003" in out, out
    assert "id 1001" not in out and "id 1002" not in out and "id 1004" not in out, out
    assert "10.81.1.1 is-at" not in out and "02:42:00:00:00:99" not in out, out
    after = fwlab.counters()
    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert delta == {"sdnctl:ctr/f1/spoof-mac": 2, "sdnctl:ctr/f1/spoof-ip": 1,
                     "sdnctl:ctr/f1/spoof-ip6": 1,
                     "sdnctl:ctr/f1/spoof-arp-ip": 1, "sdnctl:ctr/f1/spoof-arp-mac": 1,
                     "sdnctl:router-advert": 1}, delta
    neigh = in_ns(fwlab.containers["f2"], "ip", "neigh", "show", "10.81.1.1").stdout
    assert f1_mac not in neigh, neigh  # the gateway's entry was not poisoned
    assert fwlab.can_ping("f1", f2_ip)  # honest traffic, ARP included, still flows
    if os.path.isdir("/proc/sys/net/ipv6"):
        for net in NETWORKS:
            key = f"net.ipv6.conf.{bridge_name(net)}.accept_ra"
            assert run_in_netns(fwlab.host, lambda k=key: sysctl.read_sysctl(k)) == "0"


BRIDGE_NF4 = "net.bridge.bridge-nf-call-iptables"


def _set_bridge_nf4(host: str, value: str) -> None:
    """``net.bridge.bridge-nf-call-iptables`` in the lab host only (per namespace since Linux
    5.3: checked, so the root namespace's value never changes)."""
    if not os.path.exists(sysctl.sysctl_path(BRIDGE_NF4)):
        pytest.fail("no br_netfilter on this kernel: conntrack cannot see bridged frames")
    root = sysctl.read_sysctl(BRIDGE_NF4)
    run_in_netns(host, lambda: sysctl.ensure_sysctl(BRIDGE_NF4, value))
    if sysctl.read_sysctl(BRIDGE_NF4) != root:
        sysctl.ensure_sysctl(BRIDGE_NF4, root)
        pytest.fail(f"{BRIDGE_NF4} is not per namespace on this kernel: restored, not tested")


def _forget_conntrack() -> None:
    with Conntrack() as ct:
        ct.flush()


def test_counters_read_raw_match_the_listing(fwlab: FwLab) -> None:
    """The counters read between passes by a raw netlink dump of our tables' rules
    (``nftcounters``, where conntrack has the bridged flows) are the listing's: every dropping
    rule with its comment and counter, and so every drop count."""
    fw = Firewall(fwlab.host)
    fw.apply(fwlab.spec(guards=True))
    assert not fwlab.can_ping("f1", CONTAINERS["b1"][1])  # an isolation drop, counted
    _, listed, exists = fw._list()
    assert exists
    raw = run_in_netns(fwlab.host, firewall._counted_rules)

    def dropping(rules: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
        found = []
        for rule in rules:
            exprs = [e for e in rule.get("expr", []) if isinstance(e, dict)]
            counter = next((e["counter"] for e in exprs if isinstance(e.get("counter"), dict)),
                           {})
            if any("drop" in e for e in exprs):
                found.append((str(rule.get("comment", "")), int(counter.get("packets", 0)),
                              int(counter.get("bytes", 0))))
        return sorted(found)

    assert dropping(raw) == dropping(listed) and len(raw) > 10
    assert firewall.drop_counts(raw) == firewall.drop_counts(listed)
    assert firewall.network_drop_counts(raw)[("front", "isolation")] >= 1
    fw.bridged_tracked = True  # (as observe reads it where br_netfilter passes bridged IPv4)
    fw.read_counters()
    assert fw.network_drops() == firewall.network_drop_counts(listed)
    assert fw.drops() == firewall.drop_counts(listed)
    assert run_in_netns(fwlab.host, lambda: nftcounters.counted_rules("inet", "nosuch")) == []


def test_bridged_flows_come_from_conntrack_when_br_netfilter_passes_them(fwlab: FwLab) -> None:
    """Where br_netfilter hands bridged IPv4 to the IP hooks, conntrack sees a flow between two
    containers of one bridge, and the bridge table counts none of its own (two set updates
    per frame saved); where it does not, the bridge table's sets count it. ``observe`` reads
    which it is, and the agent's merged flows have the flow either way."""
    subnets = [f"{prefix}.0/24" for prefix in NETWORKS.values()]
    f1, f2 = CONTAINERS["f1"][1], CONTAINERS["f2"][1]
    for value, tracked in (("1", True), ("0", False)):
        _set_bridge_nf4(fwlab.host, value)
        fw = Firewall(fwlab.host)
        fw.observe()
        assert fw.bridged_tracked is tracked
        fw.apply(replace(fwlab.spec(), bridged_tracked=fw.bridged_tracked))
        run_in_netns(fwlab.host, _forget_conntrack)
        assert fwlab.can_ping("f1", f2)
        fw.read_counters()
        seen = {(s, d) for s, d, _, _, _ in run_in_netns(
            fwlab.host, lambda: conntrack.flow_samples(subnets))}
        bridged = {(s, d) for s, d, _, _, _ in fw.bridged_flows()}
        assert ((f1, f2) in seen) is tracked, seen
        assert bridged == (set() if tracked else {(f1, f2)}), bridged
        listed = _ruleset(fwlab.host)
        assert ("sdnctl:flows/count" in listed) is not tracked


# --- conntrack ------------------------------------------------------------------------------


def test_flush_address_deletes_exactly_its_entries(fwlab: FwLab) -> None:
    fw = Firewall(fwlab.host)
    fw.apply(fwlab.spec(ports=(WEB, DNS)))
    _start_server(fwlab)
    assert fwlab.client(fwlab.outside, "udp", UPLINK_H, 5353) == UPLINK_O
    assert fwlab.client(fwlab.outside, "tcp", UPLINK_H, 8080) == UPLINK_O
    assert fwlab.can_ping("f2", UPLINK_O)  # an unrelated, masqueraded flow
    f1 = CONTAINERS["f1"][1]
    entries = ct_entries(fwlab.host)
    mine = [e for e in entries if f1 in addresses(e)]
    others = [e for e in entries if f1 not in addresses(e)]
    assert len(mine) >= 2 and others, entries
    assert {e.tuple_orig.daddr for e in mine} == {UPLINK_H}  # DNAT'd: f1 is the reply source
    assert run_in_netns(fwlab.host, lambda: conntrack.flush_address(f1)) == len(mine)
    after = ct_entries(fwlab.host)
    assert not [e for e in after if f1 in addresses(e)], after
    assert {repr(e.tuple_orig) for e in others} <= {repr(e.tuple_orig) for e in after}
    assert run_in_netns(fwlab.host, lambda: conntrack.flush_address(f1)) == 0
    # Several addresses, both families, in one call (one dump per family): the masqueraded
    # flow of f2 goes, f1 has none left, the IPv6 address none at all; the rest stays.
    f2 = CONTAINERS["f2"][1]
    assert fwlab.can_ping("f2", UPLINK_O)
    before = ct_entries(fwlab.host)
    his = [e for e in before if f2 in addresses(e)]
    rest = [e for e in before if f2 not in addresses(e)]
    assert his, before
    assert run_in_netns(fwlab.host, lambda: conntrack.flush_addresses(
        [f1, f2, "fd00:81::2"])) == len(his)
    after = ct_entries(fwlab.host)
    assert not [e for e in after if f2 in addresses(e)], after
    assert {repr(e.tuple_orig) for e in rest} <= {repr(e.tuple_orig) for e in after}


def test_flow_samples_read_raw_agree_with_pyroute2(fwlab: FwLab) -> None:
    """The agent's own ctnetlink dump (``conntrack.flow_samples``) against pyroute2's decoding
    of the same entries: addresses, protocol and both directions' counters."""
    fw = Firewall(fwlab.host)
    fw.apply(fwlab.spec(allowed=(("front", "back"),), ports=(WEB, DNS)))
    run_in_netns(fwlab.host, lambda: sysctl.ensure_sysctl("net.netfilter.nf_conntrack_acct", "1"))
    _start_server(fwlab)
    # (published ports' flows start outside our subnets: samples go by the original tuple)
    assert fwlab.client(fwlab.outside, "udp", UPLINK_H, 5353) == UPLINK_O
    assert fwlab.client(fwlab.outside, "tcp", UPLINK_H, 8080) == UPLINK_O
    assert fwlab.can_ping("f2", UPLINK_O)  # masqueraded
    assert fwlab.can_ping("f1", CONTAINERS["b1"][1])  # routed between two networks
    subnets = [f"{prefix}.0/24" for prefix in NETWORKS.values()]

    def reference() -> list[tuple[str, str, str, int, int]]:
        found: dict[tuple[str, str, str], list[int]] = {}
        with Conntrack() as ct:
            for msg in ct.dump():
                ip = msg.get_attr("CTA_TUPLE_ORIG").get_attr("CTA_TUPLE_IP")
                src, dst = ip.get_attr("CTA_IP_V4_SRC"), ip.get_attr("CTA_IP_V4_DST")
                if ipaddress.IPv4Address(dst).is_multicast or not any(
                        a.startswith(tuple(p + "." for p in NETWORKS.values()))
                        for a in (src, dst)):
                    continue  # (as the agent: IGMP reports of the bridges are not traffic)
                number = msg.get_attr("CTA_TUPLE_ORIG").get_attr(
                    "CTA_TUPLE_PROTO").get_attr("CTA_PROTO_NUM")
                totals = found.setdefault(
                    (src, dst, conntrack.PROTOCOL_NAMES.get(number, str(number))), [0, 0])
                for direction in ("CTA_COUNTERS_ORIG", "CTA_COUNTERS_REPLY"):
                    counters = msg.get_attr(direction)
                    totals[0] += counters.get_attr("CTA_COUNTERS_PACKETS")
                    totals[1] += counters.get_attr("CTA_COUNTERS_BYTES")
        return [(s, d, p, n, b) for (s, d, p), (n, b) in sorted(found.items())]

    ours = run_in_netns(fwlab.host, lambda: conntrack.flow_samples(subnets))
    theirs = run_in_netns(fwlab.host, reference)
    assert {(s, d) for s, d, _, _, _ in ours} >= {(CONTAINERS["f2"][1], UPLINK_O),
                                                  (CONTAINERS["f1"][1], CONTAINERS["b1"][1])}
    assert all(n > 0 and b > 0 for _, _, _, n, b in ours), ours
    assert ours == theirs


def test_flow_sampler_follows_flows_without_dumping(fwlab: FwLab) -> None:
    """``conntrack.FlowSampler`` dumps (walks the kernel's whole table) once, then follows
    conntrack's events: a flow that starts is found at the next call and its counters read
    with a GET of it, the same figures a dump gives, growing while it lives; its end is seen;
    none of that dumps. With events off in the namespace, other subnets, or the reseed
    interval over, a call dumps."""
    fw = Firewall(fwlab.host)
    fw.apply(fwlab.spec(allowed=(("front", "back"),)))
    subnets = [f"{prefix}.0/24" for prefix in NETWORKS.values()]
    quiet = [ip for _, ip in CONTAINERS.values()]
    flow = (CONTAINERS["f1"][1], CONTAINERS["b1"][1], "icmp")

    def forget_flows() -> None:
        for ip in quiet:
            conntrack.flush_address(ip)

    run_in_netns(fwlab.host, forget_flows)
    acct = "net.netfilter.nf_conntrack_acct"  # counters, as the agent sets it in its host
    accounting = run_in_netns(fwlab.host, lambda: sysctl.read_sysctl(acct))
    run_in_netns(fwlab.host, lambda: sysctl.ensure_sysctl(acct, "1"))
    sampler = conntrack.FlowSampler()

    def sample(subnets: list[str] = subnets) -> dict[tuple[str, str, str], tuple[int, int]]:
        found = run_in_netns(fwlab.host, lambda: sampler.samples(subnets))
        return {s[:3]: s[3:] for s in found}

    try:
        assert sample() == {} and sampler.dumps == 1  # the first call dumps
        assert fwlab.can_ping("f1", CONTAINERS["b1"][1])  # a flow between two networks
        first = sample()
        assert flow in first and sampler.dumps == 1 and sampler.gets >= 1
        dumped = {s[:3]: s[3:] for s in run_in_netns(
            fwlab.host, lambda: conntrack.flow_samples(subnets))}
        assert dumped[flow] == first[flow] and first[flow][0] > 0  # a GET reads as a dump
        assert fwlab.can_ping("f1", CONTAINERS["b1"][1])  # the same flow, more packets
        again = sample()
        assert again[flow][0] > first[flow][0] and sampler.dumps == 1
        run_in_netns(fwlab.host, forget_flows)  # its end is an event
        assert flow not in sample() and sampler.dumps == 1
        assert sample(subnets[:1]) is not None and sampler.dumps == 2  # other subnets
        sampler.reseed = 0.0
        sample(subnets[:1])
        assert sampler.dumps == 3  # the reseed interval is over
        sampler.reseed = conntrack.RESEED
        events = run_in_netns(fwlab.host,
                              lambda: sysctl.read_sysctl("net.netfilter.nf_conntrack_events"))
        run_in_netns(fwlab.host,
                     lambda: sysctl.ensure_sysctl("net.netfilter.nf_conntrack_events", "0"))
        try:
            sample(subnets[:1])
            sample(subnets[:1])
            assert sampler.dumps == 5  # no events: every call dumps
        finally:
            run_in_netns(fwlab.host, lambda: sysctl.ensure_sysctl(
                "net.netfilter.nf_conntrack_events", events))
    finally:
        sampler.close()
        run_in_netns(fwlab.host, lambda: sysctl.ensure_sysctl(acct, accounting))


# --- idempotence and drift ------------------------------------------------------------------


def test_apply_is_idempotent_detects_drift_and_removes(fwlab: FwLab) -> None:
    fw = Firewall(fwlab.host)
    spec = fwlab.spec(allowed=(("front", "back"),), ports=(WEB, DNS, LOCAL), guards=True)
    assert fw.observe() is None
    assert fw.apply(spec) is True
    assert fw.observe() == fingerprint(spec)
    listed = in_ns(fwlab.host, "nft", "-a", "list", "ruleset").stdout
    assert fw.apply(replace(spec, allowed=(("back", "front"),))) is False  # same spec
    assert in_ns(fwlab.host, "nft", "-a", "list", "ruleset").stdout == listed
    assert "policy drop" not in listed
    localnet = f"net.ipv4.conf.{bridge_name('front')}.route_localnet"
    assert run_in_netns(fwlab.host, lambda: sysctl.read_sysctl(localnet)) == "1"

    # a rule deleted by hand is drift, and apply repairs it
    handle = re.search(r'comment "sdnctl:ctr/f1/spoof-ip" # handle (\d+)', listed)
    assert handle is not None
    in_ns(fwlab.host, "nft", "delete", "rule", "bridge", "sdnctl", "prerouting", "handle",
          handle.group(1))
    assert fw.observe() != fingerprint(spec)
    assert fw.apply(spec) is True and fw.observe() == fingerprint(spec)
    # so is a bridge sysctl (a recreated bridge loses route_localnet), repaired without nft
    run_in_netns(fwlab.host, lambda: sysctl.ensure_sysctl(localnet, "0"))
    assert fw.observe() != fingerprint(spec)
    listed = in_ns(fwlab.host, "nft", "-a", "list", "ruleset").stdout
    assert fw.apply(spec) is True and fw.observe() == fingerprint(spec)
    assert in_ns(fwlab.host, "nft", "-a", "list", "ruleset").stdout == listed

    # the port goes: route_localnet goes with it
    assert fw.apply(fwlab.spec()) is True
    assert run_in_netns(fwlab.host, lambda: sysctl.read_sysctl(localnet)) == "0"
    fw.remove()
    fw.remove()
    assert fw.observe() is None
    assert in_ns(fwlab.host, "nft", "list", "ruleset").stdout.strip() == ""


def _handle(path: str, comment: str) -> int:
    listed = in_ns(path, "nft", "-a", "list", "ruleset").stdout
    found = re.search(rf'comment "{re.escape(comment)}" # handle (\d+)', listed)
    assert found is not None, (comment, listed)
    return int(found.group(1))


def _listed_as_full_render(path: str, spec: FirewallSpec) -> str:
    """``nft -s list ruleset`` after a fresh full write of ``spec`` (the tables are replaced)."""
    fresh = Firewall(path)
    fresh.remove()
    assert fresh.apply(spec) is True
    return _ruleset(path)


def _ruleset(path: str) -> str:
    """``nft -s list ruleset`` without the flow sets' elements (traffic, not rules), and with
    the fingerprint's sha element at generation 0, as a full write makes it (a delta's is the
    next generation: ``nftrules.sha_generation``)."""
    text = in_ns(path, "nft", "-s", "list", "ruleset").stdout
    text = re.sub(r"(set (?:flows|opened) \{[^}]*?)\n\t*elements = \{[^}]*\}", r"\1", text)

    def generation_0(found: re.Match[str]) -> str:
        address = ipaddress.IPv6Address(found.group(2))
        return found.group(1) + str(ipaddress.IPv6Address(address.packed[:8] + bytes(8)))

    return re.sub(r"(set fingerprint \{[^}]*?elements = \{ )(\S+)(?= \})", generation_0, text)


def test_guards_move_incrementally_and_list_as_a_full_render(fwlab: FwLab) -> None:
    fw = Firewall(fwlab.host)
    every = fwlab.spec(ports=(WEB,), guards=True)
    no_f1 = replace(every, guards=tuple(g for g in every.guards if g.container != "f1"))
    assert fw.apply(no_f1) is True
    masquerade = _handle(fwlab.host, "sdnctl:net/front")

    # f1 comes: only its five rules are new, inserted where a full render puts them
    assert fw.apply(every) is True
    assert _handle(fwlab.host, "sdnctl:net/front") == masquerade  # not rewritten
    assert fw.observe() == fingerprint(every)
    listed = _ruleset(fwlab.host)
    assert listed == _listed_as_full_render(fwlab.host, every)

    # and the incrementally added guard drops what it must
    fw = Firewall(fwlab.host)
    assert fw.apply(no_f1) is True and fw.apply(every) is True
    f1_ip, f2_ip = CONTAINERS["f1"][1], CONTAINERS["f2"][1]
    assert fwlab.can_ping("f1", f2_ip)
    before = fwlab.counters()
    script = textwrap.dedent(f"""\
        from scapy.all import Ether, ICMP, IP, sendp
        sendp(Ether(src="{container_mac(f1_ip)}", dst="{container_mac(f2_ip)}") /
              IP(src="10.81.1.99", dst="{f2_ip}") / ICMP(id=1002), iface="eth0", verbose=False)
    """)
    in_ns(fwlab.containers["f1"], PYTHON, "-c", script)
    assert fwlab.counters()["sdnctl:ctr/f1/spoof-ip"] == before["sdnctl:ctr/f1/spoof-ip"] + 1

    # f1 goes again: its five rules only, and the tables list as a full render of the rest
    masquerade = _handle(fwlab.host, "sdnctl:net/front")
    assert fw.apply(no_f1) is True
    assert _handle(fwlab.host, "sdnctl:net/front") == masquerade
    assert fw.observe() == fingerprint(no_f1)
    listed = _ruleset(fwlab.host)
    assert listed == _listed_as_full_render(fwlab.host, no_f1)


def test_overlay_members_change_by_element_and_list_as_a_full_render(fwlab: FwLab) -> None:
    """A host joining or leaving an overlay adds or deletes elements of the VXLAN sets: no
    rule is rewritten, and the tables list as a full render of the new spec."""
    spec = replace(fwlab.spec(guards=True),
                   vxlan=(VxlanFilter(4789, 4096, ("192.0.2.2", "192.0.2.3")),))
    comments = ("sdnctl:net/front", "sdnctl:vxlan/4789/member", "sdnctl:vxlan/4789/not-member",
                "sdnctl:vxlan/4789/wrong-vni")
    joined = replace(spec, vxlan=(VxlanFilter(4789, 4096, ("192.0.2.2", "192.0.2.3",
                                                           "192.0.2.4")),))
    left = replace(spec, vxlan=(VxlanFilter(4789, 4096, ("192.0.2.3",)),))
    for before, after, there, gone in ((spec, joined, "192.0.2.4", ""),
                                       (joined, left, "192.0.2.3", "192.0.2.2")):
        fw = Firewall(fwlab.host)
        fw.remove()
        assert fw.apply(before) is True
        handles = [_handle(fwlab.host, c) for c in comments]
        assert fw.apply(after) is True
        assert [_handle(fwlab.host, c) for c in comments] == handles  # not rewritten
        assert fw.observe() == fingerprint(after)
        listed = _ruleset(fwlab.host)
        assert f"{there} . 4789 . 0x1000" in listed and f"{there} . 4789" in listed
        assert not gone or gone not in listed
        assert listed == _listed_as_full_render(fwlab.host, after)


def _fingerprints(path: str) -> list[str]:
    """The elements of our fingerprint set (one, unless a delta's cleanup is pending)."""
    listed = json.loads(in_ns(path, "nft", "-j", "list", "set", "inet", "sdnctl",
                              "fingerprint").stdout)["nftables"]
    return [str(e) for i in listed if "set" in i for e in i["set"].get("elem") or []]


def _sha_element(spec: FirewallSpec, generation: int = 0) -> str:
    """The fingerprint element ``render(spec)`` adds, of ``generation`` (a full write's is 0,
    a delta's the last one's plus one)."""
    first = re.findall(r"add element inet sdnctl fingerprint \{ (\S+) \}", render(spec))[0]
    return str(ipaddress.IPv6Address(ipaddress.IPv6Address(first).packed[:8] +
                                     generation.to_bytes(8, "big")))


def test_a_delta_that_only_adds_leaves_the_old_sha_to_a_cleanup(
        fwlab: FwLab, monkeypatch: pytest.MonkeyPatch) -> None:
    """A container that comes only adds rules; the old sha element's delete (which costs the
    kernel a grace period, and holds the commit mutex a device's removal waits for) is left
    pending: a listing runs it first, a delta that deletes anyway takes it into its one
    transaction, a timer runs it at the latest; and a cleanup that fails leaves the tables
    to be repaired by the next apply."""
    monkeypatch.setattr(firewall, "CLEANUP_DELAY", 3600.0)  # (the timer: at the end)
    fw = Firewall(fwlab.host)
    every = fwlab.spec(guards=True)
    no_f1 = replace(every, guards=tuple(g for g in every.guards if g.container != "f1"))
    assert fw.apply(no_f1) is True
    old_sha = _sha_element(no_f1)
    assert _fingerprints(fwlab.host) == [old_sha]
    real = nft.run
    writes: list[str] = []
    cleaned = threading.Event()  # a write that was a cleanup alone

    def recording(script: str, flags: int = 0) -> nft.Result:
        if not script.startswith("list"):
            writes.append(script)
        done = real(script, flags)
        if script.startswith("delete element inet sdnctl fingerprint") and \
                "insert" not in script:
            cleaned.set()
        return done

    monkeypatch.setattr(nft, "run", recording)
    assert fw.apply(every) is True
    assert len(writes) == 1 and "insert rule" in writes[0] and "delete" not in writes[0]
    assert len(_fingerprints(fwlab.host)) == 2  # the old one still there
    # An agent killed now leaves it there: its successor reads the latest element's sha, so
    # the tables are as it wants them (no full write in its first pass).
    assert Firewall(fwlab.host).observe() == fingerprint(every)
    assert fw.observe() == fingerprint(every)  # a listing runs the cleanup first
    assert writes[1:] == [f"delete element inet sdnctl fingerprint {{ {old_sha} }}\n"]

    # Pending when a container goes: one transaction deletes its guard and the old sha.
    del writes[:]
    assert fw.apply(no_f1) is True  # f1 goes (deletes)
    assert fw.apply(every) is True  # f1 comes back (adds only: its cleanup is pending)
    assert fw.apply(no_f1) is True  # f1 goes again: takes the pending delete along
    assert len(writes) == 3, writes
    pending = _sha_element(no_f1, 2)  # (the sha of no_f1 again, two deltas later)
    assert writes[2].startswith(f"delete element inet sdnctl fingerprint {{ {pending} }}\n")
    assert "insert rule" not in writes[2] and \
        writes[2].count("delete element inet sdnctl fingerprint") == 2
    assert _fingerprints(fwlab.host) == [_sha_element(no_f1, 4)]
    assert fw.observe() == fingerprint(no_f1) and len(writes) == 3  # nothing was pending

    # The cleanup fails (here: the table went by hand before it ran). The listing finds the
    # drift, and the next apply writes in full.
    assert fw.apply(every) is True
    in_ns(fwlab.host, "nft", "delete", "table", "inet", "sdnctl")
    assert fw.observe() != fingerprint(every)
    assert fw.apply(every) is True  # repaired
    assert fw.observe() == fingerprint(every)
    # (the inet table, made again, now lists after the bridge table)
    def tables(text: str) -> list[str]:
        return sorted(t.strip() for t in re.split(r"(?m)^table ", text) if t.strip())

    assert tables(_ruleset(fwlab.host)) == tables(_listed_as_full_render(fwlab.host, every))

    # Nothing else comes: the timer runs the cleanup.
    monkeypatch.setattr(firewall, "CLEANUP_DELAY", 0.2)
    assert fw.apply(no_f1) is True
    cleaned.clear()
    assert fw.apply(every) is True
    assert cleaned.wait(10)
    assert [sha_item(e) for e in _fingerprints(fwlab.host)] == [sha_item(_sha_element(every))]
    monkeypatch.setattr(nft, "run", real)
    assert fw.observe() == fingerprint(every)


def test_a_change_of_overlay_members_is_elements_alone_without_echo(
        fwlab: FwLab, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host joining an overlay: its elements and the new sha, no rule, so no --echo (which
    makes libnftables read every rule back); the tables then list as a full render's."""
    fw = Firewall(fwlab.host)
    base = fwlab.spec(guards=True)
    before = replace(base, vxlan=(VxlanFilter(4789, 4096, ("192.0.2.2",)),))
    after = replace(base, vxlan=(VxlanFilter(4789, 4096, ("192.0.2.2", "192.0.2.3")),))
    assert fw.apply(before) is True
    real = nft.run
    calls: list[tuple[str, int]] = []

    def recording(script: str, flags: int = 0) -> nft.Result:
        calls.append((script, flags))
        return real(script, flags)

    monkeypatch.setattr(nft, "run", recording)
    assert fw.apply(after) is True
    ((script, flags),) = calls
    assert flags == 0 and "rule" not in script, script
    assert "add element inet sdnctl vxlan4 { 192.0.2.3 . 4789 . 4096 }" in script
    monkeypatch.setattr(nft, "run", real)
    assert fw.observe() == fingerprint(after)
    assert _ruleset(fwlab.host) == _listed_as_full_render(fwlab.host, after)


def test_a_delta_refused_by_nft_gives_way_to_a_full_write(fwlab: FwLab) -> None:
    fw = Firewall(fwlab.host)
    every = fwlab.spec(guards=True)
    no_f1 = replace(every, guards=tuple(g for g in every.guards if g.container != "f1"))
    assert fw.apply(every) is True
    # behind its back: a guard rule the delta would delete by handle is gone already
    in_ns(fwlab.host, "nft", "delete", "rule", "bridge", "sdnctl", "prerouting", "handle",
          str(_handle(fwlab.host, "sdnctl:ctr/f1/spoof-ip")))
    assert fw.apply(no_f1) is True
    assert fw.observe() == fingerprint(no_f1)
    # and the table deleted by hand: the next delta fails, the full script recreates it
    in_ns(fwlab.host, "nft", "delete", "table", "bridge", "sdnctl")
    assert fw.apply(every) is True
    assert fw.observe() == fingerprint(every)


def test_nft_library_and_program_agree_and_stay_in_their_namespace(fwlab: FwLab) -> None:
    Firewall(fwlab.host).apply(fwlab.spec(guards=True))
    listed = [run_in_netns(fwlab.host, lambda f=f: f("list ruleset", nft.OUTPUT_JSON))
              for f in (nft.run, nft._run_program)]
    assert [r.returncode for r in listed] == [0, 0]
    library, program = (json.loads(r.stdout)["nftables"] for r in listed)
    assert library == program and any("rule" in item for item in library)
    bad = [run_in_netns(fwlab.host, lambda f=f: f("add rule inet sdnctl nosuchchain drop"))
           for f in (nft.run, nft._run_program)]
    assert [r.returncode for r in bad] == [1, 1]
    assert all("nosuchchain" in r.stderr for r in bad), bad
    assert "sdnctl" not in in_ns(fwlab.outside, "nft", "list", "tables").stdout


def test_container_mac_is_set_at_creation_and_repaired(fwlab: FwLab) -> None:
    path = fwlab.containers["f1"]
    in_ns(path, "ip", "link", "set", "eth0", "address", "02:00:00:00:00:01")
    ip = CONTAINERS["f1"][1]
    fwlab.links.ensure_veth(veth_name("f1", "eth0"), "sdnctl:ctr/f1/eth0", bridge_name("front"),
                            MTU, path, "eth0", f"{ip}/24", "10.81.1.1", mac=container_mac(ip))
    assert mac_of(path, "eth0") == container_mac(ip)


# --- a full write whose anonymous sets change shape -----------------------------------------

#: Applies the specs named on the command line with ``Firewall`` in the namespace given first,
#: in a process of its own (libnftables' abort must fail the test, not end pytest), and prints
#: what it learned: whether each apply wrote, whether ``observe`` agrees, and the handles.
SHAPES = textwrap.dedent("""\
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from agent.kernel.firewall import BridgeNet, Firewall, FirewallSpec, PortGuard, VxlanFilter
    from agent.kernel.firewall import fingerprint
    over = BridgeNet("po", "sdnbpo", "10.82.1.0/24", cidr="10.82.0.0/16", vxlan="sdnxpo")
    plain = BridgeNet("pb", "sdnbpb", "10.83.1.0/24")
    members = (VxlanFilter(4789, 4096, ("192.0.2.10", "192.0.2.12")),)
    guard = PortGuard("o1", "sdnvo1", "02:42:0a:52:01:02", "10.82.1.2")
    joiner = PortGuard("j1", "sdnvj1", "02:42:0a:53:01:02", "10.83.1.2")
    specs = {
        # the VXLAN rules' address sets are __set1 and __set2 of inet sdnctl
        "overlay": FirewallSpec(networks=(over,), guards=(guard,), vxlan=members),
        # a second network: its masquerade and isolation rules' interface-name sets take
        # those names in the same transaction that flushes the VXLAN rules
        "two": FirewallSpec(networks=(plain, over), guards=(guard,), vxlan=members),
        # one guard more: a delta, by the handles learned after the full write
        "joined": FirewallSpec(networks=(plain, over), guards=(joiner, guard), vxlan=members),
    }
    fw = Firewall(sys.argv[2])
    for name in sys.argv[3:]:
        wrote = fw.apply(specs[name])
        print(json.dumps({"spec": name, "wrote": wrote,
                          "observed": fw.observe(fresh=False) == fingerprint(specs[name]),
                          "handles": fw._handles}), flush=True)
""")


def _kernel_handles(path: str) -> dict[str, int]:
    """Rule comment -> handle as the kernel lists them (comments naming one rule only)."""
    listed = json.loads(in_ns(path, "nft", "-j", "list", "ruleset").stdout)["nftables"]
    rules = [item["rule"] for item in listed if "rule" in item]
    comments = [r.get("comment", "") for r in rules]
    return {r["comment"]: r["handle"] for r in rules if comments.count(r.get("comment", "")) == 1}


def test_a_full_write_reusing_anonymous_set_names_learns_the_right_handles(
        run_prefix: str) -> None:
    """A second network on a host that holds an overlay: the full write frees the VXLAN rules'
    address sets and gives their names to interface-name sets. With ``--echo`` libnftables
    1.0.6 aborted the agent there (``mpz_get_be32: Assertion `cnt <= 1'``, bench/policy.py's
    joiner); the firewall must write it and still know every rule's handle."""
    path = netns_path(f"{run_prefix}fw")
    create_netns(path)
    try:
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        done = subprocess.run([PYTHON, "-c", SHAPES, repo, path, "overlay", "two", "joined"],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        steps = [json.loads(line) for line in done.stdout.splitlines()]
        assert [(s["spec"], s["wrote"], s["observed"]) for s in steps] == [
            ("overlay", True, True), ("two", True, True), ("joined", True, True)]
        kernel = _kernel_handles(path)
        # the delta inserted j1's guard before o1's, by the handle the full write learned
        assert steps[2]["handles"] == kernel
        assert "sdnctl:ctr/j1/spoof-ip" in kernel and "sdnctl:net/pb/isolation" in kernel
        order = [r["rule"]["comment"] for r in json.loads(in_ns(
            path, "nft", "-j", "list", "chain", "bridge", "sdnctl", "prerouting").stdout)[
            "nftables"] if "rule" in r]
        assert order.index("sdnctl:ctr/j1/spoof-na") + 1 == \
            order.index("sdnctl:ctr/o1/spoof-mac")
        listed = in_ns(path, "nft", "list", "table", "inet", "sdnctl").stdout
        assert 'oifname != { "sdnbpb", "sdnbpo", "sdnxpo" }' in listed
        # the members: elements of a named set
        assert "192.0.2.10 . 4789, 192.0.2.12 . 4789 }" in " ".join(listed.split())
    finally:
        remove_netns(path)
