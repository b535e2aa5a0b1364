"""Dual-stack containers (issue 20), end to end with real packets.

One topology is brought up once for the module through the real CLI: two lab hosts, two
dual-stack bridge networks on the first, containers on both, one of which binds its fixed IPv6
address as the first thing it does, and a dual-stack overlay with a container on each host.
Each test proves one behaviour: the addresses and routes in each family, no router
advertisements taken, IPv6 forwarding only in the host's namespace, ping -6 within a network
and isolation between networks, the IPv6 guards (a spoofed source, a forged router
advertisement and a forged neighbour advertisement dropped and counted, each after a positive
control proved the probe gets through), and IPv6 across the overlay over the IPv4 underlay with
one route, one permanent neighbour and one FDB entry per peer. IPv6-only networks (a bridge and
an overlay with ``subnet6`` alone) are in the same topology: no IPv4 anywhere, their DNS, ports,
guards, check and trace; a port on ``[::1]`` served by the agent's proxy; and the IPv6 hairpin
(a container reaching a port published on the host's IPv6 address from the same bridge).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.capture import capture
from helpers.cli import Cli, lab_cli, nsexec

from agent.kernel.sysctl import read_sysctl
from agent.names import bridge_name, container_mac, link_local, vxlan_name

pytestmark = pytest.mark.netns

PY = sys.executable
BOUND = "fd00:96::99"
# Binds its fixed IPv6 address at once: with duplicate address detection the address would
# still be tentative (EADDRNOTAVAIL) and the container would exit.
BIND = ("import socket; s = socket.socket(socket.AF_INET6); "
        f"s.bind(({BOUND!r}, 7000)); s.listen(); "
        "[s.accept()[0].sendall(b'bound-at-once') for _ in iter(int, 1)]")

# Answers each connection with the address it came from, over IPv6 and IPv4 (mapped) alike.
SERVE = ("import socket; s = socket.socket(socket.AF_INET6); "
         "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); s.bind(('::', 7000)); "
         "s.listen(); [(lambda c: (c[0].sendall(('peer=' + c[1][0]).encode()), c[0].close()))"
         "(s.accept()) for _ in iter(int, 1)]")

# Echoes each datagram back, prefixed, on UDP 7001.
ECHO = ("import socket; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); "
        "s.bind(('::', 7001)); [s.sendto(b'echo ' + d, a) for d, a in iter(lambda: "
        "s.recvfrom(100), None)]")

TOPOLOGY = f"""
name: dual
hosts:
  - {{name: h1, lab: true}}
  - {{name: h2, lab: true}}
networks:
  - {{name: front, subnet: 10.96.0.0/24, subnet6: "fd00:96::/48"}}
  - {{name: back, subnet: 10.97.0.0/24, subnet6: "fd00:97::/48"}}
  - {{name: ov, driver: overlay, subnet: 10.98.0.0/16, subnet6: "fd00:98::/48"}}
  - {{name: locked, subnet: 10.99.0.0/24, subnet6: "fd00:99::/48", default: deny}}
  - {{name: nat6, subnet: 10.94.0.0/24, subnet6: "fd00:94::/48", masquerade6: true}}
  - {{name: only6, subnet6: "fd00:93::/48"}}
  - {{name: ov6, driver: overlay, subnet6: "fd00:92::/48"}}
containers:
  - {{name: a, host: h1, network: front}}
  - {{name: b, host: h1, network: front}}
  - {{name: binder, host: h1, network: front, ip6: "{BOUND}", command: [{PY}, -c, "{BIND}"]}}
  - {{name: other, host: h1, network: back}}
  - {{name: side, host: h1, network: "container:a"}}
  - {{name: vault, host: h1, network: none}}
  - {{name: p, host: h1, network: locked}}
  - {{name: web6, host: h1, network: front, ports: ["8080:7000", "[::]:8082:7000",
     "[fd00:97::1]:8083:7000", "[::1]:8085:7000"], command: [{PY}, -c, "{SERVE}"]}}
  - {{name: echo6, host: h1, network: front, ports: ["[::1]:8086:7001/udp"],
     command: [{PY}, -c, "{ECHO}"]}}
  - {{name: q, host: h1, network: locked}}
  - {{name: n6, host: h1, network: nat6}}
  - {{name: x, host: h1, network: ov}}
  - {{name: y, host: h2, network: ov}}
  - {{name: s1, host: h1, network: only6, ports: ["[::]:8084:7000"], command: [{PY}, -c,
     "{SERVE}"]}}
  - {{name: s2, host: h1, network: only6}}
  - {{name: u, host: h1, network: ov6}}
  - {{name: w, host: h2, network: ov6}}
