"""`sdnctl check`: the pure plan (implied matrix, expectations, overrides) and the runner and
report driven by a fake prober (the real packets are in tests/netns/test_check.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdnctl.api.client import CommandError
from sdnctl.topology import check
from sdnctl.topology.check import Measurement, Probe, Result, plan
from sdnctl.topology.topology import FILTERED, OPEN, REFUSED, Topology, TopologyError, parse
from sdnctl.v1 import sdnctl_pb2 as pb

MODES = """\
name: modes
hosts:
  - {name: h1, lab: true}
networks:
  - {name: front, subnet: 10.90.0.0/24}
  - {name: back, subnet: 10.91.0.0/24}
  - {name: vault-net, subnet: 10.92.0.0/24, internal: true}
  - {name: quiet, subnet: 10.93.0.0/24, masquerade: false}
routes:
  - [front, back]
containers:
  - {name: web, host: h1, network: front}
  - {name: api, host: h1, network: back}
  - {name: db, host: h1, network: back}
  - {name: cache, host: h1, network: vault-net}
  - {name: mute, host: h1, network: quiet}
  - {name: sidecar, host: h1, network: "container:web"}
  - {name: vault, host: h1, network: none}
  - {name: probe, host: h1, network: host}
  - {name: plain, host: h1}
"""

HOSTS = """\
name: spread
hosts:
  - {name: h1, lab: true}
  - {name: h2, lab: true}
networks:
  - {name: ov, driver: overlay, subnet: 10.70.0.0/16}
  - {name: front, subnet: 10.88.0.0/16, allow: [back]}
  - {name: back, subnet: 10.89.0.0/16}
containers:
  - {name: a1, host: h1, network: ov}
  - {name: a2, host: h2, network: ov}
  - {name: f1, host: h1, network: front}
  - {name: f2, host: h2, network: front}
  - {name: b1, host: h1, network: back}
  - {name: b2, host: h2, network: back}
