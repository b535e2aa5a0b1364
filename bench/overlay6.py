"""Issue 20: IPv6 throughput over sdnctl's overlay against a hand-built IPv6 VXLAN, in one run.

Design note. The lab, the measuring and the comparison are ``bench/dataplane.py``'s
(:class:`dataplane.Dataplane`, :func:`dataplane.measure_paths`); only what is built differs:

- sdnctl: hosts ``h1`` and ``h2`` run agents; through the API an IPv6-only overlay network
  (``subnet6`` only) with one container on each host, so its packets are IPv6 end to end
  inside VXLAN (over the lab's IPv4 underlay), with sdnctl's nftables tables loaded (the
  IPv6 guards of each container port, isolation, the VXLAN filter).
- by hand: hosts ``m1`` and ``m2`` (no agent, no nftables): the same with ``ip`` and
  ``bridge`` (LAB-NOTES' flannel-style L3 VXLAN recipe in IPv6: a route to the peer's /64 via
  its VTEP address onlink, a permanent neighbour, an FDB entry), addresses added ``nodad``,
  the same MTU as sdnctl's containers got.

The ratio sdnctl/hand is what our rules cost IPv6 packets over the overlay (goal >= 0.97).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

from _sdnlab import BenchError
from dataplane import Dataplane, in_ns, ip, measure_paths
from harness import bench_args, unique_prefix, write_result

from agent.kernel.netns import netns_path
from sdnctl.v1 import sdnctl_pb2 as pb

PORT = 4789
#: (label, sdnctl client, sdnctl server, hand client, hand server)
PATHS = (("vxlan6", "x1", "x2", "hx1", "hx2"),)


class Overlay6(Dataplane):
    def build_sdnctl(self) -> None:
        self.sdn.setup()
        self.sdn.create_network(pb.Network(name="dov6", driver="overlay",
                                           subnet6="fd00:91::/48"))
        for name, host in (("x1", "h1"), ("x2", "h2")):
            self.sdn.start(pb.Container(name=name, host=host, network="dov6",
                                        command=["sleep", "infinity"]))
            got = self.sdn.api.GetContainer(pb.GetRequest(name=name), timeout=10)
            if not got.ip6 or got.ip:
                raise BenchError(f"container {name}: expected an IPv6 address only, got "
                                 f"{got.ip!r} and {got.ip6!r}")
            self.ctrs[name] = (got.status.netns or self.sdn.container_netns(host, name), got.ip6)
        for host in ("h1", "h2"):
            tables = subprocess.run(in_ns(self.sdn.hosts[host].netns, "nft", "list", "tables"),
                                    capture_output=True, text=True).stdout
            for table in ("inet sdnctl", "bridge sdnctl"):
                if f"table {table}" not in tables:
                    raise BenchError(f"host {host}: the agent loaded no table {table!r}")

    def build_hand(self) -> None:
        mtu = self.mtu("x1")
        hosts = {h: self.sdn.lab.ensure_host(f"m{h}", 1 + h) for h in (1, 2)}
        names = {h: os.path.basename(hosts[h].netns) for h in (1, 2)}
        for h in (1, 2):
            subprocess.run(in_ns(hosts[h].netns, "sysctl", "-qw",
                                 "net.ipv6.conf.all.forwarding=1"), check=True)
            ip("-n", names[h], batch=(
                f"link add brv mtu {mtu} type bridge\n"
                f"addr add fd00:a2:{h}::1/64 dev brv nodad\nlink set brv up\n"
                f"link add vxh type vxlan id 92 local {hosts[h].underlay_ip} dstport {PORT} "
                f"dev {hosts[h].underlay_dev} nolearning\nlink set vxh mtu {mtu}\n"
                f"addr add fd00:a2:{h}::/128 dev vxh nodad\nlink set vxh up\n"))
            self._hand_container6(names[h], f"hx{h}", f"fd00:a2:{h}::2", f"fd00:a2:{h}::1",
                                  mtu)
        macs = {h: subprocess.run(["ip", "-n", names[h], "-br", "link", "show", "vxh"],
                                  check=True, capture_output=True, text=True).stdout.split()[2]
                for h in (1, 2)}
        for h in (1, 2):
            o = 3 - h
            ip("-n", names[h], batch=(
                f"route add fd00:a2:{o}::/64 via fd00:a2:{o}:: dev vxh onlink\n"
                f"neigh add fd00:a2:{o}:: lladdr {macs[o]} dev vxh nud permanent\n"))
            proc = subprocess.run(["bridge", "-n", names[h], "fdb", "append", macs[o], "dev",
                                   "vxh", "dst", hosts[o].underlay_ip],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise BenchError(f"could not add fdb {macs[o]} on m{h}: {proc.stderr.strip()}")

    def _hand_container6(self, host: str, name: str, address: str, gateway: str,
                         mtu: int) -> None:
        ns = f"{self.p}{name}"
        ip("netns", "add", ns)
        veth = f"v{ns}"[-15:]
        ip("-n", host, batch=(f"link add {veth} mtu {mtu} type veth peer name eth0 netns {ns}\n"
                              f"link set {veth} master brv up\n"))
        ip("-n", ns, batch=(f"link set lo up\nlink set eth0 mtu {mtu}\n"
                            f"addr add {address}/64 dev eth0 nodad\nlink set eth0 up\n"
                            f"route add default via {gateway}\n"))
        self.ctrs[name] = (netns_path(ns), address)


def main() -> int:
    args = bench_args(__doc__.splitlines()[0])
    rounds, seconds, pings = (4, 2, 500) if args.quick else (8, 4, 2000)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    prefix = unique_prefix("v6o")
    workdir = tempfile.mkdtemp(prefix=f"{prefix}-", dir="/run")
    d = Overlay6(prefix, workdir)
    try:
        d.build_sdnctl()
        d.build_hand()
        rules = d.rules()
        for ctr in ("x2", "hx2"):
            d.start_server(ctr)
        ms, comps = measure_paths(d, PATHS, rounds, seconds, pings)
        write_result("overlay6", {
            "mode": "quick" if args.quick else "full",
            "params": {"rounds": rounds, "seconds": seconds, "pings": pings,
                       "vxlan_mtu": d.mtu("x1"), "sdnctl_rules_h1": rules},
            "measurements": ms, "comparisons": comps,
            "notes": [f"IPv6 inside VXLAN over the lab's IPv4 underlay; sdnctl's path built by "
                      f"its agents through the API (an IPv6-only overlay), its nftables tables "
                      f"loaded ({rules} rules on h1); by hand: the same with ip, no filters; "
                      f"throughput: iperf3 one TCP stream, {seconds} s per sample; latency: "
                      f"per round the p50/p99 of {pings} pings 1 ms apart; {rounds} "
                      "alternating rounds; ratios are medians of per-round sdnctl/hand"]})
    finally:
        d.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        print(f"bench/overlay6.py: error: {e}", file=sys.stderr)
        sys.exit(1)
