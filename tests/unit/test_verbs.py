"""The everyday verbs and `trace`, without root: argument parsing, the messages the verbs send,
the pure parts of trace (its path, its reading of nft traces and captures, its output), and the
network/host verbs against a real controller on a unix socket (apitest's fixtures)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import types
from typing import Any

import pytest
from apitest import Api
from scapy.layers.inet import ICMP as ICMP_ECHO
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from agent.runtime import OciRuntime
from sdnctl.api import wire
from sdnctl.api.client import POLL_FIRST, POLL_MAX, CommandError, poll_delays
from sdnctl.cli import cli, verbs
from sdnctl.controller.server import RunningServer
from sdnctl.lab import local, trace
from sdnctl.v1 import sdnctl_pb2 as pb


def parse(*argv: str) -> Any:
    return cli.build_parser().parse_args(list(argv))


# -- parsing and the messages sent -----------------------------------------------------------


def test_network_create_sends_every_option() -> None:
    args = parse("network", "create", "back", "--subnet", "10.91.0.0/24", "--gateway",
                 "10.91.0.254", "--ip-range", "10.91.0.128/25", "--internal", "--no-masquerade",
                 "--mtu", "1400", "--allow", "front", "--allow", "mid")
    net = verbs.network_from_args(args)
    assert (net.name, net.driver, net.subnet, net.gateway, net.ip_range) == \
        ("back", "bridge", "10.91.0.0/24", "10.91.0.254", "10.91.0.128/25")
    assert net.internal and net.HasField("masquerade") and not net.masquerade
    assert (net.mtu, list(net.allow)) == (1400, ["front", "mid"])
    overlay = verbs.network_from_args(parse("network", "create", "ov", "--subnet",
                                            "10.70.0.0/16", "--driver", "overlay"))
    assert overlay.driver == "overlay" and overlay.masquerade and overlay.vni == 0


def test_network_create_needs_a_subnet_and_a_known_driver() -> None:
    with pytest.raises(CommandError, match="--subnet, --subnet6 or both"):
        verbs.network_from_args(parse("network", "create", "x"))
    only6 = verbs.network_from_args(parse("network", "create", "x", "--subnet6", "fd00:5::/48"))
    assert (only6.subnet, only6.subnet6) == ("", "fd00:5::/48")  # IPv6-only (issue 20)
    with pytest.raises(SystemExit):
        parse("network", "create", "x", "--subnet", "10.0.0.0/8", "--driver", "macvlan")


@pytest.mark.parametrize("argv", [
    ["run", "--name", "web", "--host", "h1", "--", "sh", "-c", "echo hi"],
    ["run", "--name", "web", "--host", "h1", "sh", "-c", "echo hi"],
])
def test_run_takes_the_command_with_or_without_double_dash(argv: list[str]) -> None:
    msg = verbs.container_from_args(parse(*argv))
    assert list(msg.command) == ["sh", "-c", "echo hi"]
    assert (msg.name, msg.host, msg.network, msg.restart) == ("web", "h1", "", "no")


def test_run_options() -> None:
    msg = verbs.container_from_args(parse(
        "run", "--name", "web", "--host", "h1", "--network", "front", "-p", "8080:80",
        "-p", "127.0.0.1:5353:53/udp", "--restart", "always", "--ip", "10.88.0.9"))
    assert list(msg.ports) == ["8080:80", "127.0.0.1:5353:53/udp"]
    assert (msg.network, msg.restart, msg.fixed_ip, list(msg.command)) == \
        ("front", "always", "10.88.0.9", [])
    with pytest.raises(SystemExit):
        parse("run", "--name", "web", "--host", "h1", "--restart", "sometimes")
    assert msg.user_ns == pb.USERNS_AUTO  # the default: the host decides
    for word, number in (("host", pb.USERNS_HOST), ("private", pb.USERNS_PRIVATE)):
        asked = parse("run", "--name", "web", "--host", "h1", "--userns", word)
        assert verbs.container_from_args(asked).user_ns == number


def test_exec_keeps_the_command_s_own_options() -> None:
    assert parse("exec", "web", "ls", "-l", "/").cmd == ["ls", "-l", "/"]
    argv = OciRuntime("crun", "/run/x/runtime", create=False).exec_argv("web", ["ls", "-l"])
    assert argv[-7:] == ["crun", "--root", "/run/x/runtime", "exec", "web", "ls", "-l"]
    assert argv[:4] == ["unshare", "--mount", "--propagation", "private"]


def test_connect_moves_and_disconnect_goes_to_none() -> None:
    have = pb.Container(name="web", host="h1", network="front", fixed_ip="10.88.0.9",
                        ports=["8080:80"], command=["sleep", "9"], restart="always")
    moved = verbs.reattach(have, "back")
    assert (moved.network, moved.fixed_ip, list(moved.ports)) == ("back", "", ["8080:80"])
    assert (list(moved.command), moved.restart) == (["sleep", "9"], "always")
    closed = verbs.reattach(have, "none")
    assert (closed.network, list(closed.ports)) == ("none", [])  # ports need bridge mode
    assert "one interface" in verbs.__doc__  # type: ignore[operator]


def test_log_candidates_best_first() -> None:
    found = local.log_candidates(
        "/run/x", "h1", "/run/netns/pfxh1", "/run/x/lab/pfxh1/netns/web",
        [{"prefix": "other-", "agents": {"h2": {}}}, {"prefix": "pfx", "agents": {"h1": {}}}])
    assert found == ["/run/x/lab/pfxh1", "/run/sdnctl/h1"]
    # a host-mode container reports the host's namespace: no run dir from it
    found = local.log_candidates("/run/x", "h1", "", "/run/netns/pfxh1", [])
    assert found == ["/run/sdnctl/h1"]


def test_listing_columns() -> None:
    net = {"builtin": False, "internal": False, "masquerade": False, "driver": "overlay",
           "vni": 4096}
    assert verbs.network_flags(net) == "no-masquerade,vni=4096"
    assert verbs.network_flags({**net, "masquerade6": True}) == "no-masquerade,masquerade6,vni=4096"
    host = {"name": "h1", "underlay_ip": "192.0.2.10", "lab": True, "agent_connected": True,
            "agent_pid": 7, "subnets": [{"network": "front", "subnet": "10.88.0.0/24"}]}
    assert verbs.host_row(host, 2) == ["h1", "192.0.2.10", "lab", "connected (pid 7)", "2",
                                       "front=10.88.0.0/24"]


# -- against a controller --------------------------------------------------------------------


@pytest.fixture
def controller(front: Api, server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> Api:
    monkeypatch.setenv("SDNCTL_CONTROLLER", server.address)
    return front


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_network_round_trip(controller: Api, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "network", "create", "back", "--subnet", "10.91.0.0/24",
                   "--internal", "--allow", "front")[:2] == (0, "back\n")
    code, out, _ = run_cli(capsys, "network", "ls", "--json")
    listed = {n["name"]: n for n in json.loads(out)}
    assert code == 0 and {"front", "back"} <= set(listed)
    assert listed["back"]["internal"] and listed["back"]["allow"] == ["front"]
    code, out, _ = run_cli(capsys, "network", "ls")
    assert out.splitlines()[0].split() == ["NAME", "DRIVER", "SUBNET", "GATEWAY", "FLAGS",
                                           "ALLOW"]
    controller.container("web", network="back")
    code, out, _ = run_cli(capsys, "network", "inspect", "back", "--json")
    data = json.loads(out)
    assert data["subnet"] == "10.91.0.0/24"
    assert [c["name"] for c in data["containers"]] == ["web"]
    assert [x["host"] for x in data["leases"]] == ["h1"]
    code, _, err = run_cli(capsys, "network", "rm", "back")
    assert code == 1 and err.startswith("sdnctl: could not remove network 'back'")
    controller.delete("Container", "web")
    assert run_cli(capsys, "network", "rm", "back")[:2] == (0, "back\n")
    code, _, err = run_cli(capsys, "network", "inspect", "back")
    assert code == 1 and "could not inspect network 'back'" in err


def test_errors_are_one_line(controller: Api, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "network", "create", "bad", "--subnet", "nonsense")
    assert code == 1 and err.startswith("sdnctl: could not create network 'bad': ")
    assert err.count("\n") == 1
    code, _, err = run_cli(capsys, "exec", "ghost", "true")
    assert code == 1 and "could not find container 'ghost'" in err
    code, _, _ = run_cli(capsys, "rm", "-f", "ghost")
    assert code == 0


def test_host_ls(controller: Api, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "host", "ls", "--json")
    assert code == 0 and [h["name"] for h in json.loads(out)] == ["h1"]
    code, out, _ = run_cli(capsys, "host", "ls")
    assert out.splitlines()[1].split()[:4] == ["h1", "-", "real", "disconnected"]


def test_exec_and_logs_refuse_a_real_host(controller: Api,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    controller.container("web")
    code, _, err = run_cli(capsys, "exec", "web", "hostname")
    assert code == 1 and "not a lab host" in err
    code, _, err = run_cli(capsys, "trace", "web", "10.88.0.1")
    assert code == 1 and "not a lab host: trace works only for lab hosts" in err


# -- trace: the pure parts -------------------------------------------------------------------

SRC = trace.Endpoint(label="web", ip="10.70.0.2", container="web", host="h1",
                     host_netns="/run/netns/p-h1", netns="/x/netns/web", network="ov",
                     driver="overlay", veth="sdnv00000001", bridge="sdnb00000001",
                     vxlan="sdnx00000001", vni=4096, vxlan_port=4789)
PEER = trace.Endpoint(label="api", ip="10.70.1.2", container="api", host="h2",
                      host_netns="/run/netns/p-h2", netns="/y/netns/api", network="ov",
                      driver="overlay", veth="sdnv00000002", bridge="sdnb00000001",
                      vxlan="sdnx00000001", vni=4096, vxlan_port=4789)
OTHER = trace.Endpoint(label="db", ip="10.91.0.2", container="db", host="h1",
                       host_netns="/run/netns/p-h1", netns="/x/netns/db", network="back",
                       driver="bridge", veth="sdnv00000003", bridge="sdnb00000003")
ICMP = trace.Probe("icmp", SRC.ip, PEER.ip, marker=4242)


def test_probe_filters() -> None:
    assert ICMP.nft_match() == \
        "ip saddr 10.70.0.2 ip daddr 10.70.1.2 icmp type echo-request icmp id 4242"
    assert ICMP.bpf() == ("src host 10.70.0.2 and dst host 10.70.1.2 and "
                          "icmp[icmptype] == icmp-echo and icmp[4:2] == 4242")
    assert ICMP.bpf_in_vxlan(4789) == (
        "(udp dst port 4789 and udp[42:4] == 0x0a460002 and udp[46:4] == 0x0a460102 and "
        "udp[39] == 1 and udp[50] == 8 and udp[54:2] == 4242) or "
        "(ip6[6] == 17 and ip6[42:2] == 4789 and ip6[82:4] == 0x0a460002 and "
        "ip6[86:4] == 0x0a460102 and ip6[79] == 1 and ip6[90] == 8 and ip6[94:2] == 4242)")
    tcp = trace.Probe("tcp", SRC.ip, PEER.ip, port=80, marker=40000)
    assert tcp.nft_match().endswith("tcp sport 40000 tcp dport 80")
    assert tcp.bpf(with_source=False) == \
        "dst host 10.70.1.2 and tcp src port 40000 and tcp dst port 80"
    assert "udp[50:2] == 40000 and udp[52:2] == 80)" in tcp.bpf_in_vxlan(8472)


def _bpf_bytes_match(bpf: str, packet: bytes, proto: str = "udp") -> bool:
    """Whether each ``PROTO[off:len] == value`` / ``PROTO[off] == value`` term holds for
    ``packet`` (``udp``: the outer UDP header and what follows; ``ip6``: the outer IPv6
    header and what follows)."""
    terms = re.findall(rf"\b{proto}\[(\d+)(?::(\d+))?\] == (0x[0-9a-f]+|\d+)", bpf)
    assert terms, bpf
    for term in terms:
        start, length = int(term[0]), int(term[1] or 1)
        if int.from_bytes(packet[start:start + length]) != int(term[2], 0):
            return False
    return True


def test_ipv6_probe_filters_read_the_inner_ipv6_header() -> None:
    src, dst = "fd00:98::2", "fd00:98:0:1::2"
    six = trace.Probe("icmp", src, dst, marker=4242, family=6)
    assert six.nft_match() == (f"ip6 saddr {src} ip6 daddr {dst} "
                               "icmpv6 type echo-request icmpv6 id 4242")
    assert six.bpf().endswith("icmp6 and ip6[40] == 128 and ip6[44:2] == 4242")
    assert six.describe() == "icmpv6 echo, id 4242"
    inner = Ether() / IPv6(src=src, dst=dst) / ICMPv6EchoRequest(id=4242)
    udp = bytes(UDP(sport=1, dport=4789) / VXLAN(vni=4096) / inner)
    assert _bpf_bytes_match(six.bpf_in_vxlan(4789), udp)
    other = bytes(UDP(sport=1, dport=4789) / VXLAN(vni=4096) /
                  (Ether() / IPv6(src=src, dst=dst) / ICMPv6EchoRequest(id=4243)))
    assert not _bpf_bytes_match(six.bpf_in_vxlan(4789), other)
    swapped = bytes(UDP(sport=1, dport=4789) / VXLAN(vni=4096) /
                    (Ether() / IPv6(src=dst, dst=src) / ICMPv6EchoRequest(id=4242)))
    assert not _bpf_bytes_match(six.bpf_in_vxlan(4789), swapped)
    tcp = trace.Probe("tcp", src, dst, port=80, marker=40000, family=6)
    assert "udp[36] == 6 and udp[70:2] == 40000 and udp[72:2] == 80)" in tcp.bpf_in_vxlan(4789)
    # port unreachable is ICMPv6 type 1 code 4
    closed = {"kind": "icmp-error", "src": dst, "type": 1, "code": 4}
    assert trace.classify_answer(tcp, closed, True)[0] == trace.OK
    v6src = dataclasses.replace(SRC, ip6=src)
    assert trace.make_probe(v6src, dataclasses.replace(PEER, ip6=dst), "icmp", None,
                            family=6).dst == dst
    with pytest.raises(cli.CommandError, match="api has no IPv6 address"):
        trace.make_probe(v6src, PEER, "icmp", None, family=6)
    assert parse("trace", "web", "api", "-6").ipv6


@pytest.mark.parametrize("family", [4, 6])
def test_the_vxlan_filter_reads_an_ipv6_outer_packet(family: int) -> None:
    """Over an IPv6 underlay the probe is found at the same offsets behind a 40-byte IPv6
    header (libpcap has no ``udp[]`` there), and the outer addresses are read for people."""
    src, dst = ("10.70.0.2", "10.70.1.2") if family == 4 else ("fd00:98::2", "fd00:98:0:1::2")
    probe = trace.Probe("icmp", src, dst, marker=4242, family=family)
    ip = IP if family == 4 else IPv6
    echo = ICMP_ECHO(id=4242) if family == 4 else ICMPv6EchoRequest(id=4242)
    outer = IPv6(src="2001:db8::2", dst="2001:db8::3") / UDP(sport=1, dport=4789) / \
        VXLAN(vni=4096) / Ether() / ip(src=src, dst=dst) / echo
    bpf = probe.bpf_in_vxlan(4789)
    assert _bpf_bytes_match(bpf, bytes(outer), "ip6")
    assert outer[IPv6].nh == 17 and "ip6[6] == 17 and ip6[42:2] == 4789" in bpf
    other = outer.copy()
    other.getlayer(ip, nb=1 if family == 4 else 2).src = dst  # the inner header's source
    assert not _bpf_bytes_match(bpf, bytes(other), "ip6")
    point = trace.plan_points(SRC, PEER, ICMP)[3]
    line = ("IP6 2001:db8::2.41001 > 2001:db8::3.4789: VXLAN, flags [I] (0x08), vni 4096 "
            "IP 10.70.0.2 > 10.70.1.2: ICMP echo request, id 4242, seq 1, length 8")
    assert trace.capture_detail(point, [line]) == \
        "2001:db8::2 → 2001:db8::3 udp/4789 vni 4096"


def test_make_probe_checks_port_and_protocol() -> None:
    assert trace.make_probe(SRC, PEER, "icmp", None, marker=7).marker == 7
    with pytest.raises(cli.CommandError):
        trace.make_probe(SRC, PEER, "icmp", 80)
    with pytest.raises(cli.CommandError):
        trace.make_probe(SRC, PEER, "udp", None)
    assert parse("trace", "web", "api", "--port", "80").proto is None  # tcp chosen later


def kinds(points: list[trace.Point]) -> list[tuple[str, str]]:
    return [(p.host, p.kind) for p in points]


def test_path_across_an_overlay() -> None:
    points = trace.plan_points(SRC, PEER, ICMP)
    assert kinds(points) == [
        ("h1", "veth"), ("h1", "bridge"), ("h1", "nftables"), ("h1", "vxlan"),
        ("h2", "underlay"), ("h2", "decap"), ("h2", "nftables"), ("h2", "bridge"),
        ("h2", "veth"), ("h2", "destination")]
    vxlan = points[3]
    assert (vxlan.netns, vxlan.device, vxlan.vxlan_port) == ("/run/netns/p-h1", "eth0", 4789)
    assert vxlan.bpf.startswith("(udp dst port 4789")
    assert points[5].device == "sdnx00000001" and points[8].device == "sdnv00000002"


def test_path_on_one_host() -> None:
    probe = trace.Probe("icmp", SRC.ip, OTHER.ip, marker=1)
    assert kinds(trace.plan_points(SRC, OTHER, probe)) == [
        ("h1", "veth"), ("h1", "bridge"), ("h1", "nftables"), ("h1", "bridge"),
        ("h1", "veth"), ("h1", "destination")]
    neighbour = trace.Endpoint(**{**OTHER.__dict__, "bridge": SRC.bridge})
    points = trace.plan_points(SRC, neighbour, probe)
    assert [p.kind for p in points] == ["veth", "nftables", "bridge", "veth", "destination"]
    assert points[2].switched and not points[2].device
    outside = trace.Endpoint(label="203.0.113.1", ip="203.0.113.1")
    points = trace.plan_points(SRC, outside, trace.Probe("icmp", SRC.ip, outside.ip, marker=1))
    assert kinds(points)[-2:] == [("h1", "underlay"), ("outside", "destination")]
    assert points[-2].bpf.startswith("dst host 203.0.113.1")  # masqueraded on the way out


TRACE_DROP = """\
trace id 1a2b3c4d bridge sdnctl_trace_00ff pre packet: iif "sdnv00000001" ip saddr 10.70.0.2
trace id 1a2b3c4d bridge sdnctl_trace_00ff pre rule ip saddr 10.70.0.2 meta nftrace set 1 (verdict continue)
trace id 1a2b3c4d bridge sdnctl prerouting policy accept
trace id 1a2b3c4d inet sdnctl forward packet: iif "sdnb00000001" oif "sdnb00000003" ip saddr 10.70.0.2
trace id 1a2b3c4d inet sdnctl forward rule iifname "sdnb00000001" oifname "sdnb00000003" drop comment "sdnctl:net/ov/isolation" (verdict drop)
"""  # noqa: E501


def test_nft_verdict_names_the_rule() -> None:
    assert trace.nft_verdict(TRACE_DROP.splitlines()) == \
        (trace.FAIL, 'inet sdnctl forward: drop (rule "sdnctl:net/ov/isolation")')
    accepted = [*TRACE_DROP.splitlines()[:3], "trace id 1a2b3c4d inet sdnctl forward policy accept"]
    assert trace.nft_verdict(accepted) == \
        (trace.OK, "accept (bridge sdnctl prerouting, inet sdnctl forward)")
    assert trace.nft_verdict([])[0] == trace.FAIL
    uncommented = ["trace id 1 inet filter input rule tcp dport 22 drop (verdict drop)"]
    assert trace.nft_verdict(uncommented) == \
        (trace.FAIL, 'inet filter input: drop (rule "tcp dport 22 drop")')


def test_capture_detail_reads_the_vni() -> None:
    point = trace.plan_points(SRC, PEER, ICMP)[3]
    line = ("IP 192.0.2.10.41001 > 192.0.2.11.4789: VXLAN, flags [I] (0x08), vni 4096 "
            "IP 10.70.0.2 > 10.70.1.2: ICMP echo request, id 4242, seq 1, length 8")
    assert trace.capture_detail(point, [line]) == "192.0.2.10 → 192.0.2.11 udp/4789 vni 4096"


def observe(points: list[trace.Point], seen: set[int], traces: dict[str, list[str]],
            answer: dict[str, Any] | None) -> list[trace.Hop]:
    captures: dict[int, list[str] | str] = {
        i: (["IP seen"] if i in seen else []) for i, p in enumerate(points) if p.device}
    return trace.evaluate(points, ICMP, captures, traces, {"answer": answer})


def test_evaluate_the_isolation_drop() -> None:
    probe = trace.Probe("icmp", SRC.ip, OTHER.ip, marker=4242)
    points = trace.plan_points(SRC, OTHER, probe)
    hops = observe(points, {0, 1}, {"/run/netns/p-h1": TRACE_DROP.splitlines()}, None)
    assert [h.status for h in hops] == ["ok", "ok", "fail", "not-reached", "not-reached",
                                        "not-reached"]
    result = trace.TraceResult(SRC, OTHER, probe, hops)
    text = trace.format_text(result)
    assert '✗ h1  nftables inet sdnctl forward: drop (rule "sdnctl:net/ov/isolation")' in text
    assert text.splitlines()[-1].startswith("died at h1 nftables inet sdnctl forward: drop")
    data = trace.result_json(result)
    assert not data["reached"] and data["died_at"]["kind"] == "nftables"
    json.dumps(data)


def test_evaluate_a_success_and_an_unwatched_hop() -> None:
    points = trace.plan_points(SRC, PEER, ICMP)
    accept = ["trace id 1 inet sdnctl forward policy accept"]
    traces = {"/run/netns/p-h1": accept, "/run/netns/p-h2": accept}
    captures: dict[int, list[str] | str] = {i: ["IP seen"] for i, p in enumerate(points)
                                            if p.device}
    captures[4] = "tcpdump: eth0: No such device exists"
    hops = trace.evaluate(points, ICMP, captures, traces,
                          {"answer": {"kind": "echo-reply", "src": PEER.ip, "rtt_ms": 0.5}})
    assert [h.status for h in hops].count("ok") == len(hops) - 1
    assert hops[4].status == "unknown" and "could not watch" in hops[4].detail
    result = trace.TraceResult(SRC, PEER, ICMP, hops)
    assert result.reached and trace.format_text(result).endswith("reached api")
    assert "? h2  peer host" in trace.format_text(result)


def test_evaluate_a_switched_bridge_and_a_lost_answer() -> None:
    neighbour = trace.Endpoint(**{**OTHER.__dict__, "bridge": SRC.bridge})
    points = trace.plan_points(SRC, neighbour, ICMP)
    traces = {"/run/netns/p-h1": ["trace id 1 bridge sdnctl prerouting policy accept"]}
    hops = observe(points, {0, 3}, traces, None)
    assert [h.status for h in hops] == ["ok", "ok", "ok", "ok", "fail"]
    assert hops[2].detail == "switched" and "lost on the way back" in hops[4].detail


@pytest.mark.parametrize(("proto", "answer", "delivered", "status", "words"), [
    ("tcp", {"kind": "tcp", "src": "10.70.1.2", "flags": "SA"}, True, "ok", "open"),
    ("tcp", {"kind": "tcp", "src": "10.70.1.2", "flags": "RA"}, True, "ok", "closed (RST)"),
    ("udp", {"kind": "icmp-error", "src": "10.70.1.2", "type": 3, "code": 3}, True, "ok",
     "closed"),
    ("udp", None, True, "ok", "delivered"),
    ("udp", None, False, "fail", "no answer"),
    ("icmp", {"kind": "icmp-error", "src": "10.70.0.1", "type": 3, "code": 1}, False, "fail",
     "from 10.70.0.1"),
])
def test_classify_answer(proto: str, answer: dict[str, Any] | None, delivered: bool,
                         status: str, words: str) -> None:
    probe = trace.Probe(proto, SRC.ip, PEER.ip, port=0 if proto == "icmp" else 80, marker=1)
    got = trace.classify_answer(probe, answer, delivered)
    assert got[0] == status and words in got[1]


def test_waits_poll_soon_then_back_off_to_the_cap() -> None:
    delays = list(itertools.islice(poll_delays(), 30))
    assert delays[0] == POLL_FIRST < POLL_MAX
    assert delays == sorted(delays)  # never sooner than before
    assert delays[-1] == POLL_MAX and max(delays) == POLL_MAX
    # an agent's pass takes tens of ms: the first polls come well inside 100 ms
    assert sum(delays[:5]) < POLL_MAX


def _Refused(code: wire.StatusCode) -> wire.RpcError:
    return wire.RpcError(code, f"{code.name.lower()} (a fake)")


def test_rm_waits_with_wait_host_and_polls_a_controller_without_it() -> None:
    """The verbs wait with WaitHost; a controller from before it answers UNIMPLEMENTED and is
    polled with GetHost until its host has realised the revision; another error is named."""
    calls: list[str] = []

    class Old:
        def WaitHost(self, request: pb.WaitHostRequest, timeout: float) -> pb.Host:
            calls.append("wait")
            raise _Refused(wire.StatusCode.UNIMPLEMENTED)

        def GetHost(self, request: pb.GetRequest, timeout: float) -> pb.Host:
            calls.append("get")
            return pb.Host(name=request.name, agent_connected=True, agent_synced=True,
                           observed_revision=7 if calls.count("get") >= 3 else 3)

    verbs._wait_hosts(types.SimpleNamespace(api=Old()), {"h1": 7}, 10)  # type: ignore[arg-type]
    assert calls[:2] == ["wait", "get"] and calls.count("get") == 3

    class New:
        def WaitHost(self, request: pb.WaitHostRequest, timeout: float) -> pb.Host:
            calls.append(f"wait {request.name} {request.revision}")
            return pb.Host(name=request.name, agent_connected=True, agent_synced=True,
                           observed_revision=request.revision)

    calls.clear()
    verbs._wait_hosts(types.SimpleNamespace(api=New()), {"h1": 9}, 10)  # type: ignore[arg-type]
    assert calls == ["wait h1 9"]

    class Broken:
        def WaitHost(self, request: pb.WaitHostRequest, timeout: float) -> pb.Host:
            raise _Refused(wire.StatusCode.PERMISSION_DENIED)

    with pytest.raises(CommandError, match="could not inspect host 'h1': permission_denied"):
        verbs._wait_hosts(types.SimpleNamespace(api=Broken()), {"h1": 9}, 10)  # type: ignore[arg-type]