"""


class Dual:
    def __init__(self, cli: Cli, prefix: str, root_forwarding: str) -> None:
        self.cli, self.prefix, self.root_forwarding = cli, prefix, root_forwarding
        self.ctr = {name: cli.container(name)
                    for name in ("a", "b", "binder", "other", "x", "y", "side", "vault", "p", "q",
                                 "web6", "n6", "s1", "s2", "u", "w")}
        self.host_netns = cli.host("h1")["netns"]
        self.host2_netns = cli.host("h2")["netns"]


@pytest.fixture(scope="module")
def dual(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dual]:
    prefix = "v6" + secrets.token_hex(3)[:4]
    tmp = tmp_path_factory.mktemp("dual")
    path = tmp / "dual.yaml"
    path.write_text(TOPOLOGY)
    root_forwarding = read_sysctl("net.ipv6.conf.all.forwarding")
    with lab_cli(prefix) as cli:
        cli.run("up", str(path), "--timeout", "60")
        yield Dual(cli, prefix, root_forwarding)


def in_ctr(ctr: dict[str, Any], *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", "-t", str(ctr["pid"]), "-n", *argv], capture_output=True,
                          text=True, timeout=timeout, check=False)


def ping6(ctr: dict[str, Any], address: str) -> bool:
    return in_ctr(ctr, "ping", "-6", "-n", "-q", "-c", "1", "-W", "2", address).returncode == 0


def test_addresses_routes_and_no_router_advertisements(dual: Dual) -> None:
    a = dual.ctr["a"]
    assert a["state"] == "running"
    assert a["ip6"].startswith("fd00:96::") and a["prefixlen6"] == 64
    assert a["gateway6"] == "fd00:96::1" and a["gateway"] == "10.96.0.1"
    addr = in_ctr(a, "ip", "-6", "-o", "addr", "show", "dev", "eth0").stdout
    assert f"{a['ip6']}/64" in addr and "tentative" not in addr, addr
    assert "via fd00:96::1" in in_ctr(a, "ip", "-6", "route", "show", "default").stdout
    assert "via 10.96.0.1" in in_ctr(a, "ip", "-4", "route", "show", "default").stdout
    for key in ("accept_ra", "autoconf", "accept_dad"):
        got = in_ctr(a, "cat", f"/proc/sys/net/ipv6/conf/eth0/{key}").stdout.strip()
        assert got == "0", f"{key} of the container's eth0 is {got}"
    host = dual.host_netns
    bridge = bridge_name("front")
    shown = nsexec(host, "ip", "-6", "-o", "addr", "show", "dev", bridge).stdout
    assert "fd00:96::1/64" in shown and "tentative" not in shown, shown
    values = nsexec(host, "cat", "/proc/sys/net/ipv6/conf/all/forwarding",
                    f"/proc/sys/net/ipv6/conf/{bridge}/accept_ra").stdout.split()
    assert values == ["1", "0"], values  # the host's namespace routes IPv6; its bridge takes no RA
    # never in the root namespace (this test runs there)
    assert read_sysctl("net.ipv6.conf.all.forwarding") == dual.root_forwarding


def test_joined_has_its_donors_ipv6_and_closed_has_only_loopback(dual: Dual) -> None:
    a, side, vault = dual.ctr["a"], dual.ctr["side"], dual.ctr["vault"]
    assert a["ip6"] in in_ctr(side, "ip", "-6", "-o", "addr", "show", "dev", "eth0").stdout
    assert ping6(side, dual.ctr["b"]["ip6"])
    shown = in_ctr(vault, "ip", "-6", "-o", "addr").stdout.splitlines()
    assert [line.split()[1] for line in shown] == ["lo"], shown
    assert in_ctr(vault, "cat", "/proc/sys/net/ipv6/conf/default/accept_ra").stdout.strip() == "0"


def test_a_container_binds_its_ipv6_address_at_once(dual: Dual) -> None:
    binder = dual.ctr["binder"]
    assert binder["state"] == "running" and binder["ip6"] == BOUND
    code = (f"import socket; s = socket.create_connection(({BOUND!r}, 7000), timeout=5); "
            "print(s.recv(100).decode())")
    done = in_ctr(dual.ctr["a"], PY, "-c", code)
    assert done.stdout.strip() == "bound-at-once", done.stderr


def test_ping6_within_a_network_and_isolation_between_networks(dual: Dual) -> None:
    a, b, other = dual.ctr["a"], dual.ctr["b"], dual.ctr["other"]
    assert ping6(a, b["ip6"]) and ping6(b, a["ip6"])
    assert ping6(a, "fd00:96::1")  # the gateway
    assert ping6(other, other["gateway6"])  # other's side works: the probe can succeed
    assert not ping6(a, other["ip6"])
    assert not ping6(other, a["ip6"])


def test_the_networks_resolver_answers_aaaa(dual: Dual) -> None:
    a, b = dual.ctr["a"], dual.ctr["b"]
    ask = ["dig", "+short", "+time=2", "+tries=2", f"@{a['gateway']}", "b"]
    assert in_ctr(a, *ask, "A").stdout.split() == [b["ip"]]  # the resolver answers at all
    assert in_ctr(a, *ask, "AAAA").stdout.split() == [b["ip6"]]


SEND = """
import sys
from scapy.all import Ether, IPv6, ICMPv6EchoRequest, ICMPv6ND_RA, ICMPv6ND_NA, sendp
me, my_mac, my_ll, peer, peer_mac, gateway = sys.argv[1:7]
def out(dst_mac, packet):
    sendp(Ether(src=my_mac, dst=dst_mac) / packet, iface="eth0", verbose=0)
