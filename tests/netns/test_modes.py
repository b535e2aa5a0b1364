"""The four network modes, routing between bridges, published ports and anti-spoofing, end to end.

One topology is brought up once for the module through the real CLI (two lab hosts, bridge
networks with every option, a closed, a joined and an open container) and each test proves one
behaviour with real packets. The last test brings it down and checks nothing is left.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from helpers.capture import capture, start_pinger
from helpers.cli import Cli, lab_cli, nsexec, ping
from helpers.hoststate import wait_for

from agent.names import veth_name
from sdnctl.lab.lab import EXTERNAL_IP
from sdnctl.v1 import sdnctl_pb2 as pb
from sdnctl.v1 import sdnctl_pb2_grpc as pb_grpc

pytestmark = pytest.mark.netns

SERVER = str(Path(__file__).parent / "helpers" / "peer_server.py")
PY = sys.executable

TOPOLOGY = f"""
name: modes
hosts:
  - {{name: h1, lab: true}}
  - {{name: h2, lab: true}}
networks:
  - {{name: front, subnet: 10.90.0.0/16}}
  - {{name: back, subnet: 10.91.0.0/24}}
  - {{name: inner, subnet: 10.93.0.0/24, internal: true}}
  - {{name: fixed, subnet: 10.94.0.0/24, gateway: 10.94.0.254, ip_range: 10.94.0.128/25}}
ROUTES
containers:
  - {{name: web, host: h1, network: front, ports: ["8080:7000", "127.0.0.1:5353:7001/udp"],
      command: [{PY}, {SERVER}, tcp, 0.0.0.0, "7000", udp, 0.0.0.0, "7001"]}}
  - {{name: peer, host: h1, network: front}}
  - {{name: api, host: h1, network: back, command: [{PY}, {SERVER}, tcp, 0.0.0.0, "7002"]}}
  - {{name: secret, host: h1, network: inner}}
  - {{name: pinned, host: h1, network: fixed, ip: 10.94.0.200}}
  - {{name: ranged, host: h1, network: fixed}}
  - {{name: donor, host: h1, network: front, restart: always,
      command: [{PY}, {SERVER}, tcp, 127.0.0.1, "7003"]}}
  - {{name: side, host: h1, network: "container:donor", share: [uts]}}
  - {{name: vault, host: h1, network: none}}
  - {{name: probe, host: h1, network: host}}
  - {{name: remote, host: h2, network: front}}
"""


class Modes:
    def __init__(self, cli: Cli, tmp: Path, prefix: str) -> None:
        self.cli, self.prefix = cli, prefix
        self.plain = tmp / "modes.yaml"
        self.plain.write_text(TOPOLOGY.replace("ROUTES", ""))
        self.routed = tmp / "modes-routed.yaml"
        self.routed.write_text(TOPOLOGY.replace("ROUTES", "routes:\n  - [front, back]"))


    def api(self) -> pb_grpc.ControllerStub:
        return pb_grpc.ControllerStub(grpc.insecure_channel(
            f"unix:{self.cli.run_dir / 'controller.sock'}"))

    def ext(self) -> str:
        return f"/run/netns/{self.prefix}ext"


@pytest.fixture(scope="module")
def modes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Modes]:
    prefix = "m" + secrets.token_hex(3)[:5]
    tmp = tmp_path_factory.mktemp("modes")
    with lab_cli(prefix) as cli:
        m = Modes(cli, tmp, prefix)
        cli.run("up", str(m.plain), "--timeout", "60")
        yield m


def in_container(pid: int, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess:
    """Run argv in the network (and UTS) namespace of a container's process."""
    return subprocess.run(["nsenter", "-t", str(pid), "-n", "-u", *argv], capture_output=True,
                          text=True, timeout=timeout, check=False)


def tcp_ask(netns_args: list[str], address: str, port: int) -> str:
    """Connect from inside a namespace; return what the peer_server answered ("" if nothing)."""
    code = (f"import socket; s=socket.create_connection(({address!r},{port}),timeout=2);"
            "print(s.recv(100).decode().strip())")
    done = subprocess.run(["nsenter", *netns_args, PY, "-c", code], capture_output=True,
                          text=True, timeout=10, check=False)
    return done.stdout.strip()


def udp_ask(netns_args: list[str], address: str, port: int) -> str:
    code = ("import socket; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(2);"
            f"s.sendto(b'hi',({address!r},{port}))\ntry: print(s.recv(100).decode().strip())\n"
            "except OSError: pass")
    done = subprocess.run(["nsenter", *netns_args, PY, "-c", code], capture_output=True,
                          text=True, timeout=10, check=False)
    return done.stdout.strip()