"""


def expectations(topo: Topology, implied: bool = True) -> dict[tuple[str, str], bool]:
    """ICMP probes of the plan as {(src, dst): expected open}."""
    return {(p.src, p.dst): p.expect == OPEN for p in plan(topo, implied) if p.proto == "icmp"}


def with_expect(text: str, block: str) -> Topology:
    return parse(text + "expect:\n" + block, "t.yaml")


def test_implied_matrix_of_every_mode_on_one_host() -> None:
    m = expectations(parse(MODES))
    # bridged: same network, allowed pairs, isolated networks
    assert m["api", "db"] and m["db", "api"]
    assert m["web", "api"] and m["api", "web"] and m["web", "db"]
    assert not m["web", "cache"] and not m["cache", "web"] and not m["cache", "db"]
    assert not m["web", "plain"] and not m["mute", "web"]
    # egress: NAT'd networks and the default bridge yes; internal and unmasqueraded no
    assert m["web", "external"] and m["api", "external"] and m["plain", "external"]
    assert not m["cache", "external"] and not m["mute", "external"]
    # joined: behaves as its donor, and is not a target of its own (it is reached as web)
    assert m["sidecar", "api"] and not m["sidecar", "cache"] and m["sidecar", "external"]
    assert ("sidecar", "web") not in m
    # closed: reaches nothing
    assert not any(v for (src, _), v in m.items() if src == "vault")
    assert {dst for src, dst in m if src == "vault"} == {"web", "api", "db", "cache", "mute",
                                                          "plain", "external"}
    # open: only its egress is probed (it reaches whatever its host reaches)
    assert [(dst, v) for (src, dst), v in m.items() if src == "probe"] == [("external", True)]
    # only containers with an address of their own are targets
    targets = {dst for _, dst in m}
    assert targets == {"web", "api", "db", "cache", "mute", "plain", "external"}
    # nobody probes itself
    assert not any(src == dst for src, dst in m)


def test_overlay_spans_hosts_but_bridges_and_allowed_pairs_do_not() -> None:
    m = expectations(parse(HOSTS))
    assert m["a1", "a2"] and m["a2", "a1"]  # one overlay, two hosts
    assert not m["f1", "f2"]  # a bridge network is per host
    assert m["f1", "b1"] and m["b2", "f2"]  # allowed pair, same host
    assert not m["f1", "b2"] and not m["b1", "f2"]  # allowed pair, different hosts
    assert not m["a1", "f1"]  # overlay and bridge are isolated
    assert all(m[c, "external"] for c in ("a1", "a2", "f1", "b2"))


def test_every_implied_probe_says_why() -> None:
    probes = {p.key: p for p in plan(parse(MODES))}
    assert probes["web", "api", "icmp", 0].why == "front and back are allowed to talk"
    assert probes["web", "cache", "icmp", 0].why == "front and vault-net are isolated from " \
        "each other"
    assert probes["sidecar", "db", "icmp", 0].why.startswith("joined to web: ")
    assert probes["cache", "external", "icmp", 0].why == "vault-net is internal"
    assert probes["vault", "db", "icmp", 0].why == "vault is closed (network: none)"
    assert all(p.line == 0 for p in probes.values())


def test_an_expectation_overrides_the_implied_probe_in_place() -> None:
    topo = with_expect(MODES, "  - {from: web, to: cache, reach: true}\n")
    probes = plan(topo)
    implied = plan(parse(MODES))
    assert [p.key for p in probes] == [p.key for p in implied]  # same probes, same order
    override = next(p for p in probes if p.key == ("web", "cache", "icmp", 0))
    assert override.expect == OPEN and override.why == "expect" and override.line == 22


def test_ports_and_protocols_add_probes_beside_the_matrix() -> None:
    topo = with_expect(MODES, "  - {from: web, to: db, port: 5432}\n"
                              "  - {from: web, to: db, proto: udp, port: 53, reach: false}\n")
    extra = [p for p in plan(topo) if p.proto != "icmp"]
    assert [(p.label, p.expect, p.line) for p in extra] == [
        ("web -> db tcp/5432", OPEN, 22), ("web -> db udp/53", FILTERED, 23)]
    assert len(plan(topo)) == len(plan(parse(MODES))) + 2


def test_a_network_target_expands_to_its_containers_leaving_out_the_source() -> None:
    topo = with_expect(MODES, "  - {from: api, to: back, reach: false}\n"
                              "  - {from: web, to: back, port: 80}\n")
    probes = plan(topo, implied=False)
    assert [(p.src, p.dst, p.proto, p.expect) for p in probes] == [
        ("api", "db", "icmp", FILTERED), ("web", "api", "tcp", OPEN), ("web", "db", "tcp", OPEN)]


def test_external_and_addresses_as_targets_and_no_implied() -> None:
    topo = with_expect(MODES, "  - {from: web, to: external, port: 443}\n"
                              "  - {from: cache, to: 192.0.2.1, reach: false}\n")
    assert [(p.src, p.dst, p.proto, p.port) for p in plan(topo, implied=False)] == [
        ("web", "external", "tcp", 443), ("cache", "192.0.2.1", "icmp", 0)]
    assert plan(parse(MODES), implied=False) == []


# -- the runner and the report, with a fake prober ------------------------------------------------

ADDRESSES = {"web": "10.90.0.2", "api": "10.91.0.2", "db": "10.91.0.3", "cache": "10.92.0.2",
             "mute": "10.93.0.2", "plain": "172.17.0.2"}


def reported(topo: Topology) -> list[pb.Container]:
    result = []
    for c in topo.containers:
        netns = "/h1" if c.mode == "host" else f"/ns/{check.donor_of(topo, c).name}"
        result.append(pb.Container(name=c.name, host=c.host, network=c.network,
                                   ip=ADDRESSES.get(c.name, ""),
                                   status=pb.ContainerStatus(state="running", netns=netns)))
    return result


def honest(topo: Topology, broken: frozenset[tuple[str, str]] = frozenset()) -> check.Measure:
    """A prober that measures what the plan expects, except for ``broken`` (netns, address)."""
    truth: dict[tuple[str, str, str, int], str] = {}
    where = check.endpoints(topo, reported(topo))
    for p in plan(topo):
        truth[where[p.src].netns, check.target_address(p, where), p.proto, p.port] = p.expect

    def send(netns: str, address: str, proto: str, port: int, timeout: float) -> Measurement:
        wanted = truth[netns, address, proto, port]
        if (netns, address) not in broken:
            return Measurement(wanted, {OPEN: "reply", REFUSED: "reset (RST)"}.get(
                wanted, f"no reply within {timeout:g}s"))
        if wanted == FILTERED:
            return Measurement(OPEN, "reply")
        return Measurement(FILTERED, f"no reply within {timeout:g}s")

    return send


def test_each_distinct_packet_is_sent_once() -> None:
    topo = parse(MODES)
    sent: list[tuple[str, str]] = []
    inner = honest(topo)

    def send(netns: str, address: str, proto: str, port: int, timeout: float) -> Measurement:
        sent.append((netns, address))
        return inner(netns, address, proto, port, timeout)

    results = check.run(plan(topo), check.endpoints(topo, reported(topo)), 0.5, send=send)
    assert all(r.match for r in results)
    assert len(sent) == len(set(sent))
    assert ("/ns/web", "10.91.0.2") in sent  # web's and sidecar's probe of api: one packet
    assert len(sent) < len(results)


def test_a_broken_pair_is_named_with_where_it_was_expected() -> None:
    topo = with_expect(MODES, "  - {from: web, to: db, port: 5432}\n")
    where = check.endpoints(topo, reported(topo))
    results = check.run(plan(topo), where, 1.0,
                        send=honest(topo, frozenset({("/ns/web", "10.91.0.3")})))
    bad = [check.mismatch_line(r, "t.yaml") for r in results if not r.match]
    assert bad == [
        "web -> db icmp: expected reachable, measured blocked [no reply within 1s] "
        "(implied: front and back are allowed to talk)",
        "sidecar -> db icmp: expected reachable, measured blocked [no reply within 1s] "
        "(implied: joined to web: front and back are allowed to talk)",
        "web -> db tcp/5432: expected open, measured filtered [no reply within 1s] "
        "(t.yaml:22)"]
    text = check.report(topo, "t.yaml", results, 1.23)
    assert text.endswith("✘ check modes: 51 probes, 3 mismatches (1.2s)")
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[1:10]}
    header = text.splitlines()[0].split()
    assert header == ["icmp", "web", "api", "db", "cache", "mute", "plain", "external"]
    assert rows["web"][header.index("db") - 1] == "✗≠"
    assert rows["api"][header.index("db") - 1] == "✓"
    assert rows["vault"] == ["✗"] * 7
    assert "web -> db tcp/5432  ✗≠ filtered: no reply within 1s" in text


def test_a_violated_isolation_is_a_mismatch() -> None:
    topo = with_expect(MODES, "  - {from: web, to: back, reach: false}\n")
    where = check.endpoints(topo, reported(topo))
    results = check.run(plan(topo), where, 1.0, send=honest(parse(MODES)))
    assert [(r.probe.label, r.probe.line) for r in results if not r.match] == [
        ("web -> api icmp", 22), ("web -> db icmp", 22)]


def test_no_address_and_no_namespace() -> None:
    topo = with_expect(MODES, "  - {from: web, to: vault, reach: false}\n"
                              "  - {from: web, to: probe}\n")
    containers = reported(topo)
    containers[0].status.netns = ""  # web not created yet
    where = check.endpoints(topo, containers)
    results = {r.probe.key: r for r in check.run(plan(topo), where, 1.0, send=honest(topo))}
    to_vault = results["web", "vault", "icmp", 0]
    assert to_vault.match and to_vault.detail == "vault has no address (it is closed)"
    to_probe = results["web", "probe", "icmp", 0]
    assert not to_probe.match and "it is open" in to_probe.detail
    from_web = results["web", "api", "icmp", 0]
    assert from_web.measured is None and not from_web.match
    assert from_web.detail == "web has no network namespace (state running)"
    assert results["sidecar", "api", "icmp", 0].match  # it has its own (the donor's) path


def test_a_topology_that_is_not_up_is_an_error() -> None:
    topo = parse(MODES)
    with pytest.raises(CommandError, match=r"does not know container.* vault"):
        check.endpoints(topo, [c for c in reported(topo) if c.name != "vault"])


def test_cells_and_json() -> None:
    ok = Result(Probe("a", "b", expect=FILTERED), "10.0.0.2", FILTERED, "no reply")
    wrong = Result(Probe("a", "c", line=7), "10.0.0.3", FILTERED, "no reply")
    assert check.cell(ok) == "✗" and check.cell(wrong) == "✗≠" and check.cell(None) == "·"
    assert "\033[1;31m" in check.cell(wrong, color=True)
    assert check.result_json(wrong, "t.yaml") == {
        "from": "a", "to": "c", "address": "10.0.0.3", "proto": "icmp", "port": 0, "family": 4,
        "expected": "open", "measured": "filtered", "match": False, "detail": "no reply",
        "why": "", "where": "t.yaml:7"}
    refused = Result(Probe("a", "c", "tcp", 80, REFUSED), "10.0.0.3", REFUSED, "reset (RST)")
    assert check.cell(refused) == "⊘" and refused.match
    assert check.result_json(refused, "t.yaml")["measured"] == "refused"


def test_the_verb_is_registered() -> None:
    from sdnctl.cli.cli import build_parser
    args = build_parser().parse_args(["check", "t.yaml", "--json", "--no-implied",
                                      "--timeout", "0.5"])
    assert args.func is check.cmd_check and args.json and args.no_implied
    assert args.timeout == 0.5
    with pytest.raises(SystemExit):
        build_parser().parse_args(["check", "t.yaml", "--timeout", "0"])


def test_a_bad_file_exits_2_before_probing(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from sdnctl.cli.cli import main
    bad = tmp_path / "bad.yaml"
    bad.write_text(MODES + "expect:\n  - {from: web, to: nowhere}\n")
    assert main(["check", str(bad)]) == 2
    assert f"{bad}:22: expect[0].to: 'nowhere' is not a container" in capsys.readouterr().err


# -- three outcomes: open, refused, filtered ------------------------------------------------------


def test_reach_names_an_outcome_and_true_false_mean_open_and_filtered() -> None:
    topo = with_expect(MODES, "  - {from: web, to: db, port: 80}\n"
                              "  - {from: web, to: db, port: 81, reach: true}\n"
                              "  - {from: web, to: db, port: 82, reach: false}\n"
                              "  - {from: web, to: db, port: 83, reach: refused}\n"
                              "  - {from: web, to: db, proto: udp, port: 53, reach: refused}\n"
                              "  - {from: web, to: db, port: 84, reach: open}\n"
                              "  - {from: web, to: db, port: 85, reach: filtered}\n"
                              "  - {from: web, to: cache, reach: false}\n")
    assert [(e.port, e.reach) for e in topo.expect] == [
        (80, OPEN), (81, OPEN), (82, FILTERED), (83, REFUSED), (53, REFUSED), (84, OPEN),
        (85, FILTERED), (0, FILTERED)]


@pytest.mark.parametrize(("line", "message"), [
    ("  - {from: web, to: db, port: 80, reach: closed}\n",
     "t.yaml:22: expect[0].reach: unknown reach 'closed'; expected one of true, false, open, "
     "refused, filtered"),
    ("  - {from: web, to: db, reach: refused}\n",
     "t.yaml:22: expect[0].reach: only a tcp or udp port can be refused; a ping is open (true) "
     "or filtered (false)"),
])
def test_a_bad_reach_names_file_line_and_the_outcomes(line: str, message: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse(MODES + "expect:\n" + line, "t.yaml")
    assert str(info.value) == message


def outcomes(results: list[Result]) -> dict[str, tuple[str | None, bool]]:
    return {r.probe.label: (r.measured, r.match) for r in results}


def test_a_refusal_is_neither_open_nor_filtered() -> None:
    """The fault of old: a TCP reset counted as reachable. Now each expectation matches only
    its own outcome."""
    topo = with_expect(MODES, "  - {from: web, to: db, port: 80, reach: true}\n"
                              "  - {from: web, to: db, port: 81, reach: false}\n"
                              "  - {from: web, to: db, port: 82, reach: refused}\n"
                              "  - {from: web, to: api, port: 80, reach: true}\n"
                              "  - {from: web, to: api, port: 81, reach: false}\n"
                              "  - {from: web, to: api, port: 82, reach: refused}\n")
    db, api = ADDRESSES["db"], ADDRESSES["api"]

    def send(netns: str, address: str, proto: str, port: int, timeout: float) -> Measurement:
        assert (netns, proto) == ("/ns/web", "tcp")
        if address == db:  # nothing listens on db
            return Measurement(REFUSED, "reset (RST)")
        assert address == api
        return Measurement(OPEN if port == 80 else FILTERED, "")

    results = check.run(plan(topo, implied=False), check.endpoints(topo, reported(topo)), 1.0,
                        send=send)
    assert outcomes(results) == {
        "web -> db tcp/80": (REFUSED, False), "web -> db tcp/81": (REFUSED, False),
        "web -> db tcp/82": (REFUSED, True), "web -> api tcp/80": (OPEN, True),
        "web -> api tcp/81": (FILTERED, True), "web -> api tcp/82": (FILTERED, False)}
    text = check.report(topo, "t.yaml", results, 0.5)
    assert "web -> db tcp/80   ⊘≠ refused: reset (RST)" in text
    assert "web -> db tcp/82   ⊘  refused: reset (RST)" in text
    assert "web -> api tcp/80  ✓  open: " in text
    assert "web -> api tcp/81  ✗  filtered: " in text
    assert check.LEGEND in text
    bad = [check.mismatch_line(r, "t.yaml") for r in results if not r.match]
    assert bad == [
        "web -> db tcp/80: expected open, measured refused [reset (RST)] (t.yaml:22)",
        "web -> db tcp/81: expected filtered, measured refused [reset (RST)] (t.yaml:23)",
        "web -> api tcp/82: expected refused, measured filtered [] (t.yaml:27)"]


def test_a_ping_reads_reachable_or_blocked() -> None:
    wrong = Result(Probe("a", "c", expect=FILTERED, line=3), "10.0.0.3", OPEN, "echo reply")
    assert check.mismatch_line(wrong, "t.yaml") == (
        "a -> c icmp: expected blocked, measured reachable [echo reply] (t.yaml:3)")
    unmeasured = Result(Probe("a", "c", "tcp", 80), "10.0.0.3", None, "no namespace")
    assert "measured not measured" in check.mismatch_line(unmeasured, "t.yaml")


def test_cni_attachments_on_the_topologys_hosts_and_networks_join_the_check() -> None:
    topo = parse("""