out(peer_mac, IPv6(src="fd00:96::77", dst=peer) / ICMPv6EchoRequest(id=4241))
out("33:33:00:00:00:01", IPv6(src=my_ll, dst="ff02::1") / ICMPv6ND_RA())
out(peer_mac, IPv6(src=my_ll, dst=peer) / ICMPv6ND_NA(tgt=gateway, R=0, S=0, O=1))
# the honest ones, after: an echo from its own address, an advertisement of itself
out(peer_mac, IPv6(src=me, dst=peer) / ICMPv6EchoRequest(id=4242))
out(peer_mac, IPv6(src=me, dst=peer) / ICMPv6ND_NA(tgt=me, R=0, S=0, O=1))
"""


def _drops(host_netns: str, guard: str) -> int:
    rules = nsexec(host_netns, "nft", "list", "chain", "bridge", "sdnctl", "prerouting").stdout
    return sum(int(line.split("packets ")[1].split()[0]) for line in rules.splitlines()
               if f'{guard}"' in line and "packets " in line)


def test_spoofed_source_forged_ra_and_forged_na_are_dropped_and_counted(dual: Dual) -> None:
    a, b = dual.ctr["a"], dual.ctr["b"]
    a_mac, b_mac = container_mac(a["ip"]), container_mac(b["ip"])
    before = {g: _drops(dual.host_netns, g) for g in ("spoof-ip6", "router-advert", "spoof-na")}
    with capture(f"/proc/{b['pid']}/ns/net", "eth0", "icmp6 or icmp") as cap:
        done = in_ctr(a, PY, "-c", SEND, a["ip6"], a_mac, link_local(a_mac), b["ip6"], b_mac,
                      a["gateway6"], timeout=60)
        assert done.returncode == 0, done.stderr
        cap.wait_for("echo request, id 4242")  # positive controls, sent last, arrived
        cap.wait_for(f"neighbor advertisement, tgt is {a['ip6']}")
        seen = cap.stop()
    assert "id 4241" not in seen, f"a spoofed source reached the peer:\n{seen}"
    assert "router advertisement" not in seen, f"a router advertisement reached the peer:\n{seen}"
    assert f"tgt is {a['gateway6']}," not in seen, f"a forged advertisement got through:\n{seen}"
    after = {g: _drops(dual.host_netns, g) for g in before}
    assert all(after[g] > before[g] for g in before), (before, after)
    # the peer still reaches the gateway (its neighbour entry was not poisoned)
    assert ping6(b, b["gateway6"])


def test_the_overlay_carries_ipv6_with_one_route_neighbour_and_fdb_entry_per_peer(
        dual: Dual) -> None:
    x, y = dual.ctr["x"], dual.ctr["y"]
    assert x["ip6"].startswith("fd00:98:") and y["ip6"].startswith("fd00:98:")
    assert x["ip6"].split("::")[0] != y["ip6"].split("::")[0]  # a /64 per host
    assert ping6(x, y["ip6"]) and ping6(y, x["ip6"])
    device = vxlan_name("ov")
    y_lease = y["ip6"].rsplit(":", 1)[0] + ":/64"  # e.g. fd00:98:0:1::2 -> fd00:98:0:1::/64
    routes = nsexec(dual.host_netns, "ip", "-6", "route", "show", "dev", device,
                    "proto", "211").stdout.splitlines()
    assert len(routes) == 1 and routes[0].startswith(f"{y_lease} via {y_lease[:-3]} "), routes
    assert " onlink " in routes[0], routes
    neigh = nsexec(dual.host_netns, "ip", "-6", "neigh", "show", "dev", device,
                   "nud", "permanent").stdout.splitlines()
    assert len(neigh) == 1 and neigh[0].startswith(f"{y_lease[:-3]} lladdr "), neigh
    fdb = [line for line in nsexec(dual.host_netns, "bridge", "fdb", "show", "dev",
                                   device).stdout.splitlines() if " dst " in line]
    assert len(fdb) == 1, fdb  # one per peer, shared by both families


def test_ipv6_does_not_bypass_a_policy_that_isolates_a_container(dual: Dual) -> None:
    """IPv6 is evaluated by the policies as IPv4 is (issue 22): p is isolated for ingress by
    its network's default deny, and the drop is counted under that policy."""
    p, q = dual.ctr["p"], dual.ctr["q"]

    def dropped() -> int:
        listed = nsexec(dual.host_netns, "nft", "list", "table", "inet", "sdnctl_policy").stdout
        return sum(int(line.split("packets ")[1].split()[0]) for line in listed.splitlines()
                   if '"sdnctl:policy/default/locked/ingress/drop"' in line and "ip6 " in line)

    before = dropped()
    assert ping6(q, q["gateway6"]) and ping6(p, p["gateway6"])  # both have working IPv6
    assert not ping6(q, p["ip6"])  # p is isolated for ingress (default: deny)
    assert dropped() > before