def test_closed_has_only_lo_and_reaches_nothing(modes: Modes) -> None:
    vault = modes.cli.container("vault")
    assert vault["state"] == "running" and vault["ip"] == "" and vault["mode"] == "none"
    links = in_container(vault["pid"], "ip", "-o", "link").stdout.splitlines()
    assert [line.split(":")[1].strip() for line in links] == ["lo"]
    assert not ping(vault["netns"], modes.cli.container("web")["ip"])
    assert not ping(vault["netns"], EXTERNAL_IP)


def test_bridged_options_and_egress(modes: Modes) -> None:
    peer, web = modes.cli.container("peer"), modes.cli.container("web")
    assert ping(peer["netns"], web["ip"]) and ping(peer["netns"], peer["gateway"])
    assert ping(peer["netns"], EXTERNAL_IP)
    secret = modes.cli.container("secret")
    assert ping(secret["netns"], secret["gateway"])
    assert not ping(secret["netns"], EXTERNAL_IP), "an internal network has no egress"
    pinned, ranged = modes.cli.container("pinned"), modes.cli.container("ranged")
    assert pinned["ip"] == "10.94.0.200" and pinned["gateway"] == "10.94.0.254"
    assert ranged["ip"].startswith("10.94.0.") and int(ranged["ip"].split(".")[3]) >= 128
    assert ping(ranged["netns"], pinned["ip"]) and ping(ranged["netns"], "10.94.0.254")


def test_joined_shares_the_donors_namespace_and_survives_its_restart(modes: Modes) -> None:
    donor, side = modes.cli.container("donor"), modes.cli.container("side")
    assert side["mode"] == "container" and side["shares_netns_of"] == "donor"
    assert side["ip"] == "" and side["netns"] == donor["netns"]

    def ns(pid: int, kind: str) -> int:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino

    assert ns(side["pid"], "net") == ns(donor["pid"], "net")
    assert ns(side["pid"], "uts") == ns(donor["pid"], "uts")  # share: [uts]
    assert ns(side["pid"], "ipc") != ns(donor["pid"], "ipc")  # ipc not asked for
    assert in_container(side["pid"], "hostname").stdout.strip() == "donor"
    # a server of the donor's on 127.0.0.1 answers the joined container on 127.0.0.1
    assert tcp_ask(["-t", str(side["pid"]), "-n"], "127.0.0.1", 7003).startswith("peer=127.0.0.1:")

    peer = modes.cli.container("peer")
    pinger = start_pinger(["nsenter", "-t", str(side["pid"]), "-n", "ping", "-n", "-i", "0.05",
                           "-w", "4", peer["ip"]])
    try:
        os.kill(donor["pid"], signal.SIGKILL)  # restart: always brings it back
        again = wait_for(lambda: (c := modes.cli.container("donor"))["state"] == "running"
                         and c["pid"] not in (0, donor["pid"]) and c, what="the donor restart")
        out, _ = pinger.communicate(timeout=10)
    finally:
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait()
    assert " 0% packet loss" in out, out
    assert ns(again["pid"], "net") == ns(side["pid"], "net")
    assert modes.cli.container("side")["pid"] == side["pid"], "the joined container was not touched"
    wait_for(lambda: tcp_ask(["-t", str(side["pid"]), "-n"], "127.0.0.1", 7003),
             what="the restarted donor's server")


def test_open_uses_the_hosts_namespace(modes: Modes) -> None:
    probe, h1 = modes.cli.container("probe"), modes.cli.host("h1")
    assert os.stat(f"/proc/{probe['pid']}/ns/net").st_ino == os.stat(h1["netns"]).st_ino
    assert probe["netns"] == h1["netns"]
    addresses = in_container(probe["pid"], "ip", "-4", "-o", "addr").stdout
    assert f" {h1['underlay_ip']}/" in addresses
    assert in_container(probe["pid"], "hostname").stdout.strip() == "probe"  # its own UTS
    assert ping(h1["netns"], EXTERNAL_IP)


def test_between_bridges_blocked_then_allowed_then_blocked(modes: Modes) -> None:
    peer, api = modes.cli.container("peer"), modes.cli.container("api")
    assert not ping(peer["netns"], api["ip"]), "bridges are isolated by default"
    modes.cli.run("up", str(modes.routed))
    try:
        out = nsexec(peer["netns"], "ping", "-n", "-c", "1", "-W", "1", api["ip"]).stdout
        assert "ttl=63" in out, out  # routed by the host: one hop
        # the receiver sees the sender's own address: no NAT between allowed bridges
        assert tcp_ask([f"--net={peer['netns']}"], api["ip"], 7002).startswith(
            f"peer={peer['ip']}:")
    finally:
        modes.cli.run("up", str(modes.plain))
    assert not ping(peer["netns"], api["ip"]), "un-allowing blocks again"
    assert modes.cli.container("api")["pid"] == api["pid"], "nothing was restarted"


