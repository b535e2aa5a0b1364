"""Overlays against a real kernel: VXLAN devices, peer entries, MTU and VXLAN filtering.

The lab (every name carries the test's ``run_prefix``): an underlay namespace W with a bridge
``ul``; three host namespaces h1..h3, each joined to ``ul`` by a veth (``u0``, 192.0.2.1-3/24,
MTU = the underlay MTU); on each host our bridge with the host's lease 10.70.<i>.0/24 of the
overlay 10.70.0.0/16, two containers (10.70.<i>.2 and .3) and the overlay's VXLAN device with
address 10.70.<i>.0/32. We act through ``Links`` and ``Firewall`` (the underlay itself is lab
scaffolding and made with ``ip``) and assert with raw ``ip``/``bridge``/``nft`` output, ping,
TCP/UDP transfers, tcpdump and scapy.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers.capture import Control, capture, is_control_packet
from helpers.monitor import quiet_monitors
from helpers.namespaces import wait_dad_done

from agent.kernel import sysctl
from agent.kernel.firewall import BridgeNet, Firewall, FirewallSpec, VxlanFilter
from agent.kernel.links import KernelError, Links, ObservedPeers, PeerEntries
from agent.kernel.netns import create_netns, netns_path, remove_netns, run_in_netns
from agent.names import (
    bridge_alias,
    bridge_name,
    container_mac,
    veth_alias,
    veth_name,
    vtep_mac_for,
    vxlan_alias,
    vxlan_name,
)

pytestmark = pytest.mark.netns

PYTHON = sys.executable  # the venv's: it has scapy
NETWORK = "ov"
CIDR = "10.70.0.0/16"
VNI = 100
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
HOSTS = ("h1", "h2", "h3")

UDP_SERVER = textwrap.dedent("""\
    import socket
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 9999))
    print("ready", flush=True)
    data, peer = u.recvfrom(65535)
    print(len(data), peer[0], flush=True)
""")
TCP_SERVER = textwrap.dedent("""\
    import hashlib, socket
    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("0.0.0.0", 9998)); t.listen(1)
    print("ready", flush=True)
    c, _ = t.accept(); h = hashlib.sha256(); n = 0
    while chunk := c.recv(1 << 16):
        h.update(chunk); n += len(chunk)
    print(n, h.hexdigest(), flush=True)
""")
TCP_CLIENT = textwrap.dedent("""\
    import hashlib, random, socket, sys
    data = random.Random(7).randbytes(int(sys.argv[2]))
    s = socket.create_connection((sys.argv[1], 9998), timeout=20)
    s.sendall(data); s.close()
    print(len(data), hashlib.sha256(data).hexdigest())