def _ask(argv: list[str], address: str, port: int) -> str:
    code = (f"import socket; s = socket.create_connection(({address!r}, {port}), timeout=5); "
            "print(s.recv(100).decode())")
    done = subprocess.run([*argv, PY, "-c", code], capture_output=True, text=True, timeout=30,
                          check=False)
    return done.stdout.strip()


def test_a_port_published_on_every_address_is_published_on_ipv6_too(dual: Dual) -> None:
    other = dual.ctr["other"]
    in_other = ["nsenter", "-t", str(other["pid"]), "-n"]
    # IPv4 first (the probe works), then IPv6: DNAT'd from another network, source kept
    assert _ask(in_other, other["gateway"], 8080) == f"peer=::ffff:{other['ip']}"
    assert _ask(in_other, other["gateway6"], 8080) == f"peer={other['ip6']}"
    # from the host itself (the output chain), to one of its IPv6 addresses
    assert _ask(["nsenter", f"--net={dual.host_netns}"], "fd00:96::1", 8080).startswith("peer=")


# A part of the module's topology (same name): check probes only the containers a file names.
CHECKED = """
name: dual
hosts:
  - {name: h1, lab: true}
networks:
  - {name: front, subnet: 10.96.0.0/24, subnet6: "fd00:96::/48"}
  - {name: back, subnet: 10.97.0.0/24, subnet6: "fd00:97::/48"}
  - {name: nat6, subnet: 10.94.0.0/24, subnet6: "fd00:94::/48", masquerade6: true}
containers:
  - {name: a, host: h1, network: front}
  - {name: b, host: h1, network: front}
  - {name: other, host: h1, network: back}
  - {name: n6, host: h1, network: nat6}
"""


