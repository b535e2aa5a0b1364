"""The VXLAN overlay end to end: three lab hosts, containers talking across them, the underlay
carrying VXLAN, MTU, convergence when a host joins, peer changes, agent restarts, forged packets.

One topology is brought up once for the module through the real CLI; the last test brings it
down and checks nothing is left. MTU variants build their own small topologies.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.capture import CONTROL_PAYLOAD, Control, capture
from helpers.cli import Cli, kernel_state, lab_cli, nft_ruleset, nsexec
from helpers.hoststate import api, pid_alive, wait_for

from agent.names import vxlan_name
from sdnctl.lab import lab
from sdnctl.v1 import sdnctl_pb2 as pb

pytestmark = pytest.mark.netns

SERVER = str(Path(__file__).parent / "helpers" / "peer_server.py")
PY = sys.executable
SYS_TGKILL = 234  # x86_64: a signal to one thread of a process
SYS_FUTEX = 202  # x86_64

HOSTS = ("h1", "h2", "h3")
PAIRS = {"h1": ("a1", "a2"), "h2": ("b1", "b2"), "h3": ("c1", "c2"), "h4": ("d1",)}


def topology_text(hosts: tuple[str, ...], mtu: int = 1500) -> str:
    lines = ["name: overlay", f"lab: {{underlay_mtu: {mtu}}}", "hosts:"]
    lines += [f"  - {{name: {h}, lab: true}}" for h in hosts]
    lines += ["networks:", "  - {name: ov, driver: overlay, subnet: 10.70.0.0/16}",
              "containers:"]
    for h in hosts:
        first, *rest = PAIRS[h]
        lines.append(f"  - {{name: {first}, host: {h}, network: ov, "
                     f"command: [{PY}, {SERVER}, tcp, 0.0.0.0, '7000', udp, 0.0.0.0, '7001']}}")
        lines += [f"  - {{name: {n}, host: {h}, network: ov}}" for n in rest]
    return "\n".join(lines) + "\n"


class Overlay:
    def __init__(self, cli: Cli, tmp: Path, prefix: str) -> None:
        self.cli, self.tmp, self.prefix = cli, tmp, prefix
        self.three = tmp / "overlay.yaml"
        self.three.write_text(topology_text(HOSTS))
        self.four = tmp / "overlay-4.yaml"
        self.four.write_text(topology_text((*HOSTS, "h4")))



@pytest.fixture(scope="module")
def ov(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Overlay]:
    prefix = "o" + secrets.token_hex(3)[:5]
    tmp = tmp_path_factory.mktemp("overlay")
    with lab_cli(prefix) as cli:
        o = Overlay(cli, tmp, prefix)
        cli.run("up", str(o.three), "--timeout", "60")
        yield o


def ping_out(netns: str, address: str, *extra: str) -> subprocess.CompletedProcess:
    return nsexec(netns, "ping", "-n", "-c", "1", "-W", "2", *extra, address)


def ask(netns: str, address: str, port: int) -> str:
    code = (f"import socket; s=socket.create_connection(({address!r},{port}),timeout=3);"
            "print(s.recv(100).decode().strip())")
    return nsexec(netns, PY, "-c", code).stdout.strip()


def peers_on(netns: str, device: str) -> str:
    """Routes, neighbours and FDB entries of one VXLAN device, as text."""
    return "\n".join(nsexec(netns, *argv).stdout for argv in (
        ("ip", "route", "show", "dev", device), ("ip", "neigh", "show", "dev", device),
        ("bridge", "fdb", "show", "dev", device)))


def test_every_container_reaches_every_other(ov: Overlay) -> None:
    names = [n for h in HOSTS for n in PAIRS[h]]
    ctrs = {n: ov.cli.container(n) for n in names}
    for a in names:
        for b in names:
            if a == b:
                continue
            done = ping_out(ctrs[a]["netns"], ctrs[b]["ip"])
            assert done.returncode == 0, f"{a} -> {b}: {done.stdout}"
            ttl = int(re.search(r"ttl=(\d+)", done.stdout).group(1))  # type: ignore[union-attr]
            same_host = ctrs[a]["host"] == ctrs[b]["host"]
            # same host: bridged (64); across hosts: routed by both hosts (64 - 2)
            assert ttl == (64 if same_host else 62), f"{a} -> {b}: ttl={ttl}"
    # the receiver sees the sender's own address: no NAT inside the overlay
    assert ask(ctrs["a2"]["netns"], ctrs["b1"]["ip"], 7000).startswith(f"peer={ctrs['a2']['ip']}:")
    assert ask(ctrs["c2"]["netns"], ctrs["a1"]["ip"], 7000).startswith(f"peer={ctrs['c2']['ip']}:")
    # and each host holds exactly one route, neighbour and FDB entry per other host
    h1 = ov.cli.host("h1")
    entries = peers_on(h1["netns"], vxlan_name("ov"))
    assert len(re.findall(r"^10\.70\.\d+\.0/24 via", entries, re.M)) == 2, entries
    assert len(re.findall(r"PERMANENT", entries)) == 2, entries
    assert len(re.findall(r" dst 192\.0\.2\.\d+", entries)) == 2, entries


def test_underlay_carries_vxlan_with_the_networks_vni(ov: Overlay, tmp_path: Path) -> None:
    a1, b1 = ov.cli.container("a1"), ov.cli.container("b1")
    vni = ov.cli.json("inspect", "network", "ov")["vni"]
    assert vni > 0
    pcap = tmp_path / "underlay.pcap"
    ul = f"/run/netns/{ov.prefix}ul"
    # tcpdump on a bridge does not see what it forwards between ports: capture on h1's port
    port = lab.uplink_name("h1")
    with capture(ul, port, "udp port 4789", "-U", "-w", str(pcap), "--print",
                 control=Control("udp", dport=4789)) as cap:
        assert ping_out(a1["netns"], b1["ip"]).returncode == 0
        cap.wait_for(f"> {b1['ip']}: ICMP echo request")  # tcpdump decodes the inner packet
        cap.stop()
    code = ("from scapy.all import rdpcap, IP, UDP; from scapy.layers.vxlan import VXLAN;"
            f"p = next(p for p in rdpcap({str(pcap)!r}) if {CONTROL_PAYLOAD!r} not in bytes(p));"
            "i = p[VXLAN][IP];"
            "print(p[UDP].dport, p[VXLAN].vni, i.src, i.dst)")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["4789", str(vni), a1["ip"], b1["ip"]]


def test_a_joining_host_converges(ov: Overlay) -> None:
    a1 = ov.cli.container("a1")
    started = time.monotonic()
    ov.cli.run("up", str(ov.four), "--timeout", "60")
    d1 = ov.cli.container("d1")
    created = time.monotonic()
    # `up` returned once every agent realised the change: reachable at once, from everywhere
    for name in ("a1", "b2", "c1"):
        assert ping_out(ov.cli.container(name)["netns"], d1["ip"]).returncode == 0, name
    assert ping_out(d1["netns"], a1["ip"]).returncode == 0
    print(f"\nconvergence: host h4 joined and was reachable from every host "
          f"{created - started:.2f}s after `up` began (lab build and agent start included)")


def test_a_leaving_host_is_removed_everywhere_in_one_pass(ov: Overlay) -> None:
    """h4 goes (its container, its agent, then its record): every other host drops its route,
    neighbour and FDB entry and its underlay address from the VXLAN filter in the first pass
    after it (issue 21: the peer pass, unless a whole one fell due at that moment), and the
    rest of the overlay still talks."""
    h4, a1, b1 = ov.cli.host("h4"), ov.cli.container("a1"), ov.cli.container("b1")
    subnet = next(lease["subnet"] for lease in h4["subnets"] if lease["network"] == "ov")
    others = {h: ov.cli.host(h)["netns"] for h in HOSTS}
    device = vxlan_name("ov")
    logs = {h: ov.cli.run_dir / "lab" / f"{ov.prefix}{h}" / "agent.log" for h in HOSTS}
    try:
        for h, netns in others.items():  # the positive control: h4 is everywhere now
            entries = peers_on(netns, device)
            assert h4["vtep_mac"] in entries and h4["underlay_ip"] in entries and \
                subnet in entries, (h, entries)
            assert h4["underlay_ip"] in nft_ruleset(netns), h
        logged = {h: logs[h].stat().st_size for h in HOSTS}
        ov.cli.run("rm", "d1")
        lab.stop_process(h4["agent_pid"])
        with api(ov.cli) as client:
            client.api.DeleteHost(pb.DeleteRequest(name="h4"), timeout=10)
        deadline = time.monotonic() + 60  # a safety bound: how soon is the benchmark's business

        def pass_logged(h: str) -> bool:
            with open(logs[h]) as f:
                f.seek(logged[h])
                return re.search(r"\d+ (peer )?action\(s\)", f.read()) is not None

        for h, netns in others.items():
            # Once the agent logs the pass, it is over: all of it is done then (the next whole
            # pass, --resync seconds later, must not be what finished it).
            while time.monotonic() < deadline and not pass_logged(h):
                time.sleep(0.05)
            assert pass_logged(h), h
            entries, ruleset = peers_on(netns, device), nft_ruleset(netns)
            assert h4["vtep_mac"] not in entries and h4["underlay_ip"] not in entries and \
                subnet not in entries, (h, entries)
            assert h4["underlay_ip"] not in ruleset, (h, ruleset)
        assert ping_out(a1["netns"], b1["ip"]).returncode == 0
    finally:
        ov.cli.run("up", str(ov.four), "--timeout", "60")  # h4 again, for the tests after this


def test_peer_change_replaces_stale_entries(ov: Overlay) -> None:
    h3, h1 = ov.cli.host("h3"), ov.cli.host("h1")
    old_ip, old_mac = h3["underlay_ip"], h3["vtep_mac"]
    new_ip, new_mac = "192.0.2.99", "0e:aa:bb:cc:dd:ee"
    lab.stop_process(h3["agent_pid"])
    # (deleting the primary address drops its secondaries and the default route: re-add both)
    nsexec(h3["netns"], "ip", "addr", "del", f"{old_ip}/24", "dev", "eth0")
    nsexec(h3["netns"], "ip", "addr", "add", f"{new_ip}/24", "dev", "eth0")
    nsexec(h3["netns"], "ip", "route", "add", "default", "via", lab.UNDERLAY_GATEWAY)
    run_dir = ov.cli.run_dir / "lab" / f"{ov.prefix}h3"
    pid = lab.spawn_in_netns(h3["netns"], [
        PY, "-m", "agent.main", "--host", "h3", "--controller",
        f"unix:{ov.cli.run_dir / 'controller.sock'}", "--underlay-ip", new_ip,
        "--underlay-dev", "eth0", "--vtep-mac", new_mac, "--netns", h3["netns"],
        "--run-dir", str(run_dir)], str(run_dir / "agent-moved.log"))
    try:
        # A safety bound: how soon peers converge is a benchmark's business, not this test's.
        moved = time.monotonic()
        deadline = moved + 60
        device = vxlan_name("ov")
        while time.monotonic() < deadline:
            entries = peers_on(h1["netns"], device)
            if old_ip not in entries and old_mac not in entries and new_mac in entries:
                break
            time.sleep(0.05)
        entries = peers_on(h1["netns"], device)
        assert old_ip not in entries and old_mac not in entries, entries
        assert new_ip in entries and new_mac in entries, entries
        a1, c1 = ov.cli.container("a1"), ov.cli.container("c1")
        while time.monotonic() < deadline:  # and traffic flows again
            if nsexec(a1["netns"], "ping", "-n", "-c", "1", "-W", "0.2", c1["ip"]).returncode == 0:
                break
        else:
            pytest.fail(f"a1 cannot reach c1 after h3 moved:\n{peers_on(h3['netns'], device)}")
        print(f"\npeer change: h1 updated and a1 reached c1 {time.monotonic() - moved:.2f} s "
              "after h3's new agent started")
    finally:
        lab.stop_process(pid)
        nsexec(h3["netns"], "ip", "addr", "del", f"{new_ip}/24", "dev", "eth0")
        # `up` restores the lab host's address and starts a regular agent again
        ov.cli.run("up", str(ov.four), "--timeout", "60")
    entries = peers_on(h1["netns"], device)
    assert old_ip in entries and new_mac not in entries, entries


def test_sigkilled_agent_keeps_the_data_path_and_adopts_it(ov: Overlay) -> None:
    h2 = ov.cli.host("h2")
    a1, b1 = ov.cli.container("a1"), ov.cli.container("b1")
    namespaces = [ov.cli.host(h)["netns"] for h in ("h1", "h2")]
    before = {ns: (kernel_state(ns), peers_on(ns, vxlan_name("ov")), nft_ruleset(ns))
              for ns in namespaces}
    os.kill(h2["agent_pid"], signal.SIGKILL)
    pinger = subprocess.Popen(["nsenter", f"--net={a1['netns']}", "ping", "-n", "-q", "-i",
                               "0.05", "-w", "2", b1["ip"]], stdout=subprocess.PIPE, text=True)
    out, _ = pinger.communicate(timeout=10)
    assert " 0% packet loss" in out, out  # the agent is down, the overlay is not
    ov.cli.run("up", str(ov.four), "--timeout", "60")
    assert ov.cli.host("h2")["agent_pid"] != h2["agent_pid"]
    after = {ns: (kernel_state(ns), peers_on(ns, vxlan_name("ov")), nft_ruleset(ns))
             for ns in namespaces}
    assert after == before


def sigterm_unblocked(pid: int, tid: int) -> bool:
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        blocked = next(int(line.split()[1], 16) for line in f if line.startswith("SigBlk:"))
    return not blocked & 1 << (signal.SIGTERM - 1)


def asleep_in_futex(pid: int) -> bool:
    """The process's main thread sleeps in a futex wait (a Python ``Event.wait``)."""
    with open(f"/proc/{pid}/task/{pid}/stat") as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    with open(f"/proc/{pid}/task/{pid}/syscall") as f:
        call = f.read().split()[0]
    return state == "S" and call == str(SYS_FUTEX)


