"""Issue 8 item 5: iperf3 throughput over paths built by sdnctl vs the same paths built by hand.

Design note. A lab of our own: a wire namespace with bridge ``ul`` and two host namespaces
(192.0.2.1, 192.0.2.2 on ``u``), all with a unique prefix. Two comparisons, each side in the
same run, alternating, a short iperf3 TCP run per sample:

- bridge: two containers on one bridge in host 1. sdnctl: ``Links.ensure_bridge`` +
  ``create_netns`` + ``Links.ensure_veth`` (what the agent does). By hand: ``ip`` (bridge, veth
  with its peer born in the container namespace, address, route).
- vxlan: one container on each host, across flannel-style L3 VXLAN (LAB-NOTES recipe). sdnctl:
  ``Links.ensure_vxlan`` + ``Links.ensure_peer`` on each host; by hand: the ``ip`` commands of
  LAB-NOTES. Container MTU = VXLAN MTU = underlay - 50 on both sides.

The two sides use different subnets and VNIs in the same namespaces, so only the builder differs.
iperf3 servers are started by PID and stopped by PID; everything goes, even on failure.
"""

from __future__ import annotations

import glob
import json
import signal
import subprocess
import sys
import time

from harness import (
    Measurement,
    alternate,
    bench_args,
    comparison,
    paired_ratio,
    unique_prefix,
    write_result,
)

from agent.kernel.links import Links
from agent.kernel.netns import create_netns, netns_path, remove_netns
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

UNDERLAY_MTU = 1500
VX_MTU = UNDERLAY_MTU - 50
PORT = 4789


def ip(*argv: str, batch: str | None = None) -> None:
    cmd = ["ip", *argv] + (["-batch", "-"] if batch is not None else [])
    proc = subprocess.run(cmd, input=batch, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"could not run {' '.join(cmd)}: {proc.stderr.strip()}")


def in_ns(name: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net={netns_path(name)}", *argv]


class Dataplane:
    def __init__(self, prefix: str) -> None:
        self.p = prefix
        self.servers: list[subprocess.Popen[bytes]] = []
        self.links: dict[str, Links] = {}

    def ns(self, suffix: str) -> str:
        return f"{self.p}{suffix}"

    # --- the underlay (shared by both sides) ------------------------------------------------

    def build_underlay(self) -> None:
        w = self.ns("w")
        ip("netns", "add", w)
        ip("-n", w, batch=f"link add ul mtu {UNDERLAY_MTU} type bridge\nlink set ul up\n")
        for h in (1, 2):
            host = self.ns(f"h{h}")
            ip("netns", "add", host)
            ip("-n", host, batch=(
                f"link set lo up\n"
                f"link add u mtu {UNDERLAY_MTU} type veth peer name p{h} netns {w}\n"
                f"addr add 192.0.2.{h}/24 dev u\nlink set u up\n"))
            ip("-n", w, "link", "set", f"p{h}", "master", "ul", "up")
            subprocess.run(in_ns(host, "sysctl", "-qw", "net.ipv4.ip_forward=1"), check=True)
            self.links[host] = Links(netns_path(host))

    # --- sdnctl's kernel path ---------------------------------------------------------------

    def sdnctl_container(self, host: str, name: str, network: str, cidr: str, gw: str,
                         mtu: int) -> None:
        path = netns_path(name)
        create_netns(path)
        self.links[host].ensure_veth(veth_name(name, "eth0"), veth_alias(name, "eth0"),
                                     bridge_name(network), mtu, path, "eth0", cidr, gw,
                                     mac=container_mac(cidr.split("/")[0]))

    def build_sdnctl(self) -> None:
        h1, h2 = self.ns("h1"), self.ns("h2")
        net = f"{self.p}-br"
        self.links[h1].ensure_bridge(bridge_name(net), bridge_alias(net), "10.81.0.1/24",
                                     UNDERLAY_MTU)
        for i in (1, 2):
            self.sdnctl_container(h1, self.ns(f"s{i}"), net, f"10.81.0.{i + 1}/24", "10.81.0.1",
                                  UNDERLAY_MTU)
        ov = f"{self.p}-ov"
        for h, host in ((1, h1), (2, h2)):
            links = self.links[host]
            links.ensure_bridge(bridge_name(ov), bridge_alias(ov), f"10.91.{h}.1/24", VX_MTU)
            self.sdnctl_container(host, self.ns(f"x{h}"), ov, f"10.91.{h}.2/24", f"10.91.{h}.1",
                                  VX_MTU)
            links.ensure_vxlan(vxlan_name(ov), vxlan_alias(ov), 91, f"192.0.2.{h}", PORT, "u",
                               VX_MTU, vtep_mac_for(host), f"10.91.{h}.0/32")
        for h, host in ((1, h1), (2, h2)):
            o = 3 - h
            self.links[host].ensure_peer(vxlan_name(ov), f"10.91.{o}.0/24", f"10.91.{o}.0",
                                         vtep_mac_for(self.ns(f"h{o}")), f"192.0.2.{o}")

    # --- by hand with ip (LAB-NOTES) --------------------------------------------------------

    def hand_container(self, host: str, name: str, bridge: str, cidr: str, gw: str,
                       mtu: int) -> None:
        ip("netns", "add", name)
        veth = f"v{name}"[-15:]
        ip("-n", host, batch=(f"link add {veth} mtu {mtu} type veth peer name eth0 netns {name}\n"
                              f"link set {veth} master {bridge} up\n"))
        ip("-n", name, batch=(f"link set lo up\nlink set eth0 mtu {mtu}\n"
                              f"addr add {cidr} dev eth0\nlink set eth0 up\n"
                              f"route add default via {gw}\n"))

    def build_hand(self) -> None:
        h1, h2 = self.ns("h1"), self.ns("h2")
        ip("-n", h1, batch="link add brh type bridge\naddr add 10.82.0.1/24 dev brh\n"
                           "link set brh up\n")
        for i in (1, 2):
            self.hand_container(h1, self.ns(f"m{i}"), "brh", f"10.82.0.{i + 1}/24", "10.82.0.1",
                                UNDERLAY_MTU)
        for h, host in ((1, h1), (2, h2)):
            ip("-n", host, batch=(
                f"link add brv mtu {VX_MTU} type bridge\naddr add 10.92.{h}.1/24 dev brv\n"
                f"link set brv up\n"
                f"link add vxh type vxlan id 92 local 192.0.2.{h} dstport {PORT} dev u "
                f"nolearning\nlink set vxh mtu {VX_MTU}\naddr add 10.92.{h}.0/32 dev vxh\n"
                f"link set vxh up\n"))
            self.hand_container(host, self.ns(f"y{h}"), "brv", f"10.92.{h}.2/24",
                                f"10.92.{h}.1", VX_MTU)
        macs = {h: self._mac(self.ns(f"h{h}"), "vxh") for h in (1, 2)}
        for h, host in ((1, h1), (2, h2)):
            o = 3 - h
            ip("-n", host, batch=(
                f"route add 10.92.{o}.0/24 via 10.92.{o}.0 dev vxh onlink\n"
                f"neigh add 10.92.{o}.0 lladdr {macs[o]} dev vxh nud permanent\n"))
            self._fdb(host, macs[o], f"192.0.2.{o}")

    def _fdb(self, host: str, mac: str, dst: str) -> None:
        proc = subprocess.run(["bridge", "-n", host, "fdb", "append", mac, "dev", "vxh", "dst",
                               dst], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"could not add fdb {mac} on {host}: {proc.stderr.strip()}")

    @staticmethod
    def _mac(ns: str, dev: str) -> str:
        out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", dev], check=True,
                             capture_output=True, text=True).stdout
        return str(json.loads(out)[0]["address"])

    # --- iperf3 ---------------------------------------------------------------------------

    def start_server(self, ns: str) -> None:
        self.servers.append(subprocess.Popen(in_ns(ns, "iperf3", "-s", "-p", "5201"),
                                             stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL))

    def iperf(self, client_ns: str, server_ip: str, seconds: float) -> float:
        """Gbit/s received, one TCP stream for ``seconds``."""
        last = ""
        for _ in range(20):  # the server may still be starting
            proc = subprocess.run(in_ns(client_ns, "iperf3", "-c", server_ip, "-p", "5201",
                                        "-t", str(seconds), "-J"),
                                  capture_output=True, text=True)
            if proc.returncode == 0:
                doc = json.loads(proc.stdout)
                return float(doc["end"]["sum_received"]["bits_per_second"]) / 1e9
            last = proc.stdout[-300:] + proc.stderr[-300:]
            time.sleep(0.2)
        raise RuntimeError(f"iperf3 from {client_ns} to {server_ip} failed: {last}")

    def close(self) -> None:
        """Stop our iperf3 servers (by PID), close sockets, remove our namespaces."""
        for proc in self.servers:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for links in self.links.values():
            links.close()
        for path in glob.glob(netns_path(f"{self.p}*")):
            remove_netns(path)