name: t
hosts: [{name: h1, lab: true}, {name: h2, lab: true}]
networks: [{name: front, subnet: 10.5.0.0/16, driver: overlay}]
containers: [{name: web, host: h1, network: front}]
""")
    reported = [
        pb.Container(name="web", host="h1", network="front", ip="10.5.1.2"),
        pb.Container(name="cni-aa", host="h2", network="front", ip="10.5.2.2",
                     cni=pb.CniOwner(container_id="abc", netns="/run/netns/ctr-abc")),
        pb.Container(name="cni-bb", host="h9", network="front", ip="10.5.9.2",  # another host
                     cni=pb.CniOwner(container_id="def", netns="/run/netns/ctr-def")),
        pb.Container(name="cni-cc", host="h1", network="elsewhere", ip="10.7.1.2",
                     cni=pb.CniOwner(container_id="ghi", netns="/run/netns/ctr-ghi")),
    ]
    joined = check.with_attachments(topo, reported)
    assert [c.name for c in joined.containers] == ["web", "cni-aa"]
    keys = {(p.src, p.dst, p.expect) for p in plan(joined)}
    assert ("cni-aa", "web", OPEN) in keys and ("web", "cni-aa", OPEN) in keys
    assert ("cni-aa", "external", OPEN) in keys
    where = check.endpoints(joined, reported)
    assert (where["cni-aa"].netns, where["cni-aa"].address) == ("/run/netns/ctr-abc", "10.5.2.2")
    assert check.with_attachments(topo, reported[:1]) is topo


DUAL = """\
name: dual
hosts:
  - {name: h1, lab: true}