def test_a_sigterm_another_thread_takes_stops_the_agent(ov: Overlay, tmp_path: Path) -> None:
    """The kernel hands a process's signal to any thread that does not block it, and Python
    runs the handler in the main thread only. An agent whose controller does not answer sleeps
    in its pass loop until the next resync: a SIGTERM taken by another thread waited that long
    (600 s here; with a controller, until its next keepalive). Here it goes to another thread
    on purpose (tgkill), once the main thread sleeps."""
    h3 = ov.cli.host("h3")
    log = tmp_path / "agent.log"
    pid = lab.spawn_in_netns(h3["netns"], [
        PY, "-m", "agent.main", "--host", "h3", "--controller", f"unix:{tmp_path / 'none'}",
        "--underlay-ip", h3["underlay_ip"], "--underlay-dev", "eth0", "--netns", h3["netns"],
        "--run-dir", str(tmp_path / "run"), "--store-dir", str(tmp_path / "store"),
        "--cni-socket", "", "--metrics", "", "--dns-port", "0",
        "--resync", "600", "--flows-interval", "0"], str(log))
    try:
        wait_for(lambda: "starting (" in log.read_text(), 60, "the agent to start")
        wait_for(lambda: asleep_in_futex(pid), 30, "the agent's main thread to sleep")
        others = [tid for tid in map(int, os.listdir(f"/proc/{pid}/task"))
                  if tid != pid and sigterm_unblocked(pid, tid)]
        assert others, "the agent has threads besides its main one that take a SIGTERM"
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.syscall(SYS_TGKILL, pid, others[0], signal.SIGTERM) == 0, \
            ctypes.get_errno()
        wait_for(lambda: not pid_alive(pid), 30, "the agent to stop")
        assert "stopped; containers keep running" in log.read_text()
    finally:
        lab.stop_process(pid)