def test_published_ports(modes: Modes) -> None:
    h1, h2 = modes.cli.host("h1"), modes.cli.host("h2")
    web, peer = modes.cli.container("web"), modes.cli.container("peer")
    # from the outside world through h1's underlay address; the container sees the real client
    answer = tcp_ask([f"--net={modes.ext()}"], h1["underlay_ip"], 8080)
    assert answer.startswith(f"peer={EXTERNAL_IP}:"), answer
    # hairpin: a container on the same bridge through the host's address
    assert tcp_ask([f"--net={peer['netns']}"], h1["underlay_ip"], 8080).startswith("peer=")
    # 127.0.0.1:5353/udp answers on h1 itself, and not from another lab host
    assert udp_ask([f"--net={h1['netns']}"], "127.0.0.1", 5353).startswith("peer=")
    assert udp_ask([f"--net={h2['netns']}"], h1["underlay_ip"], 5353) == ""
    assert web["ports"] == ["8080:7000", "127.0.0.1:5353:7001/udp"]


def test_spoofed_source_address_is_dropped(modes: Modes) -> None:
    peer, web = modes.cli.container("peer"), modes.cli.container("web")
    with capture(modes.ext(), "eth0", "icmp[icmptype] == icmp-echo") as cap:
        send = ("from scapy.all import IP, ICMP, send; "
                f"send(IP(src={web['ip']!r}, dst={EXTERNAL_IP!r})/ICMP(id=4241), verbose=0); "
                f"send(IP(src={peer['ip']!r}, dst={EXTERNAL_IP!r})/ICMP(id=4242), verbose=0)")
        done = subprocess.run(["nsenter", "-t", str(peer["pid"]), "-n", PY, "-c", send],
                              capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        cap.wait_for("id 4242,")  # the honest one, sent after the spoofed one, arrived
        out = cap.stop()
    seen = [line for line in out.splitlines() if "ICMP echo request" in line]
    assert len(seen) == 1 and "id 4242," in seen[0], f"only the honest packet may leave: {seen}"


def test_mode_change_through_the_api(modes: Modes) -> None:
    api = modes.api()
    before = modes.cli.container("peer")
    h1 = modes.cli.host("h1")
    spec = api.GetContainer(pb.GetRequest(name="peer"), timeout=10)
    closed = pb.Container(name="peer", host="h1", network="none", command=list(spec.command))
    api.UpdateContainer(pb.UpdateContainerRequest(container=closed), timeout=10)
    now = wait_for(lambda: (c := modes.cli.container("peer"))["mode"] == "none"
                   and c["state"] == "running" and c["pid"] != before["pid"] and c,
                   what="peer to run closed")
    assert now["ip"] == ""
    links = in_container(now["pid"], "ip", "-o", "link").stdout.splitlines()
    assert [line.split(":")[1].strip() for line in links] == ["lo"]
    host_links = nsexec(h1["netns"], "ip", "-o", "link").stdout
    wait_for(lambda: veth_name("peer", "eth0") not in nsexec(h1["netns"], "ip", "-o",
                                                             "link").stdout,
             what="peer's veth to go")
    assert veth_name("web", "eth0") in host_links

    bridged = pb.Container(name="peer", host="h1", network="front", command=list(spec.command))
    api.UpdateContainer(pb.UpdateContainerRequest(container=bridged), timeout=10)
    back = wait_for(lambda: (c := modes.cli.container("peer"))["mode"] == "bridge" and c["ip"]
                    and c["state"] == "running" and c["pid"] != now["pid"] and c,
                    what="peer to run bridged again")
    web_ip = modes.cli.container("web")["ip"]
    wait_for(lambda: ping(back["netns"], web_ip), what="peer to reach web")


def test_zz_down_leaves_nothing(modes: Modes) -> None:
    names = ("web", "donor", "side", "vault", "probe", "remote")
    pids = [modes.cli.container(n)["pid"] for n in names]
    modes.cli.run("down", str(modes.plain))
    assert not any(n.startswith(modes.prefix) for n in os.listdir("/run/netns"))
    with open("/proc/self/mounts") as f:
        assert str(modes.cli.run_dir) not in f.read()
    for pid in pids:
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/stat") as f:
            assert f.read().split(") ")[1][0] in "ZX", f"process {pid} still runs"