def main() -> int:
    args = bench_args(__doc__.splitlines()[0])
    rounds, seconds = (5, 3) if args.quick else (8, 5)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    d = Dataplane(unique_prefix("d"))
    try:
        d.build_underlay()
        d.build_sdnctl()
        d.build_hand()
        for ns in ("s2", "m2", "x2", "y2"):
            d.start_server(d.ns(ns))
        ms: list[Measurement] = []
        comps = []
        pairs = (("bridge", ("s1", "10.81.0.3"), ("m1", "10.82.0.3")),
                 ("vxlan", ("x1", "10.91.2.2"), ("y1", "10.92.2.2")))
        for what, (sc, sip), (hc, hip) in pairs:
            sd, hand = alternate(lambda sc=sc, sip=sip: d.iperf(d.ns(sc), sip, seconds),
                                 lambda hc=hc, hip=hip: d.iperf(d.ns(hc), hip, seconds), rounds)
            ms += [Measurement(f"{what} sdnctl", "Gbit/s", sd),
                   Measurement(f"{what} by hand", "Gbit/s", hand)]
            r = paired_ratio(sd, hand)
            comps.append(comparison(f"{what} sdnctl/hand", r, ">= 0.97", r >= 0.97))
            print(f"{what}: sdnctl {sd}  by hand {hand}  ratio {r:.3f}")
        write_result("dataplane", {
            "mode": "quick" if args.quick else "full",
            "params": {"rounds": rounds, "seconds": seconds, "underlay_mtu": UNDERLAY_MTU,
                       "vxlan_mtu": VX_MTU},
            "measurements": ms, "comparisons": comps,
            "notes": [f"iperf3 one TCP stream, {seconds} s per sample, {rounds} alternating "
                      "rounds; ratio = median of per-round sdnctl/hand; bridge: two containers on "
                      "one host; vxlan: across two hosts"]})
    finally:
        d.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