def test_forged_vxlan_is_not_delivered(ov: Overlay) -> None:
    h1, h2 = ov.cli.host("h1"), ov.cli.host("h2")
    a1, b1 = ov.cli.container("a1"), ov.cli.container("b1")
    vni = ov.cli.json("inspect", "network", "ov")["vni"]
    ul = f"/run/netns/{ov.prefix}ul"
    nsexec(ul, "ip", "addr", "add", "192.0.2.250/24", "dev", "ul0")  # not a member host
    # The inner packet is what h2 would route to a1: to h1's VTEP MAC, from an address of h2's
    # slice of the overlay (what the forger would pretend to be). flags=0x08 (only "VNI
    # valid"): scapy's default also sets a reserved bit, and Linux drops such a header itself,
    # filter or not; the positive control below (the same packet from a member) proves that a
    # forged one would have been delivered without our filter.
    inner_src = b1["ip"].rsplit(".", 1)[0] + ".99"
    forge = ("from scapy.all import IP, UDP, Ether, ICMP, send;"
             "from scapy.layers.vxlan import VXLAN;"
             "import sys; src, vni, ident = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]);"
             f"send(IP(src=src, dst={h1['underlay_ip']!r})/UDP(sport=40000, dport=4789)"
             f"/VXLAN(flags=0x08, vni=vni)/Ether(src={h2['vtep_mac']!r}, dst={h1['vtep_mac']!r})"
             f"/IP(src={inner_src!r}, dst={a1['ip']!r})/ICMP(id=ident), verbose=0)")

    def send(netns: str, src: str, with_vni: int, ident: int) -> None:
        done = subprocess.run(["nsenter", f"--net={netns}", PY, "-c", forge, src, str(with_vni),
                               str(ident)], capture_output=True, text=True, timeout=30,
                              check=False)
        assert done.returncode == 0, done.stderr

    try:
        with capture(a1["netns"], "eth0", f"icmp and src {inner_src}",
                     control=Control(src=inner_src)) as cap:
            send(ul, "192.0.2.250", vni, 1)  # from a non-member underlay address
            send(h2["netns"], h2["underlay_ip"], vni + 1, 2)  # from a member, with a wrong VNI
            # the positive control of the same path: a member on the right VNI is delivered
            send(h2["netns"], h2["underlay_ip"], vni, 3)
            cap.wait_for(f"{inner_src} > ")
            out = cap.stop()
    finally:
        nsexec(ul, "ip", "addr", "del", "192.0.2.250/24", "dev", "ul0")
    seen = re.findall(r"ICMP echo request, id (\d+),", out)
    assert seen == ["3"], out
    counters = nsexec(h1["netns"], "nft", "list", "table", "inet", "sdnctl").stdout
    for what in ("not-member", "wrong-vni"):
        assert re.search(rf"counter packets [1-9]\d* bytes \d+ drop comment \"[^\"]*{what}\"",
                         counters), (what, counters)


