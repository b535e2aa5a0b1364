"""Issue 8 item 5: the data path sdnctl builds, filters included, against the same one by hand.

Design note. One lab (``_sdnlab.SdnctlLab``: an underlay of its own, the controller in this
process, the real agent in each sdnctl host) with four hosts on the same underlay wire:

- sdnctl: hosts ``h1`` and ``h2`` run agents. Through the API: a bridge network with two
  containers on ``h1``, and an overlay network (VXLAN) with one container on each host. The
  agents build everything as in production, so their nftables tables are loaded: the
  anti-spoofing guards of each container port (``bridge sdnctl``), network isolation, NAT and
  the VXLAN filter (``inet sdnctl``). The script checks that both tables are there.
- by hand: hosts ``m1`` and ``m2`` (no agent, no nftables): the same topology with ``ip`` and
  ``bridge`` (LAB-NOTES' flannel-style L3 VXLAN recipe: route via the peer's VTEP address
  onlink, a permanent neighbour, an FDB entry), the same MTUs as sdnctl's containers got.

So the ratio sdnctl/hand is what our rules (and nothing else) cost the packets. A third side
on the bridge path is Docker's (issue 21: "no worse than Docker's bridge with its iptables
rules"): Debian's dockerd 20.10 with its defaults in lab host ``d1`` (``sdnctl.lab.dockerd``:
its own namespaces and state directory, stopped by PID), a user-defined bridge network at the
same MTU and two containers of the test image; the tools enter them by ``/proc/PID/ns/net``.
Without /usr/sbin/dockerd (bench/setup.sh installs docker.io) the bench fails. Containers are
image-less (the host's root, read-only, ``sleep infinity``); the measuring tools run in their
network namespaces (``nsenter --net``). Two figures per path, the sides alternating round by
round: bulk throughput (iperf3, one TCP stream) and latency (``ping`` at a 1 ms interval, so one
request is in flight at a time: per round its p50 and p99 round-trip time; Debian's netperf,
whose TCP_RR would be the usual tool, is in non-free and not installable here). iperf3 servers
are started by PID and stopped by PID; everything goes, even on failure.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from _sdnlab import BenchError, SdnctlLab
from harness import (
    Measurement,
    alternate_many,
    bench_args,
    comparison,
    paired_ratio,
    percentile,
    unique_prefix,
    write_result,
)

from agent.kernel.netns import netns_path, remove_netns
from sdnctl.lab.dockerd import DOCKER, LabDocker, start_lab_dockerd, stop_lab_dockerd
from sdnctl.lab.testimage import DEFAULT_TAG, build_test_image
from sdnctl.v1 import sdnctl_pb2 as pb

PORT = 4789
RTT_RE = re.compile(r"time=([0-9.]+) ms")
#: (label, sdnctl client, sdnctl server, hand client, hand server)
PATHS = (("bridge", "s1", "s2", "hb1", "hb2"), ("vxlan", "x1", "x2", "hx1", "hx2"))
#: Docker's side of a path: label -> (client, server)
DOCKER_PATHS = {"bridge": ("db1", "db2")}


def ip(*argv: str, batch: str | None = None) -> None:
    cmd = ["ip", *argv] + (["-batch", "-"] if batch is not None else [])
    proc = subprocess.run(cmd, input=batch, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"could not run {' '.join(cmd)}: {proc.stderr.strip()}")


def in_ns(path: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net={path}", *argv]


def _json(argv: list[str]) -> Any:
    return json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)


class Dataplane:
    def __init__(self, prefix: str, workdir: str) -> None:
        self.p = prefix
        self.sdn = SdnctlLab(prefix, workdir, ("h1", "h2"))
        self.servers: list[subprocess.Popen[bytes]] = []
        #: container -> (netns path, address)
        self.ctrs: dict[str, tuple[str, str]] = {}
        #: Docker's side: its directory (on the disk: its image store), what stopping it needs
        self.docker: LabDocker | None = None
        self.dockerd: dict[str, int] = {}

    # --- sdnctl, through the API ------------------------------------------------------------

    def build_sdnctl(self) -> None:
        self.sdn.setup()
        api = self.sdn
        api.create_network(pb.Network(name="db", driver="bridge", subnet="10.81.0.0/16"))
        api.create_network(pb.Network(name="dov", driver="overlay", subnet="10.91.0.0/16"))
        for name, host, net in (("s1", "h1", "db"), ("s2", "h1", "db"), ("x1", "h1", "dov"),
                                ("x2", "h2", "dov")):
            api.start(pb.Container(name=name, host=host, network=net,
                                   command=["sleep", "infinity"]))
            got = api.api.GetContainer(pb.GetRequest(name=name), timeout=10)
            path = got.status.netns or self.sdn.container_netns(host, name)
            self.ctrs[name] = (path, got.ip.split("/")[0])
        for host in ("h1", "h2"):
            tables = subprocess.run(in_ns(self.sdn.hosts[host].netns, "nft", "list", "tables"),
                                    capture_output=True, text=True).stdout
            for table in ("inet sdnctl", "bridge sdnctl"):
                if f"table {table}" not in tables:
                    raise BenchError(f"host {host}: the agent loaded no table {table!r}")

    def rules(self) -> int:
        """How many nftables rules sdnctl's tables hold on h1 (for the notes)."""
        doc: Any = json.loads(subprocess.run(
            in_ns(self.sdn.hosts["h1"].netns, "nft", "-j", "list", "ruleset"), check=True,
            capture_output=True, text=True).stdout)
        return sum(1 for item in doc.get("nftables", [])
                   if "rule" in item and item["rule"].get("table") == "sdnctl")

    def mtu(self, ctr: str) -> int:
        return int(_json(in_ns(self.ctrs[ctr][0], "ip", "-j", "link", "show", "eth0"))[0]["mtu"])

    # --- by hand with ip (LAB-NOTES) --------------------------------------------------------

    def hand_container(self, host: str, name: str, bridge: str, cidr: str, gw: str,
                       mtu: int) -> None:
        ns = f"{self.p}{name}"
        ip("netns", "add", ns)
        veth = f"v{ns}"[-15:]
        ip("-n", host, batch=(f"link add {veth} mtu {mtu} type veth peer name eth0 netns {ns}\n"
                              f"link set {veth} master {bridge} up\n"))
        ip("-n", ns, batch=(f"link set lo up\nlink set eth0 mtu {mtu}\n"
                            f"addr add {cidr} dev eth0\nlink set eth0 up\n"
                            f"route add default via {gw}\n"))
        self.ctrs[name] = (netns_path(ns), cidr.split("/")[0])

    def build_hand(self) -> None:
        br_mtu, vx_mtu = self.mtu("s1"), self.mtu("x1")
        hosts = {h: self.sdn.lab.ensure_host(f"m{h}", 1 + h) for h in (1, 2)}
        names = {h: os.path.basename(hosts[h].netns) for h in (1, 2)}
        for h in (1, 2):
            subprocess.run(in_ns(hosts[h].netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"),
                           check=True)
        m1 = names[1]
        ip("-n", m1, batch=f"link add brh mtu {br_mtu} type bridge\n"
                           "addr add 10.82.0.1/24 dev brh\nlink set brh up\n")
        for i in (1, 2):
            self.hand_container(m1, f"hb{i}", "brh", f"10.82.0.{i + 1}/24", "10.82.0.1", br_mtu)
        for h in (1, 2):
            host = hosts[h]
            ip("-n", names[h], batch=(
                f"link add brv mtu {vx_mtu} type bridge\naddr add 10.92.{h}.1/24 dev brv\n"
                f"link set brv up\n"
                f"link add vxh type vxlan id 92 local {host.underlay_ip} dstport {PORT} "
                f"dev {host.underlay_dev} nolearning\nlink set vxh mtu {vx_mtu}\n"
                f"addr add 10.92.{h}.0/32 dev vxh\nlink set vxh up\n"))
            self.hand_container(names[h], f"hx{h}", "brv", f"10.92.{h}.2/24", f"10.92.{h}.1",
                                vx_mtu)
        macs = {h: str(_json(["ip", "-n", names[h], "-j", "link", "show", "vxh"])[0]["address"])
                for h in (1, 2)}
        for h in (1, 2):
            o = 3 - h
            ip("-n", names[h], batch=(
                f"route add 10.92.{o}.0/24 via 10.92.{o}.0 dev vxh onlink\n"
                f"neigh add 10.92.{o}.0 lladdr {macs[o]} dev vxh nud permanent\n"))
            proc = subprocess.run(["bridge", "-n", names[h], "fdb", "append", macs[o], "dev",
                                   "vxh", "dst", hosts[o].underlay_ip],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise BenchError(f"could not add fdb {macs[o]} on m{h}: {proc.stderr.strip()}")

    # --- Docker's bridge, with its defaults -------------------------------------------------

    def build_docker(self, workdir: str) -> None:
        """dockerd in lab host d1, a bridge network at sdnctl's bridge MTU, containers db1, db2."""
        if not os.access(DOCKER, os.X_OK):
            raise BenchError(f"{DOCKER} missing (bench/setup.sh installs docker.io)")
        host = self.sdn.lab.ensure_host("d1", 4)
        self.docker = LabDocker(os.path.join(workdir, f"{self.p}d1", "docker"))
        self.dockerd = start_lab_dockerd(self.docker, host.netns)
        archive = os.path.join(workdir, "image.tar")
        build_test_image(archive)
        self.docker_cli("load", "-i", archive)
        self.docker_cli("network", "create", "-d", "bridge", "--subnet", "10.84.0.0/24", "-o",
                        f"com.docker.network.driver.mtu={self.mtu('s1')}", "dref")
        for name in DOCKER_PATHS["bridge"]:
            cid = self.docker_cli("run", "-d", "--network", "dref", "--name", name, DEFAULT_TAG,
                                  "sleep", "3600").strip()
            pid, address = self.docker_cli(
                "inspect", "-f", "{{.State.Pid}} {{.NetworkSettings.Networks.dref.IPAddress}}",
                cid).split()
            self.ctrs[name] = (f"/proc/{int(pid)}/ns/net", address)

    def docker_cli(self, *argv: str) -> str:
        assert self.docker is not None
        proc = subprocess.run([DOCKER, *argv], env=self.docker.env(), capture_output=True,
                              text=True, timeout=120)
        if proc.returncode != 0:
            raise BenchError(f"docker {' '.join(argv)}: {proc.stderr.strip()}")
        return proc.stdout

    # --- measuring ------------------------------------------------------------------------

    def start_server(self, ctr: str) -> None:
        self.servers.append(subprocess.Popen(in_ns(self.ctrs[ctr][0], "iperf3", "-s", "-p",
                                                   "5201"),
                                             stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL))

    def iperf(self, client: str, server: str, seconds: float) -> float:
        """Gbit/s received, one TCP stream for ``seconds``."""
        last = ""
        for _ in range(20):  # the server may still be starting
            proc = subprocess.run(in_ns(self.ctrs[client][0], "iperf3", "-c",
                                        self.ctrs[server][1], "-p", "5201", "-t", str(seconds),
                                        "-J"), capture_output=True, text=True)
            if proc.returncode == 0:
                doc = json.loads(proc.stdout)
                return float(doc["end"]["sum_received"]["bits_per_second"]) / 1e9
            last = proc.stdout[-300:] + proc.stderr[-300:]
            time.sleep(0.2)
        raise BenchError(f"iperf3 from {client} to {server} failed: {last}")

    def ping(self, client: str, server: str, count: int) -> tuple[float, float]:
        """(p50, p99) round-trip time in µs of ``count`` pings, 1 ms apart."""
        proc = subprocess.run(in_ns(self.ctrs[client][0], "ping", "-n", "-i", "0.001", "-W",
                                    "1", "-c", str(count), self.ctrs[server][1]),
                              capture_output=True, text=True)
        rtts = [float(x) * 1000 for x in RTT_RE.findall(proc.stdout)]
        if len(rtts) < count * 0.99:
            raise BenchError(f"ping from {client} to {server}: {len(rtts)} of {count} answered:"
                             f" {proc.stdout[-300:]} {proc.stderr[-300:]}")
        return percentile(rtts, 50), percentile(rtts, 99)

    def close(self) -> None:
        """Stop our iperf3 servers (by PID), the lab, remove our namespaces."""
        for proc in self.servers:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        try:
            if self.docker is not None:
                try:
                    stop_lab_dockerd(self.docker, self.dockerd)
                except Exception as e:  # the rest must go all the same; say what was left
                    print(f"bench/dataplane.py: could not stop dockerd {self.dockerd}: {e}",
                          file=sys.stderr)
            self.sdn.close(delete=[c for c in ("s1", "s2", "x1", "x2") if c in self.ctrs])
        finally:
            for path in glob.glob(netns_path(f"{self.p}*")):
                remove_netns(path)


def iperfer(d: Dataplane, client: str, server: str, seconds: float) -> Callable[[], float]:
    return lambda: d.iperf(client, server, seconds)


def pinger(d: Dataplane, client: str, server: str, count: int,
           into: list[tuple[float, float]]) -> Callable[[], list[float]]:
    """A side for ``alternate_many`` that keeps each round's (p50, p99) in ``into``."""
    def run() -> list[float]:
        into.append(d.ping(client, server, count))
        return []
    return run


#: Per compared side: the goal of sdnctl/side for throughput and for the RTT p50
GOALS = {"hand": (0.97, 1.1), "docker": (1.0, 1.0)}
#: How each side is named in the measurements
LABELS = {"sdnctl": "sdnctl", "hand": "by hand", "docker": "docker"}


def measure_paths(d: Dataplane, paths: tuple[tuple[str, str, str, str, str], ...], rounds: int,
                  seconds: float, pings: int,
                  docker: dict[str, tuple[str, str]] | None = None,
                  ) -> tuple[list[Measurement], list[dict[str, Any]]]:
    """Per path (label, sdnctl client, server, hand client, server), with Docker's pair for the
    labels in ``docker``: throughput and RTT p50/p99 of every side in rounds whose order
    rotates, and sdnctl's ratios to each other side (the goals: ``GOALS``)."""
    ms: list[Measurement] = []
    comps = []
    for what, sc, ss, hc, hs in paths:
        pairs = {"sdnctl": (sc, ss), "hand": (hc, hs), **(
            {"docker": docker[what]} if docker and what in docker else {})}
        speed = alternate_many({side: iperfer(d, c, s, seconds)
                                for side, (c, s) in pairs.items()}, rounds)
        ms += [Measurement(f"{what} throughput {LABELS[side]}", "Gbit/s", speed[side])
               for side in pairs]
        for side in (s for s in pairs if s != "sdnctl"):
            r = paired_ratio(speed["sdnctl"], speed[side])
            goal = GOALS[side][0]
            comps.append(comparison(f"{what} throughput sdnctl/{side}", r, f">= {goal:g}",
                                    r >= goal))
            print(f"{what}: sdnctl {speed['sdnctl']}  {LABELS[side]} {speed[side]}  "
                  f"ratio {r:.3f}")
        lat: dict[str, list[tuple[float, float]]] = {side: [] for side in pairs}
        alternate_many({side: pinger(d, c, s, pings, lat[side])
                        for side, (c, s) in pairs.items()}, rounds)
        for q, k in (("p50", 0), ("p99", 1)):
            got = {side: [x[k] for x in lat[side]] for side in pairs}
            ms += [Measurement(f"{what} RTT {q} {LABELS[side]}", "µs", got[side])
                   for side in pairs]
            for side in (s for s in pairs if s != "sdnctl"):
                r = paired_ratio(got["sdnctl"], got[side])
                goal = GOALS[side][1]
                comps.append(comparison(f"{what} RTT {q} sdnctl/{side}", r,
                                        f"<= {goal:g}" if q == "p50" else "",
                                        r <= goal if q == "p50" else None))
                print(f"{what} RTT {q}: sdnctl {got['sdnctl']}  {LABELS[side]} {got[side]}  "
                      f"ratio {r:.3f}")
    return ms, comps


def main() -> int:
    args = bench_args(__doc__.splitlines()[0])
    rounds, seconds, pings = (4, 2, 500) if args.quick else (8, 4, 2000)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    prefix = unique_prefix("d")
    workdir = tempfile.mkdtemp(prefix=f"{prefix}-", dir="/run")
    # dockerd's image store and overlays on the disk, as bench/start.py keeps them
    docker_dir = tempfile.mkdtemp(prefix=f"sdnctl-bench-{prefix}-")
    d = Dataplane(prefix, workdir)
    try:
        d.build_sdnctl()
        d.build_hand()
        d.build_docker(docker_dir)
        rules = d.rules()
        for ctr in ("s2", "x2", "hb2", "hx2", DOCKER_PATHS["bridge"][1]):
            d.start_server(ctr)
        ms, comps = measure_paths(d, PATHS, rounds, seconds, pings, DOCKER_PATHS)
        write_result("dataplane", {
            "mode": "quick" if args.quick else "full",
            "params": {"rounds": rounds, "seconds": seconds, "pings": pings,
                       "bridge_mtu": d.mtu("s1"), "vxlan_mtu": d.mtu("x1"),
                       "sdnctl_rules_h1": rules},
            "measurements": ms, "comparisons": comps,
            "notes": [f"sdnctl's paths built by its agents through the API, with its nftables "
                      f"tables loaded ({rules} rules in host h1's sdnctl tables); by hand: the "
                      "same topology with ip, no filters; throughput: iperf3 one TCP stream, "
                      f"{seconds} s per sample; latency: per round the p50/p99 of {pings} pings "
                      f"1 ms apart; {rounds} rounds, the sides' order rotating; ratios are "
                      "medians of per-round sdnctl/side; docker: Debian's dockerd 20.10 with "
                      "its defaults (bridge driver, iptables rules, br_netfilter on), a "
                      "user-defined network at the same MTU"]})
    finally:
        d.close()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(docker_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        print(f"bench/dataplane.py: error: {e}", file=sys.stderr)
        sys.exit(1)