networks:
  - {name: front, subnet: 10.96.0.0/24, subnet6: "fd00:96::/48"}
  - {name: back, subnet: 10.97.0.0/24, subnet6: "fd00:97::/48", masquerade6: true}
  - {name: v4only, subnet: 10.95.0.0/24}
  - {name: locked, subnet: 10.99.0.0/24, subnet6: "fd00:99::/48", default: deny}
containers:
  - {name: a, host: h1, network: front}
  - {name: b, host: h1, network: front}
  - {name: side, host: h1, network: "container:a"}
  - {name: other, host: h1, network: back}
  - {name: old, host: h1, network: v4only}
  - {name: p, host: h1, network: locked}
  - {name: q, host: h1, network: locked}
"""
DUAL_ADDRESSES = {"a": ("10.96.0.2", "fd00:96::2"), "b": ("10.96.0.3", "fd00:96::3"),
                  "other": ("10.97.0.2", "fd00:97::2"), "old": ("10.95.0.2", ""),
                  "p": ("10.99.0.2", "fd00:99::2"), "q": ("10.99.0.3", "fd00:99::3")}


def dual_reported(topo: Topology) -> list[pb.Container]:
    return [pb.Container(name=c.name, host=c.host, network=c.network,
                         ip=DUAL_ADDRESSES.get(c.name, ("", ""))[0],
                         ip6=DUAL_ADDRESSES.get(c.name, ("", ""))[1],
                         status=pb.ContainerStatus(state="running",
                                                   netns=f"/ns/{check.donor_of(topo, c).name}"))
                for c in topo.containers]


def test_the_matrix_probes_ipv6_between_dual_stack_containers() -> None:
    topo = parse(DUAL)
    where = check.endpoints(topo, dual_reported(topo))
    probes = plan(topo, addresses={n: e.address for n, e in where.items() if e.address},
                  addresses6={n: e.address6 for n, e in where.items() if e.address6})
    six = {(p.src, p.dst): p for p in probes if p.family == 6}
    # between dual-stack containers only, never to or from an IPv4-only one
    assert ("a", "b") in six and ("side", "b") in six and ("a", "other") in six
    assert not any("old" in k for k in six)
    # the outside world over IPv6: only with NAT66
    assert six["a", "external"].expect == FILTERED and "masquerade6" in six["a", "external"].why
    assert six["other", "external"].expect == OPEN
    assert check.target_address(six["other", "external"], where) == "2001:db8:0:ff::1"
    assert six["a", "b"].expect == OPEN and six["a", "other"].expect == FILTERED
    assert six["a", "b"].key == ("a", "b", "icmp6", 0) and six["a", "b"].label == "a -> b icmp6"
    # policies hold for IPv6 as for IPv4: p is isolated for ingress (default: deny)
    assert six["q", "p"].expect == FILTERED and "isolated for ingress" in six["q", "p"].why
    assert "fd00:99::2 is isolated" in six["q", "p"].why  # evaluated on its IPv6 address
    assert six["p", "q"].expect == FILTERED  # q is isolated too (default: deny)
    assert check.target_address(six["a", "b"], where) == "fd00:96::3"
    assert check.target_address(six["side", "b"], where) == "fd00:96::3"


def test_a_broken_ipv6_path_fails_its_icmp6_cell_only() -> None:
    topo = parse(DUAL)
    where = check.endpoints(topo, dual_reported(topo))
    probes = plan(topo, addresses={n: e.address for n, e in where.items() if e.address})
    truth = {(where[p.src].netns, check.target_address(p, where)): p.expect for p in probes}

    def send(netns: str, address: str, proto: str, port: int, timeout: float) -> Measurement:
        if (netns, address) == ("/ns/a", "fd00:96::3"):  # a's IPv6 route to b is gone
            return Measurement(FILTERED, "Network is unreachable")
        return Measurement(truth[netns, address], "as planned")

    results = check.run(probes, where, 1.0, send=send)
    bad = [r.probe.label for r in results if not r.match]
    assert bad == ["a -> b icmp6", "side -> b icmp6"]
    text = check.report(topo, "d.yaml", results, 1.0)
    blocks = text.split("\n\n")
    assert blocks[0].splitlines()[0].split()[0] == "icmp"
    v6 = blocks[1].splitlines()
    assert v6[0].split() == ["icmp6", "a", "b", "other", "p", "q", "external"]
    assert v6[1].split()[:3] == ["a", "·", "✗≠"]  # a itself, then b
    assert {line.split()[0] for line in v6[1:]} == {"a", "b", "side", "other", "p", "q"}
    v4_a = blocks[0].splitlines()[1].split()
    assert v4_a[0] == "a" and "≠" not in "".join(v4_a)
    assert check.result_json(next(r for r in results if r.probe.family == 6), "d.yaml")[
        "family"] == 6


def test_an_ipv6_literal_in_expect_is_probed_over_ipv6() -> None:
    topo = parse(DUAL + "expect:\n  - {from: a, to: \"fd00:97::2\", reach: false}\n")
    probe = next(p for p in plan(topo, implied=False))
    assert (probe.family, probe.label) == (6, "a -> fd00:97::2 icmp6")
    where = check.endpoints(topo, dual_reported(topo))
    assert check.target_address(probe, where) == "fd00:97::2"
    assert not check.is_name("fd00:97::2", where)
    with pytest.raises(TopologyError, match=r"expect\[0\].to: 'fd00::zz' is not"):
        parse(DUAL + "expect:\n  - {from: a, to: \"fd00::zz\"}\n")