""")


def run(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


def in_ns(path: str, *argv: str, check: bool = True,
          timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return run("nsenter", f"--net={path}", *argv, check=check, timeout=timeout)


def mac_of(path: str, ifname: str) -> str:
    return str(json.loads(in_ns(path, "ip", "-j", "link", "show", ifname).stdout)[0]["address"])


@dataclass
class Host:
    name: str
    path: str
    number: int
    underlay_ip: str
    mac: str  # its VTEP MAC
    links: Links

    @property
    def subnet(self) -> str:
        return f"10.70.{self.number}.0/24"

    @property
    def vtep_ip(self) -> str:
        return f"10.70.{self.number}.0"

    @property
    def gateway(self) -> str:
        return f"10.70.{self.number}.1"


@dataclass
class OverlayLab:
    prefix: str
    wire: str
    port: int
    underlay_mtu: int
    hosts: dict[str, Host] = field(default_factory=dict)
    containers: dict[str, tuple[Host, str, str]] = field(default_factory=dict)  # path, ip
    made: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def mtu(self) -> int:
        return self.underlay_mtu - VXLAN_OVERHEAD

    vx = vxlan_name(NETWORK)
    bridge = bridge_name(NETWORK)

    def namespace(self, suffix: str) -> str:
        path = netns_path(f"{self.prefix}{suffix}")
        create_netns(path)
        self.made.append(path)
        return path

    def plug(self, path: str, port: str, ifname: str, cidr: str) -> None:
        """A veth from the underlay bridge into ``path`` (lab scaffolding, through ``ip``)."""
        w, n, mtu = os.path.basename(self.wire), os.path.basename(path), str(self.underlay_mtu)
        run("ip", "-n", w, "link", "add", port, "mtu", mtu, "type", "veth", "peer", "name",
            ifname, "mtu", mtu, "netns", n)
        run("ip", "-n", w, "link", "set", port, "master", "ul", "up")
        run("ip", "-n", n, "addr", "add", cidr, "dev", ifname)
        run("ip", "-n", n, "link", "set", ifname, "up")

    def ensure_host(self, h: Host) -> int:
        """Everything of ours on one host but its peers; returns the VXLAN device's index."""
        h.links.ensure_bridge(self.bridge, bridge_alias(NETWORK), f"{h.gateway}/24", self.mtu)
        for name, (owner, path, ip) in self.containers.items():
            if owner is h:
                h.links.ensure_veth(veth_name(name, "eth0"), veth_alias(name, "eth0"),
                                    self.bridge, self.mtu, path, "eth0", f"{ip}/24", h.gateway,
                                    mac=container_mac(ip))
        return h.links.ensure_vxlan(self.vx, vxlan_alias(NETWORK), VNI, h.underlay_ip,
                                    self.port, "u0", self.mtu, h.mac, f"{h.vtep_ip}/32")

    def ensure_peers(self, h: Host) -> bool:
        wrote = False
        for o in self.hosts.values():
            if o is not h:
                wrote |= h.links.ensure_peer(self.vx, o.subnet, o.vtep_ip, o.mac, o.underlay_ip)
        return wrote

    def ensure_all(self) -> None:
        for h in self.hosts.values():
            self.ensure_host(h)
        for h in self.hosts.values():
            self.ensure_peers(h)

    def expected_peers(self, h: Host) -> ObservedPeers:
        others = [o for o in self.hosts.values() if o is not h]
        return ObservedPeers(
            routes=tuple(sorted((o.subnet, o.vtep_ip) for o in others)),
            neighbours=tuple(sorted((o.vtep_ip, o.mac) for o in others)),
            fdb=tuple(sorted((o.mac, o.underlay_ip) for o in others)),
        )

    def ping(self, src: str, dst_ip: str, *args: str) -> subprocess.CompletedProcess[str]:
        return in_ns(self.containers[src][1], "ping", "-c1", "-W2", "-n", *args, dst_ip,
                     check=False)

    def start(self, path: str, *argv: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["nsenter", f"--net={path}", *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


@contextmanager
def overlay_lab(prefix: str, underlay_mtu: int = 1500, port: int = 4789) -> Iterator[OverlayLab]:
    lab = OverlayLab(prefix, "", port, underlay_mtu)
    try:
        lab.wire = lab.namespace("w")
        w = os.path.basename(lab.wire)
        run("ip", "-n", w, "link", "add", "ul", "mtu", str(underlay_mtu), "type", "bridge")
        run("ip", "-n", w, "link", "set", "ul", "up")
        for number, name in enumerate(HOSTS, start=1):
            path = lab.namespace(name)
            underlay_ip = f"192.0.2.{number}"
            lab.plug(path, f"p{number}", "u0", f"{underlay_ip}/24")
            run_in_netns(path, sysctl.ensure_ip_forward)
            host = Host(name, path, number, underlay_ip, vtep_mac_for(f"{prefix}{name}"),
                        Links(path))
            lab.hosts[name] = host
            for c, last in (("a", 2), ("b", 3)):
                lab.containers[f"c{number}{c}"] = (host, lab.namespace(f"c{number}{c}"),
                                                   f"10.70.{number}.{last}")
        lab.ensure_all()
        yield lab
    finally:
        for proc in lab.procs:
            _stop(proc)
        for h in lab.hosts.values():
            h.links.close()
        for path in reversed(lab.made):
            remove_netns(path)


@pytest.fixture
def olab(run_prefix: str) -> Iterator[OverlayLab]:
    with overlay_lab(run_prefix) as lab:
        yield lab


# --- reachability and the wire --------------------------------------------------------------


def test_every_container_reaches_every_other_across_hosts(olab: OverlayLab) -> None:
    for src, (src_host, _, _) in olab.containers.items():
        for dst, (dst_host, _, dst_ip) in olab.containers.items():
            if src == dst:
                continue
            done = olab.ping(src, dst_ip)
            assert done.returncode == 0, (src, dst, done.stdout)
            # Same host: one bridge, no router, the echo reply keeps TTL 64. Across hosts the
            # reply is routed twice, by the remote host (bridge -> VXLAN device) and by ours
            # (VXLAN device -> bridge): 64 - 2 = 62. The underlay does not count: the outer
            # header carries its own TTL and the bridge W does not route.
            ttl = 64 if src_host is dst_host else 62
            assert f"ttl={ttl} " in done.stdout, (src, dst, done.stdout)


@pytest.mark.parametrize("port", [4789, 8472])
def test_underlay_carries_vxlan_with_port_vni_and_inner_addresses(
    run_prefix: str, tmp_path: Path, port: int,
) -> None:
    from scapy.layers.inet import ICMP, IP, UDP
    from scapy.layers.vxlan import VXLAN
    from scapy.utils import rdpcap

    pcap = tmp_path / "ul.pcap"
    with overlay_lab(run_prefix, port=port) as lab:
        # On h1's port of the underlay bridge (the bridge device itself sees only frames
        # for W): both pings involve h1.
        with capture(lab.wire, "p1", "udp", "-U", "-w", str(pcap), "--print",
                     control=Control("udp")) as cap:
            assert lab.ping("c1a", "10.70.2.3").returncode == 0
            assert lab.ping("c3b", "10.70.1.2").returncode == 0
            cap.stop()
        seen = set()
        for packet in rdpcap(str(pcap)):
            if is_control_packet(bytes(packet)):
                continue
            outer, udp = packet[IP], packet[UDP]
            vxlan = VXLAN(bytes(udp.payload))
            inner = vxlan[IP]
            if ICMP in inner:
                seen.add((outer.src, outer.dst, udp.dport, vxlan.vni, inner.src, inner.dst,
                          inner[ICMP].type))
    assert {
        ("192.0.2.1", "192.0.2.2", port, VNI, "10.70.1.2", "10.70.2.3", 8),  # echo request
        ("192.0.2.2", "192.0.2.1", port, VNI, "10.70.2.3", "10.70.1.2", 0),  # echo reply
        ("192.0.2.3", "192.0.2.1", port, VNI, "10.70.3.3", "10.70.1.2", 8),
        ("192.0.2.1", "192.0.2.3", port, VNI, "10.70.1.2", "10.70.3.3", 0),
    } == seen


def test_observed_state_and_second_ensure_changes_nothing(olab: OverlayLab) -> None:
    for h in olab.hosts.values():
        seen = h.links.observe_vxlan(olab.vx)
        assert seen is not None
        assert (seen.kind, seen.alias, seen.vni, seen.port, seen.local, seen.underlay,
                seen.learning, seen.mac, seen.mtu, seen.addresses, seen.up) == (
            "vxlan", vxlan_alias(NETWORK), VNI, 4789, h.underlay_ip, "u0", False, h.mac,
            olab.mtu, (f"{h.vtep_ip}/32",), True)
        assert h.links.observe_all_peers() == {olab.vx: olab.expected_peers(h)}
        assert h.links.observe_peers(olab.vx) == olab.expected_peers(h)
    # A VXLAN device that is not ours (no alias of ours, another name) is never observed.
    h = next(iter(olab.hosts.values()))
    name = os.path.basename(h.path)
    run("ip", "-n", name, "link", "add", "theirvx", "type", "vxlan", "id", "77", "dstport",
        "4790", "local", h.underlay_ip, "nolearning")
    try:
        assert h.links.observe_all_peers() == {olab.vx: olab.expected_peers(h)}
    finally:
        run("ip", "-n", name, "link", "del", "theirvx", check=False)
    for h in olab.hosts.values():
        raw = run("ip", "-n", os.path.basename(h.path), "-d", "link", "show", olab.vx).stdout
        vx_line = next(line for line in raw.splitlines() if line.strip().startswith("vxlan id"))
        assert " nolearning " in vx_line and " remote " not in vx_line, vx_line
        assert " group " not in vx_line, vx_line
        # what flannel would have: onlink route with our protocol, permanent neighbour, FDB
        n = os.path.basename(h.path)
        routes = run("ip", "-n", n, "route", "show", "dev", olab.vx).stdout
        assert all("onlink" in r and "proto 211" in r for r in routes.splitlines()), routes
        neigh = run("ip", "-n", n, "neigh", "show", "dev", olab.vx).stdout
        assert all("PERMANENT" in r and "proto 211" in r for r in neigh.splitlines()), neigh
    assert olab.hosts["h1"].links.observe_vxlan("nosuchdev") is None

    indexes = {n: h.links.observe_vxlan(olab.vx).index  # type: ignore[union-attr]
               for n, h in olab.hosts.items()}
    wait_dad_done([h.path for h in olab.hosts.values()])
    watched = [(h.path, argv) for h in olab.hosts.values()
               for argv in (["ip", "monitor", "link", "address", "route", "neigh"],
                            ["bridge", "monitor", "fdb"])]
    with quiet_monitors(watched) as monitors:
        for h in olab.hosts.values():
            assert olab.ensure_host(h) == indexes[h.name]
            assert olab.ensure_peers(h) is False
    events = monitors.events()
    assert events == [[]] * len(watched), events


# --- MTU ------------------------------------------------------------------------------------


@pytest.mark.parametrize("underlay_mtu", [1400, 1500, 9000])
def test_mtu_full_size_fragmentation_and_bulk_transfer(run_prefix: str, underlay_mtu: int) -> None:
    with overlay_lab(run_prefix, underlay_mtu=underlay_mtu) as lab:
        mtu = lab.mtu
        h = lab.hosts["h1"]
        assert h.links.observe_vxlan(lab.vx).mtu == mtu  # type: ignore[union-attr]
        # The largest unfragmented packet crosses: inner mtu + 50 = the underlay MTU exactly.
        done = lab.ping("c1a", "10.70.2.2", "-M", "do", "-s", str(mtu - 28))
        assert done.returncode == 0, done.stdout + done.stderr
        # One byte more fails in the container itself, before any packet leaves.
        done = lab.ping("c1a", "10.70.2.2", "-M", "do", "-s", str(mtu - 27))
        assert done.returncode != 0
        assert "message too long" in (done.stdout + done.stderr).lower(), done

        server = lab.start(lab.containers["c2a"][1], PYTHON, "-c", UDP_SERVER)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        in_ns(lab.containers["c1a"][1], PYTHON, "-c",
              "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
              ".sendto(b'x' * 2000, ('10.70.2.2', 9999))")
        out, _ = server.communicate(timeout=5)
        assert out.split() == ["2000", "10.70.1.2"], out  # real source, reassembled

        size = 50 << 20
        server = lab.start(lab.containers["c3b"][1], PYTHON, "-c", TCP_SERVER)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        sent = in_ns(lab.containers["c1b"][1], PYTHON, "-c", TCP_CLIENT, "10.70.3.3", str(size),
                     timeout=60).stdout.split()
        received, _ = server.communicate(timeout=60)
        assert sent[0] == str(size) and received.split() == sent, (sent, received)


# --- peer changes ---------------------------------------------------------------------------


def test_host_moves_to_a_new_underlay_address_and_vtep_mac(olab: OverlayLab) -> None:
    h3 = olab.hosts["h3"]
    old_ip, old_mac = h3.underlay_ip, h3.mac
    index = h3.links.observe_vxlan(olab.vx).index  # type: ignore[union-attr]
    n3 = os.path.basename(h3.path)
    # Delete first: deleting a primary address takes its secondaries with it.
    run("ip", "-n", n3, "addr", "del", f"{old_ip}/24", "dev", "u0")
    run("ip", "-n", n3, "addr", "add", "192.0.2.33/24", "dev", "u0")
    h3.underlay_ip, h3.mac = "192.0.2.33", "0e:aa:bb:cc:dd:ee"
    # Local address and MAC change in place: same device; routes and FDB stay, but the kernel
    # flushes the device's neighbours, permanent ones included, when its MAC changes.
    assert olab.ensure_host(h3) == index
    seen = h3.links.observe_vxlan(olab.vx)
    assert seen is not None and (seen.local, seen.mac) == (h3.underlay_ip, h3.mac)
    assert h3.links.observe_peers(olab.vx).neighbours == ()
    assert olab.ensure_peers(h3) is True
    assert h3.links.observe_peers(olab.vx) == olab.expected_peers(h3)

    for h in (olab.hosts["h1"], olab.hosts["h2"]):
        assert olab.ensure_peers(h) is True
        assert h.links.remove_peers(olab.vx, [], [], [(old_mac, old_ip)]) == 1
        assert h.links.remove_peers(olab.vx, [], [], [(old_mac, old_ip)]) == 0
        assert h.links.observe_peers(olab.vx) == olab.expected_peers(h)
        n = os.path.basename(h.path)
        raw = run("bridge", "-n", n, "fdb", "show", "dev", olab.vx).stdout + \
            run("ip", "-n", n, "neigh", "show", "dev", olab.vx).stdout + \
            run("ip", "-n", n, "route", "show", "dev", olab.vx).stdout
        assert old_mac not in raw and not re.search(rf"{re.escape(old_ip)}\b", raw), raw
    for src, dst in (("c1a", "10.70.3.2"), ("c3b", "10.70.2.2"), ("c2b", "10.70.3.3")):
        done = olab.ping(src, dst)
        assert done.returncode == 0 and "ttl=62 " in done.stdout, (src, dst, done.stdout)


def test_a_leaving_host_is_removed_and_removal_is_idempotent(olab: OverlayLab) -> None:
    h1, h2 = olab.hosts["h1"], olab.hosts["h2"]
    gone = ([h2.subnet], [h2.vtep_ip], [(h2.mac, h2.underlay_ip)])
    assert h1.links.remove_peers(olab.vx, *gone) == 3  # one batch
    assert h1.links.remove_peers(olab.vx, *gone) == 0  # gone already: success, nothing done
    assert h1.links.remove_peers("nosuchdev", *gone) == 0
    h3 = olab.hosts["h3"]
    assert h1.links.observe_peers(olab.vx) == ObservedPeers(
        routes=((h3.subnet, h3.vtep_ip),), neighbours=((h3.vtep_ip, h3.mac),),
        fdb=((h3.mac, h3.underlay_ip),))
    assert olab.ping("c1a", "10.70.2.2").returncode != 0
    assert olab.ping("c1a", "10.70.3.2").returncode == 0
    assert olab.ensure_peers(h1) is True
    assert olab.ping("c1a", "10.70.2.2").returncode == 0


def test_batched_peers_repair_to_the_same_entries_and_write_only_what_is_missing(
        olab: OverlayLab) -> None:
    h1, h2, h3 = (olab.hosts[n] for n in ("h1", "h2", "h3"))
    n1 = os.path.basename(h1.path)

    def raw() -> str:  # the entries as the kernel shows them, attributes and all
        return run("bridge", "-n", n1, "fdb", "show", "dev", olab.vx).stdout + \
            run("ip", "-n", n1, "-d", "neigh", "show", "dev", olab.vx).stdout + \
            run("ip", "-n", n1, "-d", "route", "show", "dev", olab.vx).stdout

    before = raw()
    entries = [PeerEntries(o.subnet, o.vtep_ip, o.mac, o.underlay_ip) for o in (h2, h3)]
    assert h1.links.ensure_peers(olab.vx, entries) == 0
    # drift: h2's route and neighbour and h3's FDB entry go
    run("ip", "-n", n1, "route", "del", h2.subnet, "dev", olab.vx)
    run("ip", "-n", n1, "neigh", "del", h2.vtep_ip, "dev", olab.vx)
    run("bridge", "-n", n1, "fdb", "del", h3.mac, "dev", olab.vx, "dst", h3.underlay_ip, "self")
    assert olab.ping("c1a", "10.70.2.2").returncode != 0
    have = h1.links.observe_peers(olab.vx)
    assert h1.links.ensure_peers(olab.vx, entries, have=have) == 3
    assert h1.links.observe_peers(olab.vx) == olab.expected_peers(h1)
    assert sorted(raw().splitlines()) == sorted(before.splitlines())
    assert h1.links.ensure_peers(olab.vx, entries, have=h1.links.observe_peers(olab.vx)) == 0
    for dst in ("10.70.2.2", "10.70.3.3"):
        done = olab.ping("c1a", dst)
        assert done.returncode == 0 and "ttl=62 " in done.stdout, (dst, done.stdout)
    with pytest.raises(KernelError, match="does not exist"):
        h1.links.ensure_peers("nosuchdev", entries)
    # more acks than one datagram's worth fit our receive buffer (ENOBUFS once, at 300)
    many = [PeerEntries(f"10.71.{i}.0/24", f"10.71.{i}.0", f"02:00:00:00:01:{i:02x}",
                        f"198.51.100.{i + 1}") for i in range(150)]
    assert h1.links.ensure_peers(olab.vx, many, have=h1.links.observe_peers(olab.vx)) == 450
    got = h1.links.observe_peers(olab.vx)
    assert (len(got.routes), len(got.neighbours), len(got.fdb)) == (152, 152, 152)
    assert h1.links.ensure_peers(olab.vx, many) == 0


def test_vni_change_recreates_the_device(olab: OverlayLab) -> None:
    h1 = olab.hosts["h1"]
    before = h1.links.observe_vxlan(olab.vx)
    assert before is not None
    after = h1.links.ensure_vxlan(olab.vx, vxlan_alias(NETWORK), VNI + 1, h1.underlay_ip,
                                  olab.port, "u0", olab.mtu, h1.mac, f"{h1.vtep_ip}/32")
    seen = h1.links.observe_vxlan(olab.vx)
    assert seen is not None and after != before.index and seen.vni == VNI + 1
    assert h1.links.observe_peers(olab.vx) == ObservedPeers()  # they went with the device


# --- VXLAN filtering ------------------------------------------------------------------------


# flags=0x08 (I) only: scapy's default 0x0c also sets the GPE next-protocol bit, which a plain
# VXLAN device rejects as an error whatever the firewall does.
FORGE = textwrap.dedent("""\
    import sys
    from scapy.all import ICMP, IP, UDP, VXLAN, Ether, sendp
    iface, src, dst, mac, port, vni, inner_mac, icmp_id = sys.argv[1:]
    sendp(Ether(dst=mac) / IP(src=src, dst=dst) / UDP(sport=43210, dport=int(port)) /
          VXLAN(flags=0x08, vni=int(vni)) / Ether(src="0e:00:00:00:00:99", dst=inner_mac) /
          IP(src="10.70.1.2", dst="10.70.2.2") / ICMP(id=int(icmp_id)),
          iface=iface, verbose=False)
""")


def _counters(path: str) -> dict[str, int]:
    out = in_ns(path, "nft", "-j", "list", "table", "inet", "sdnctl").stdout
    found: dict[str, int] = {}
    for item in json.loads(out)["nftables"]:
        rule = item.get("rule")
        if rule is not None:
            packets = sum(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
            found[rule["comment"]] = found.get(rule["comment"], 0) + packets
    return found


def test_forged_and_wrong_vni_vxlan_is_dropped_and_counted(olab: OverlayLab) -> None:
    h1, h2, h3 = (olab.hosts[n] for n in HOSTS)
    attacker = olab.namespace("x")
    olab.plug(attacker, "px", "x0", "192.0.2.99/24")
    # A second overlay on h2 on the same port (VNI 200): h3 is its only other member, h1 is not.
    other = vxlan_name("other")
    h2.links.ensure_vxlan(other, vxlan_alias("other"), 200, h2.underlay_ip, 4789, "u0",
                          olab.mtu, vtep_mac_for("other-h2"), "10.71.2.0/32")
    h2_ul, h2_vx, h2_other = mac_of(h2.path, "u0"), h2.mac, vtep_mac_for("other-h2")

    def forge(path: str, iface: str, src: str, vni: int, inner_mac: str, icmp_id: int) -> None:
        in_ns(path, PYTHON, "-c", FORGE, iface, src, h2.underlay_ip, h2_ul, "4789", str(vni),
              inner_mac, str(icmp_id))

    def delivered(send: Callable[[], None], icmp_id: int) -> bool:
        # The capture's control shows it is ready; the counters checked below show that a
        # packet not delivered was dropped (not merely still on its way).
        with capture(olab.containers["c2a"][1], "eth0", f"icmp and icmp[4:2] == {icmp_id}",
                     control=Control(ident=icmp_id)) as cap:
            send()
            return f"10.70.1.2 > 10.70.2.2: ICMP echo request, id {icmp_id}" in cap.stop()

    forged = (lambda: forge(attacker, "x0", "192.0.2.99", VNI, h2_vx, 4001), 4001)
    wrong_vni = (lambda: forge(h1.path, "u0", h1.underlay_ip, 200, h2_other, 4002), 4002)
    net = BridgeNet(NETWORK, olab.bridge, h2.subnet, cidr=CIDR, vxlan=olab.vx)
    fw = Firewall(h2.path)
    # Without the filter both are delivered: the test can see what the filter stops.
    fw.apply(FirewallSpec(networks=(net,)))
    assert delivered(*forged)
    assert delivered(*wrong_vni)

    fw.apply(FirewallSpec(networks=(net,), vxlan=(
        VxlanFilter(4789, VNI, (h1.underlay_ip, h3.underlay_ip)),
        VxlanFilter(4789, 200, (h3.underlay_ip,)),
    )))
    before = _counters(h2.path)
    assert not delivered(*forged)
    assert not delivered(*wrong_vni)
    after = _counters(h2.path)
    assert after["sdnctl:vxlan/4789/not-member"] == before["sdnctl:vxlan/4789/not-member"] + 1
    assert after["sdnctl:vxlan/4789/wrong-vni"] == before["sdnctl:vxlan/4789/wrong-vni"] + 1
    # Members on their VNI pass, both ways, with their real source (no NAT inside the overlay).
    with capture(olab.containers["c2a"][1], "eth0", "icmp[icmptype] == icmp-echo") as cap:
        assert olab.ping("c1a", "10.70.2.2").returncode == 0
        cap.wait_for("10.70.1.2 > 10.70.2.2: ICMP echo request")
    assert olab.ping("c2b", "10.70.3.2").returncode == 0
    assert olab.ping("c3a", "10.70.2.3").returncode == 0
    fw.remove()


def test_overlay_forwarding_is_not_masqueraded_and_internal_overlays_work(
    olab: OverlayLab,
) -> None:
    """Masquerade excludes the whole overlay CIDR, and an internal overlay still crosses
    hosts (bridge <-> its own VXLAN device is always accepted)."""
    fws = []
    for internal in (False, True):
        for h in olab.hosts.values():
            fw = Firewall(h.path)
            fw.apply(FirewallSpec(networks=(BridgeNet(
                NETWORK, olab.bridge, h.subnet, internal=internal, cidr=CIDR, vxlan=olab.vx),)))
            fws.append(fw)
        with capture(olab.containers["c3a"][1], "eth0", "icmp[icmptype] == icmp-echo") as cap:
            assert olab.ping("c1a", "10.70.3.2").returncode == 0
            cap.wait_for("10.70.1.2 > 10.70.3.2: ICMP echo request")
    for fw in fws:
        fw.remove()


def test_vtep_mac_is_stable_unicast_and_local() -> None:
    mac = vtep_mac_for("host-1")
    assert mac == vtep_mac_for("host-1") != vtep_mac_for("host-2")
    first = int(mac[:2], 16)
    assert mac.startswith("0e:") and first & 1 == 0 and first & 2 == 2
    assert len(vxlan_name("x" * 300).encode()) <= 15 and vxlan_name("a").startswith("sdnx")
    assert hashlib.sha1(b"a").hexdigest()[:8] == vxlan_name("a")[4:]