def _cells(report: dict[str, Any], family: int) -> dict[tuple[str, str], bool]:
    return {(p["from"], p["to"]): p["match"] for p in report["probes"]
            if p["proto"] == "icmp" and p["family"] == family}


def test_check_finds_a_broken_ipv6_route_while_ipv4_still_works(
        dual: Dual, tmp_path: Any) -> None:
    path = tmp_path / "checked.yaml"
    path.write_text(CHECKED)
    a, b = dual.ctr["a"], dual.ctr["b"]
    # positive control: both families pass, the IPv6 matrix is drawn
    done = dual.cli.run("check", str(path), "--timeout", "1", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    six = done.stdout.split("\nicmp6 ")[1].split("\n\n")[0]  # the IPv6 matrix, all as expected
    assert six.split("\n")[0].split() == ["a", "b", "other", "n6", "external"], done.stdout
    assert six.split("\n")[4].split()[:6] == ["n6", "✗", "✗", "✗", "·", "✓"], done.stdout
    assert "≠" not in six, done.stdout
    # break a's IPv6 route to b only (IPv4 and the rest of IPv6 untouched)
    broken = ["ip", "-6", "route", "add", "unreachable", f"{b['ip6']}/128"]
    assert in_ctr(a, *broken).returncode == 0
    try:
        done = dual.cli.run("check", str(path), "--json", "--timeout", "1", check=False)
    finally:
        in_ctr(a, "ip", "-6", "route", "del", "unreachable", f"{b['ip6']}/128")
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    v4, v6 = _cells(report, 4), _cells(report, 6)
    assert all(v4.values()), v4  # IPv4 still passes everywhere
    assert not v6[("a", "b")] and not v6[("b", "a")]  # the reply has no route either
    assert v6[("a", "other")] is True and v6[("b", "other")] is True  # isolated, as expected
    assert v6[("a", "external")] is True  # routed IPv6: no answer from outside, as expected
    assert [p["address"] for p in report["probes"] if (p["from"], p["to"], p["family"]) ==
            ("a", "b", 6)] == [b["ip6"]]


def _trace(dual: Dual, *args: str) -> dict[str, Any]:
    done = dual.cli.run("trace", *args, "-6", "--json", check=False, timeout=60)
    assert done.returncode in (0, 1) and not done.stderr.strip(), done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def test_trace_follows_an_ipv6_probe_and_names_where_it_dies(dual: Dual) -> None:
    a, b, x, y = (dual.ctr[n] for n in ("a", "b", "x", "y"))
    # within a network: every hop seen, the echo answered, between the IPv6 addresses
    within = _trace(dual, "a", "b")
    assert within["reached"], json.dumps(within, indent=1)
    assert (within["probe"]["src"], within["probe"]["dst"]) == (a["ip6"], b["ip6"])
    assert [h["status"] for h in within["hops"]] == ["ok"] * len(within["hops"])
    # across the overlay: the capture inside VXLAN matched the inner IPv6 header, on both hosts
    across = _trace(dual, "x", "y", "--port", "9")  # TCP: refused, but it got there
    assert across["reached"] and across["probe"]["dst"] == y["ip6"], across["hops"]
    kinds = {h["kind"]: h for h in across["hops"]}
    assert kinds["vxlan"]["status"] == "ok" and kinds["underlay"]["status"] == "ok", kinds
    assert x["ip6"] != y["ip6"]
    # to the outside world over IPv6, masqueraded (NAT66): seen leaving with the host's address
    out = _trace(dual, "n6", "2001:db8:0:ff::1")
    assert out["reached"], json.dumps(out["hops"], indent=1)
    assert [h["kind"] for h in out["hops"]][-2:] == ["underlay", "destination"]
    # between isolated networks: it dies in the host's forward chain
    isolated = _trace(dual, "a", dual.ctr["other"]["ip6"])
    assert not isolated["reached"]
    assert isolated["died_at"]["kind"] == "nftables", isolated["hops"]
    assert "drop" in isolated["died_at"]["detail"], isolated["died_at"]


def _refused(argv: list[str], address: str, port: int) -> bool:
    code = (f"import socket; socket.create_connection(({address!r}, {port}), timeout=5)")
    done = subprocess.run([*argv, PY, "-c", code], capture_output=True, text=True, timeout=30,
                          check=False)
    return "ConnectionRefusedError" in done.stderr


def test_ports_published_on_explicit_ipv6_host_addresses(dual: Dual) -> None:
    other = dual.ctr["other"]
    in_other = ["nsenter", "-t", str(other["pid"]), "-n"]
    in_host = ["nsenter", f"--net={dual.host_netns}"]
    # [::]:8082: every IPv6 address of the host, from another network, the client's address kept
    assert _ask(in_other, other["gateway6"], 8082) == f"peer={other['ip6']}"
    assert _ask(in_host, "fd00:96::1", 8082).startswith("peer=")
    assert _refused(in_other, other["gateway"], 8082)  # not IPv4 (8080 is: test above)
    assert _refused(in_host, "::1", 8082)  # nor ::1
    # [fd00:97::1]:8083: that address only (back's gateway), not front's
    assert _ask(in_other, other["gateway6"], 8083) == f"peer={other['ip6']}"
    assert _refused(in_other, "fd00:96::1", 8083)


def _host6(host_netns: str) -> str:
    """The lab host's global IPv6 address on its underlay device."""
    return nsexec(host_netns, "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope",
                  "global").stdout.split()[3].split("/")[0]


def test_ipv6_hairpin_through_the_hosts_address(dual: Dual) -> None:
    """A container reaches a port published on the host's IPv6 addresses from the same bridge,
    through the host's address: the connection is masqueraded to the bridge's IPv6 gateway, so
    the answer comes back through the host (without it the server would answer the client
    directly, from an address the client never called). Only that connection: routed IPv6
    keeps its source, within the bridge and from another network."""
    b, other, web6, s1, s2 = (dual.ctr[n] for n in ("b", "other", "web6", "s1", "s2"))
    host6 = _host6(dual.host_netns)
    in_b, in_s2 = (["nsenter", "-t", str(c["pid"]), "-n"] for c in (b, s2))
    in_other = ["nsenter", "-t", str(other["pid"]), "-n"]
    # positive controls: the server answers b directly, and the port on the host's address
    # answers from another network (DNAT'd, the client's own address kept)
    assert _ask(in_b, web6["ip6"], 7000) == f"peer={b['ip6']}"
    assert _ask(in_other, host6, 8082) == f"peer={other['ip6']}"
    # hairpin, dual-stack: [::]:8082 and 8080 (every address, so IPv6 too), and through the
    # bridge's own gateway address as well
    for address, port in ((host6, 8082), (host6, 8080), (b["gateway6"], 8082)):
        assert _ask(in_b, address, port) == f"peer={b['gateway6']}", (address, port)
    # hairpin, IPv6-only: s2 to s1's [::]:8084 through the host
    assert _ask(in_s2, s1["ip6"], 7000) == f"peer={s2['ip6']}"
    assert _ask(in_s2, host6, 8084) == f"peer={s2['gateway6']}"
    # nothing else of IPv6 is masqueraded: after the hairpins, the same paths keep the source
    assert _ask(in_b, web6["ip6"], 7000) == f"peer={b['ip6']}"
    assert _ask(in_other, host6, 8082) == f"peer={other['ip6']}"


# The outside world's listener: prints "ready" once bound, then the source of each datagram.
LISTEN = ("import socket, sys; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); "
          "s.bind(('::', 9999)); s.settimeout(10); print('ready', flush=True); "
          "[print(s.recvfrom(100)[1][0], flush=True) for _ in range(2)]")
OUTSIDE6 = "2001:db8:0:ff::1"


def test_ipv6_egress_is_routed_unless_the_network_says_masquerade6(dual: Dual) -> None:
    a, n6 = dual.ctr["a"], dual.ctr["n6"]
    listener = subprocess.Popen(["nsenter", f"--net=/run/netns/{dual.prefix}ext", PY, "-c",
                                 LISTEN], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        send = ("import socket; socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)"
                f".sendto(b'x', ({OUTSIDE6!r}, 9999))")
        for ctr in (a, n6):
            assert in_ctr(ctr, PY, "-c", send).returncode == 0
        out, err = listener.communicate(timeout=20)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    sources = out.split()
    # front: routed; nat6: masqueraded
    assert sources == [a["ip6"], _host6(dual.host_netns)], (sources, err)


IPV4_FROM = """
import sys
from scapy.all import Ether, IP, ICMP, sendp
sendp(Ether(src=sys.argv[1], dst=sys.argv[2]) / IP(src="10.93.0.9", dst="10.93.0.1") / ICMP(),
      iface="eth0", verbose=0)
"""


def test_an_ipv6_only_network_has_ipv6_only_and_works(dual: Dual) -> None:
    s1, s2, a, other = (dual.ctr[n] for n in ("s1", "s2", "a", "other"))
    assert (s1["ip"], s1["gateway"], s1["gateway6"]) == ("", "", "fd00:93::1")
    assert s1["ip6"].startswith("fd00:93::") and s1["prefixlen6"] == 64
    assert in_ctr(s1, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout == ""
    assert in_ctr(s1, "ip", "-4", "route").stdout == ""
    assert "via fd00:93::1" in in_ctr(s1, "ip", "-6", "route", "show", "default").stdout
    bridge = bridge_name("only6")
    assert nsexec(dual.host_netns, "ip", "-4", "-o", "addr", "show", "dev", bridge).stdout == ""
    row = next(line for line in dual.cli.run("ps").stdout.splitlines() if line.startswith("s1 "))
    assert s1["ip6"] in row.split(), row  # ps shows its IPv6 address
    assert ping6(s1, s2["ip6"]) and ping6(s2, s1["ip6"])
    # DNS on the IPv6 gateway: AAAA, no A (the name exists: NODATA), PTR in ip6.arpa
    with open(f"/proc/{s1['pid']}/root/etc/resolv.conf") as f:  # its own mount namespace's
        resolv = f.read()
    assert "nameserver fd00:93::1" in resolv, resolv
    ask = ["dig", "+short", "+time=2", "+tries=2", "@fd00:93::1"]
    assert in_ctr(s1, *ask, "s2", "AAAA").stdout.split() == [s2["ip6"]]
    assert in_ctr(s1, *ask, "-x", s2["ip6"]).stdout.split() == ["s2."]
    status = in_ctr(s1, "dig", "+time=2", "+tries=2", "@fd00:93::1", "s2", "A").stdout
    assert "status: NOERROR" in status and "ANSWER: 0" in status, status
    # isolated from another network (after the positive control above)
    assert not ping6(s1, a["ip6"])
    # a port on [::] reaches it from another network, the client's address kept; not IPv4
    in_other = ["nsenter", "-t", str(other["pid"]), "-n"]
    assert _ask(in_other, other["gateway6"], 8084) == f"peer={other['ip6']}"
    assert _refused(in_other, other["gateway"], 8084)
    # it sends no IPv4 at all: dropped and counted by its guard
    before = _drops(dual.host_netns, "spoof-ip")
    done = in_ctr(s1, PY, "-c", IPV4_FROM, container_mac(s1["ip6"]), "ff:ff:ff:ff:ff:ff")
    assert done.returncode == 0, done.stderr
    assert _drops(dual.host_netns, "spoof-ip") > before


def test_an_ipv6_only_overlay_crosses_hosts(dual: Dual) -> None:
    u, w = dual.ctr["u"], dual.ctr["w"]
    assert u["ip"] == "" and w["ip"] == "" and u["ip6"].split("::")[0] != w["ip6"].split("::")[0]
    assert ping6(u, w["ip6"]) and ping6(w, u["ip6"])
    device = vxlan_name("ov6")
    assert nsexec(dual.host_netns, "ip", "-4", "-o", "addr", "show", "dev", device).stdout == ""
    assert nsexec(dual.host_netns, "ip", "-4", "route", "show", "dev", device).stdout == ""
    routes = nsexec(dual.host_netns, "ip", "-6", "route", "show", "dev", device,
                    "proto", "211").stdout.splitlines()
    assert len(routes) == 1 and routes[0].startswith(w["ip6"].rsplit(":", 1)[0]), routes


CHECKED6 = """
name: dual
hosts:
  - {name: h1, lab: true}
networks:
  - {name: front, subnet: 10.96.0.0/24, subnet6: "fd00:96::/48"}
  - {name: only6, subnet6: "fd00:93::/48"}
containers:
  - {name: a, host: h1, network: front}
  - {name: s1, host: h1, network: only6}
  - {name: s2, host: h1, network: only6}
expect:
  - {from: s1, to: s2, proto: tcp, port: 7000, reach: false}
"""


def test_check_and_trace_probe_an_ipv6_only_network_over_ipv6(
        dual: Dual, tmp_path: Any) -> None:
    path = tmp_path / "checked6.yaml"
    path.write_text(CHECKED6)
    done = dual.cli.run("check", str(path), "--json", "--timeout", "1", check=False)
    report = json.loads(done.stdout)
    probes = [(p["from"], p["to"], p["proto"], p["family"], p["match"])
              for p in report["probes"]]
    assert ("s1", "s2", "icmp", 6, True) in probes and ("a", "s1", "icmp", 6, True) in probes
    assert ("s1", "external", "icmp", 6, True) in probes  # routed: nothing outside answers
    # written wrong on purpose: s2 has no listener, so the IPv6 probe is refused, not filtered
    assert ("s1", "s2", "tcp", 6, False) in probes, probes
    assert not [p for p in probes if p[3] == 4 and {"s1", "s2"} & {p[0], p[1]}], probes
    assert done.returncode == 1, done.stdout + done.stderr
    s1, s2 = dual.ctr["s1"], dual.ctr["s2"]
    traced = dual.cli.run("trace", "s1", "s2", "--json", check=False, timeout=60)  # -6 implied
    data = json.loads(traced.stdout)
    assert data["reached"] and (data["probe"]["src"], data["probe"]["dst"]) == (s1["ip6"],
                                                                                s2["ip6"])


def _listens(host_netns: str, proto: str, port: int) -> bool:
    flag = "-Hltn" if proto == "tcp" else "-Hlun"
    return bool(nsexec(host_netns, "ss", flag, f"sport = :{port}").stdout.strip())


def test_ports_on_loopback6_go_through_the_agents_proxy_and_go_with_the_container(
        dual: Dual) -> None:
    in_host = ["nsenter", f"--net={dual.host_netns}"]
    # TCP from a real client in the host's namespace to [::1]: relayed, from the bridge's side
    assert _ask(in_host, "::1", 8085) == "peer=fd00:96::1"
    assert _refused(in_host, "::1", 8087)  # an unpublished port: nothing listens
    code = ("import socket; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); "
            "s.settimeout(5); s.sendto(b'hi', ('::1', 8086)); print(s.recv(100).decode())")
    done = subprocess.run([*in_host, PY, "-c", code], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.stdout.strip() == "echo hi", done.stderr
    # the container goes: its proxy port closes (the agent acts on the change it is sent)
    assert _listens(dual.host_netns, "udp", 8086)
    dual.cli.run("rm", "echo6")
    deadline = time.monotonic() + 60
    while _listens(dual.host_netns, "udp", 8086):
        assert time.monotonic() < deadline, "the proxy of a removed container still listens"
        time.sleep(0.2)
    assert _listens(dual.host_netns, "tcp", 8085)  # another container's stays


def test_zz_down_leaves_nothing(dual: Dual) -> None:
    dual.cli.run("down", str(next(iter(dual.cli.files.values()))))
    assert not any(n.startswith(dual.prefix) for n in os.listdir("/run/netns"))