def test_zz_down_leaves_nothing(ov: Overlay) -> None:
    pids = [ov.cli.container(n)["pid"] for h in ("h1", "h2", "h3", "h4") for n in PAIRS[h]]
    ov.cli.run("down", str(ov.four))
    assert not any(n.startswith(ov.prefix) for n in os.listdir("/run/netns"))
    with open("/proc/self/mounts") as f:
        assert str(ov.cli.run_dir) not in f.read()
    for pid in pids:
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/stat") as f:
            assert f.read().split(") ")[1][0] in "ZX", f"process {pid} still runs"


@pytest.mark.parametrize("mtu", [1400, 1500, 9000])
def test_mtu_follows_the_underlay(tmp_path: Path, run_prefix: str, mtu: int) -> None:
    path = tmp_path / "mtu.yaml"
    path.write_text(topology_text(("h1", "h2"), mtu))
    with lab_cli(run_prefix) as cli:
        cli.run("up", str(path), "--timeout", "60")
        a1, b1 = (cli.json("inspect", "container", n) for n in ("a1", "b1"))
        overlay_mtu = mtu - 50
        assert f"mtu {overlay_mtu}" in nsexec(a1["netns"], "ip", "link", "show", "eth0").stdout
        fits = ping_out(a1["netns"], b1["ip"], "-M", "do", "-s", str(overlay_mtu - 28))
        assert fits.returncode == 0, fits.stdout + fits.stderr
        too_big = ping_out(a1["netns"], b1["ip"], "-M", "do", "-s", str(overlay_mtu - 27))
        assert too_big.returncode != 0
        assert "message too long" in (too_big.stdout + too_big.stderr).lower()
        # a 2000-byte UDP datagram (fragmented inside the overlay) and a 50 MiB TCP stream
        code = ("import socket; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                f"s.settimeout(3); s.sendto(b'x'*2000, ({b1['ip']!r}, 7001));"
                "print(s.recv(100).decode())")
        assert nsexec(a1["netns"], PY, "-c", code).stdout.startswith("peer=")
        assert bulk_transfer(a1["netns"], b1["netns"], b1["ip"], 50 << 20)
        cli.run("down", str(path))


def bulk_transfer(client_ns: str, server_ns: str, server_ip: str, size: int) -> bool:
    """Send ``size`` bytes over TCP; the server answers with how many it got."""
    server = subprocess.Popen(["nsenter", f"--net={server_ns}", PY, "-c", (
        "import socket; s=socket.create_server(('0.0.0.0', 7100)); print('listening', flush=True)\n"
        "c,_=s.accept(); n=0\n"
        "while (b := c.recv(1 << 20)): n += len(b)\n"
        "print(n)")], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        client = nsexec(client_ns, PY, "-c", (
            f"import socket; c=socket.create_connection(({server_ip!r}, 7100), timeout=10);"
            f"chunk=b'x'*(1 << 20)\nfor _ in range({size >> 20}): c.sendall(chunk)\n"
            "c.close()"), timeout=60)
        assert client.returncode == 0, client.stderr
        out, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return out.strip() == str(size)


def test_overlay_over_a_routed_underlay(tmp_path: Path, run_prefix: str) -> None:
    """Hosts on two underlay subnets joined by a router: VXLAN is plain routed UDP to them."""
    text = topology_text(("h1", "h2")).replace("lab: {underlay_mtu: 1500}",
                                               "lab: {underlay_mtu: 1500, routed: true}")
    path = tmp_path / "routed.yaml"
    path.write_text(text)
    with lab_cli(run_prefix) as cli:
        cli.run("up", str(path), "--timeout", "60")
        h1, h2 = (cli.json("inspect", "host", h) for h in ("h1", "h2"))
        assert h1["underlay_ip"].rsplit(".", 1)[0] != h2["underlay_ip"].rsplit(".", 1)[0]
        a1, b1 = (cli.json("inspect", "container", n) for n in ("a1", "b1"))
        done = ping_out(a1["netns"], b1["ip"])
        assert done.returncode == 0, done.stdout
        assert "ttl=62" in done.stdout  # the underlay router does not touch the inner packet
        assert ask(a1["netns"], b1["ip"], 7000).startswith(f"peer={a1['ip']}:")
        cli.run("down", str(path))
