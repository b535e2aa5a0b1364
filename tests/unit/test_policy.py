"""Network policy without root (issue 22): the evaluation (sdnctl/api/policyeval.py), its nft
rendering (agent/netpolicy.py), validation, the topology form, and the controller's policy set
in the Watch stream."""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import threading
from pathlib import Path

import pytest

from agent.desired import Changed, DesiredState, policy_from_pb
from agent.kernel.policyfw import counters
from agent.kernel.shaping import burst_of
from agent.names import ifb_name
from agent.netpolicy import PolicyInput, build, render, render_delta, rule_of_comment, set_name
from sdnctl.api import convert
from sdnctl.api.model import (
    Container,
    ContainerStatus,
    Host,
    Invalid,
    Network,
    Policy,
    PolicyPeer,
    PolicyRule,
    policy_from_json,
    to_json,
)
from sdnctl.api.policyeval import (
    Endpoint,
    Evaluator,
    Selector,
    address_order,
    default_policies,
    members,
    members_by_family,
    members_of,
    peer_selector,
    policy_selector,
)
from sdnctl.api.validate import validate_container, validate_policy
from sdnctl.controller import policies, watch
from sdnctl.controller.state import State
from sdnctl.controller.store.memory import MemoryStore
from sdnctl.controller.store.sqlite import SqliteStore
from sdnctl.topology.check import REACHABLE, plan
from sdnctl.topology.topology import FILTERED, OPEN, TopologyError, parse, parse_policies

WEB = Endpoint("web", "front", "10.1.0.2", ("app=web",))
DB = Endpoint("db", "back", "10.2.0.2", ("app=db",))
OTHER = Endpoint("other", "back", "10.2.0.3", ("app=other",))
CIDRS = {"front": "10.1.0.0/16", "back": "10.2.0.0/16"}
DB_FROM_WEB = Policy("db-from-web", "back", ("app=db",), ingress=(
    PolicyRule((PolicyPeer(("app=web",), network="front"),), ("5432/tcp",)),))


def db_and_web(hosts: tuple[str, ...] = ("h1", "h2"), web: bool = True
               ) -> tuple[MemoryStore, State]:
    """A store with ``hosts``, the networks back and front, db (app=db) on h1 in back and,
    with ``web``, web (app=web) on h2 in front."""
    store = MemoryStore()
    state = State(store)
    for h in hosts:
        state.create_host(Host(h))
    state.create_network(Network("back", "10.2.0.0/16"))
    state.create_network(Network("front", "10.1.0.0/16"))
    state.create_container(Container("db", "h1", "back", labels=("app=db",)))
    if web:
        state.create_container(Container("web", "h2", "front", labels=("app=web",)))
    return store, state


def _whole(store: MemoryStore) -> tuple[object, ...]:
    """The policy set read whole from the store, not from the cache (what it must equal)."""
    pset = policies._read_index(store).pset
    return pset.policies, pset.endpoints, pset.network_cidrs, pset.network_cidrs6


def _parts(pset: policies.PolicySet) -> tuple[object, ...]:
    return pset.policies, pset.endpoints, pset.network_cidrs, pset.network_cidrs6


def test_the_hub_moves_the_policy_set_on_by_the_changes_it_read() -> None:
    """``policy_set_after``: a cached set at ``since`` is moved on by the changes the hub read
    (the store's log is not read again), and equals the set read whole; one ahead of some of
    them takes only the newer ones; one behind ``since`` (changes it was never given) is not
    patched with a gap: the log is read."""
    store, state = db_and_web()
    policies.create_policy(store, DB_FROM_WEB)
    since = policies.policy_set(store).revision  # cached at the store's revision
    state.create_container(Container("db2", "h1", "back", labels=("app=db",)))
    state.create_container(Container("web2", "h1", "front", labels=("app=web",)))
    changes = store.changes_since(since)
    reads = []
    real = store.changes_since
    store.changes_since = lambda r: reads.append(r) or real(r)  # type: ignore[method-assign]
    moved = policies.policy_set_after(store, since, changes)
    assert reads == []  # from the hub's changes alone
    assert moved.revision == changes[-1].revision == store.revision()
    assert _parts(moved) == _whole(store)
    assert "db2" in [e.container for e in moved.endpoints]
    # Asked again with the same changes (a set already past them): the same set, no read.
    assert policies.policy_set_after(store, since, changes) is moved
    assert reads == []
    # A hub ahead of the cache: the changes between the cache and ``since`` were never given.
    behind = policies.policy_set(store).revision
    state.create_container(Container("db3", "h1", "back", labels=("app=db",)))
    gap = store.revision()
    state.create_container(Container("web3", "h2", "front", labels=("app=web",)))
    later = policies.policy_set_after(store, gap, real(gap))
    assert reads == [behind]  # the log read from where the cache was
    assert _parts(later) == _whole(store)
    assert {"db3", "web3"} <= {e.container for e in later.endpoints}


def test_one_policy_change_is_converted_once_for_every_stream(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every host's stream sends the whole policy set when a policy changes; its selected
    addresses are converted once for all of them (the same set object), not once per stream,
    and a later set is converted anew."""
    hosts = ("h1", "h2", "h3")
    store, state = db_and_web(hosts)
    alive = threading.Event()
    alive.set()
    streams = [watch.host_events(state, h, 0, alive.is_set, progress_interval=3600)
               for h in hosts]
    assert all(next(s).snapshot for s in streams)
    converted: list[str] = []
    to_pb = convert.endpoint_to_pb
    monkeypatch.setattr(convert, "endpoint_to_pb",
                        lambda e: converted.append(e.container) or to_pb(e))
    policies.create_policy(store, DB_FROM_WEB)
    events = [next(s) for s in streams]
    assert all(e.policy_set == events[0].policy_set for e in events)
    assert sorted(e.container for e in events[0].policy_set.endpoints) == ["db", "web"]
    assert sorted(converted) == ["db", "web"]  # once, for the three streams
    state.create_container(Container("web2", "h3", "front", labels=("app=web",)))
    again = [next(s) for s in streams]
    assert all("web2" in [e.container for e in ev.policy_set.endpoints] for ev in again)
    assert sorted(converted) == ["db", "db", "web", "web", "web2"]
    alive.clear()


def test_a_policy_change_goes_without_the_endpoints_an_agent_holds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """To an agent that asked for it (WatchRequest.keeps_endpoints), a policy created or
    deleted goes with its policies alone when the selected addresses stand (issue 21: 1,000 of
    them per agent per change at 100 x 10), and the agent keeps those it holds; they come
    again once they changed. The controller converts unchanged ones no more."""
    store, state = db_and_web()
    policies.create_policy(store, DB_FROM_WEB)
    alive = threading.Event()
    alive.set()
    keeps = watch.host_events(state, "h1", 0, alive.is_set, progress_interval=3600,
                              keeps_endpoints=True)
    old = watch.host_events(state, "h2", 0, alive.is_set, progress_interval=3600)
    desired = DesiredState()
    desired.apply(next(keeps))  # the snapshot: everything
    assert next(old).snapshot
    assert {e.container for e in desired.policy.endpoints} == {"db", "web"}
    converted: list[str] = []
    to_pb = convert.endpoint_to_pb
    monkeypatch.setattr(convert, "endpoint_to_pb",
                        lambda e: converted.append(e.container) or to_pb(e))
    policies.create_policy(store, dataclasses.replace(DB_FROM_WEB, name="db-again"))
    event = next(keeps)
    assert event.policy_set.endpoints_kept and not event.policy_set.endpoints
    assert {p.name for p in event.policy_set.policies} >= {"db-from-web", "db-again"}
    assert desired.apply(event) and {p.name for p in desired.policy.policies} >= {"db-again"}
    assert {e.container for e in desired.policy.endpoints} == {"db", "web"}  # kept
    whole = next(old)  # (an agent that did not ask gets the set whole, as before)
    assert not whole.policy_set.endpoints_kept
    assert {e.container for e in whole.policy_set.endpoints} == {"db", "web"}
    assert converted == []  # the same endpoints: converted when first sent, not again
    state.create_container(Container("web2", "h2", "front", labels=("app=web",)))
    event = next(keeps)
    assert not event.policy_set.endpoints_kept
    desired.apply(event)
    assert {e.container for e in desired.policy.endpoints} == {"db", "web", "web2"}
    alive.clear()


def test_an_agent_decodes_the_same_selected_addresses_once() -> None:
    """The policy set comes whole with every policy change; the addresses it selects, when
    they are the same as last time, are not decoded again (the same tuple), and other ones
    are."""
    pset = policies.PolicySet(5, (DB_FROM_WEB,), (WEB, DB), tuple(sorted(CIDRS.items())), ())
    first = policy_from_pb(watch.policy_set_pb(pset))
    changed = policy_from_pb(watch.policy_set_pb(dataclasses.replace(pset, policies=())))
    assert changed.endpoints is first.endpoints and changed.policies == ()
    other = policy_from_pb(watch.policy_set_pb(dataclasses.replace(pset, endpoints=(WEB,))))
    assert other.endpoints == (WEB,)
    assert first.endpoints == (WEB, DB)


def test_both_families_members_in_one_look_are_each_familys_members() -> None:
    rng = random.Random(3)
    endpoints = [Endpoint(f"c{i}", rng.choice(["front", "back"]), f"10.1.{i // 200}.{i % 200}",
                          tuple(sorted(rng.sample(["app=web", "app=db", "tier=1"], 2))),
                          f"fd00:1::{i:x}" if i % 3 else "") for i in range(400)]
    selectors = (Selector("front", ("app=web",)), Selector("*", ("app=db", "tier=1")),
                 Selector("back", ()), Selector("front", ("nosuch=1",)),
                 Selector("*", ("tier=1", "app=web", "nosuch=1")))
    for selector in selectors:
        both = members_by_family(selector, endpoints)
        assert both == {4: members(selector, endpoints, 4), 6: members(selector, endpoints, 6)}
    # Every selector at once, through the label index, finds the same (an endpoint that lists
    # a label twice included).
    endpoints.append(Endpoint("twice", "front", "10.9.0.1", ("app=web", "app=web")))
    assert members_of(selectors, endpoints) == {
        s.key(): members_by_family(s, endpoints) for s in selectors}


def test_addresses_sort_in_numeric_order_in_each_family() -> None:
    rng = random.Random(7)
    v4 = [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(300)]
    v6 = [str(ipaddress.IPv6Address(rng.getrandbits(128))) for _ in range(300)] + ["::1", "::"]
    for family in (v4, v6):
        assert sorted(family, key=address_order) == sorted(family, key=ipaddress.ip_address)


def evaluator(*pols: Policy) -> Evaluator:
    return Evaluator(pols, [WEB, DB, OTHER], CIDRS)


def test_isolation_needs_a_rule_and_replies_are_a_separate_matter() -> None:
    ev = evaluator(DB_FROM_WEB)
    assert ev.verdict(WEB.address, DB.address, "tcp", 5432).allowed
    denied = ev.verdict(WEB.address, DB.address, "tcp", 5433)
    assert not denied.allowed and denied.policy == "db-from-web" and denied.direction == "ingress"
    assert not ev.verdict(OTHER.address, DB.address, "tcp", 5432).allowed
    assert not ev.verdict(WEB.address, DB.address, "udp", 5432).allowed
    # db is not isolated for egress, other not at all
    assert ev.verdict(DB.address, WEB.address, "tcp", 1).allowed
    assert ev.verdict(WEB.address, OTHER.address, "udp", 53).allowed


def test_policies_add_up_and_egress_and_ingress_both_count() -> None:
    also = Policy("db-from-other", "back", ("app=db",),
                  ingress=(PolicyRule((PolicyPeer(("app=other",)),), ()),))
    ev = evaluator(DB_FROM_WEB, also)
    assert ev.verdict(OTHER.address, DB.address, "udp", 9).allowed
    no_egress = Policy("web-quiet", "front", ("app=web",), egress=())
    ev = evaluator(DB_FROM_WEB, no_egress)
    out = ev.verdict(WEB.address, DB.address, "tcp", 5432)
    assert not out.allowed and (out.policy, out.direction) == ("web-quiet", "egress")


def test_cidr_except_network_peers_and_every_network() -> None:
    cidr = Policy("c", "*", (), ingress=(PolicyRule(
        (PolicyPeer(cidr="10.0.0.0/8", excepts=("10.1.0.0/16",)),), ("1-100/udp",)),))
    ev = evaluator(cidr)
    assert ev.verdict(OTHER.address, DB.address, "udp", 100).allowed
    assert not ev.verdict(OTHER.address, DB.address, "udp", 101).allowed
    assert not ev.verdict(WEB.address, DB.address, "udp", 1).allowed  # excepted
    net = Policy("n", "back", (), ingress=(PolicyRule((PolicyPeer(network="front"),), ()),))
    ev = evaluator(net)
    assert ev.verdict(WEB.address, OTHER.address, "sctp", 7).allowed
    assert not ev.verdict(DB.address, OTHER.address, "tcp", 7).allowed
    # a label peer without a network is scoped to the policy's network
    scoped = Policy("s", "back", (), ingress=(PolicyRule((PolicyPeer(("app=web",)),), ()),))
    assert not evaluator(scoped).verdict(WEB.address, DB.address, "tcp", 1).allowed


def test_default_deny_is_an_ingress_policy_of_the_whole_network() -> None:
    (deny,) = default_policies([Network("back", "10.2.0.0/16", default_policy="deny"),
                                Network("front", "10.1.0.0/16")])
    ev = evaluator(deny)
    assert not ev.verdict(WEB.address, DB.address, "tcp", 1).allowed
    assert ev.verdict(DB.address, WEB.address, "tcp", 1).allowed


def test_nft_uses_one_set_per_selector_and_changes_only_sets_when_members_move() -> None:
    given = PolicyInput((DB_FROM_WEB,), (WEB, DB, OTHER), tuple(CIDRS.items()))
    tables = build(given)
    sets = dict(tables.sets)
    assert sets[set_name(policy_selector(DB_FROM_WEB))] == ("10.2.0.2",)
    assert sets["iso_in"] == ("10.2.0.2",) and sets["iso_out"] == ()
    script = render(tables)
    assert "10.1.0.2" not in "\n".join(t for _, t in tables.rules)  # rules name sets only
    assert "meta l4proto tcp th dport { 5432 }" in script
    assert rule_of_comment("sdnctl:policy/default/back/ingress/drop") == \
        ("default/back", "ingress", "drop")
    # a second web container: only the web set changes, in place
    web2 = Endpoint("web2", "front", "10.1.0.9", ("app=web",))
    moved = build(PolicyInput((DB_FROM_WEB,), (WEB, web2, DB, OTHER), tuple(CIDRS.items())))
    delta = render_delta(tables, moved)
    assert delta is not None and "flush set" in delta and "10.1.0.9" in delta
    assert "add rule" not in delta
    assert render_delta(tables, tables) == ""
    changed = build(PolicyInput((DB_FROM_WEB, Policy("x", "front", (), egress=())),
                                (WEB, DB), tuple(CIDRS.items())))
    assert render_delta(tables, changed) is None
    assert build(PolicyInput()).empty


def test_validation_names_the_field() -> None:
    with pytest.raises(Invalid, match=r"policy.ingress\[0\].from\[0\].except\[0\]"):
        validate_policy(Policy("p", "back", (), ingress=(PolicyRule(
            (PolicyPeer(cidr="10.0.0.0/8", excepts=("11.0.0.0/16",)),)),)))
    with pytest.raises(Invalid, match=r"policy.egress\[0\].ports\[0\]"):
        validate_policy(Policy("p", "back", (), egress=(PolicyRule((), ("99999/tcp",)),)))
    with pytest.raises(Invalid, match=r"policy.select\[0\]"):
        validate_policy(Policy("p", "back", ("no equals",), egress=()))
    with pytest.raises(Invalid, match="give ingress and/or egress"):
        validate_policy(Policy("p", "back"))
    with pytest.raises(Invalid, match=r"container.labels\[1\]"):
        validate_container(Container("c", "h1", "front", labels=("a=1", "a=2")))
    with pytest.raises(Invalid, match="bandwidth limits need a bridged container"):
        validate_container(Container("c", "h1", "host", ingress_bps=10**6))


def test_policy_round_trips_through_json_and_protobuf() -> None:
    p = Policy("p", "*", ("a=b",), ingress=(), egress=(PolicyRule(
        (PolicyPeer(("x=y",), network="n"), PolicyPeer(cidr="10.0.0.0/8",
                                                       excepts=("10.1.0.0/16",))),
        ("80/tcp",)),))
    assert policy_from_json(to_json(p)) == p
    assert convert.policy_from_pb(convert.policy_to_pb(p)) == p


def test_topology_form_and_errors_with_lines() -> None:
    topo = parse("""\
name: t
hosts: [{name: h1, lab: true}]
networks: [{name: back, subnet: 10.2.0.0/16, default: deny}]
containers: [{name: db, host: h1, network: back, labels: {app: db},
              resources: {ingress: 10mbit, egress: 1gbit, burst: 64k}}]
policies:
  - name: db-from-web
    network: back
    select: {app: db}
    ingress:
      - from: [{labels: {app: web}}, {cidr: 10.0.0.0/8, except: [10.9.0.0/16]}]
        ports: [5432/tcp]
    egress: []
""")
    (p,) = topo.policies
    assert p.egress == () and p.ingress is not None and p.ingress[0].ports == ("5432/tcp",)
    assert topo.networks[0].default_policy == "deny"
    db = topo.containers[0]
    assert (db.labels, db.ingress_bps, db.egress_bps, db.burst_bytes) == \
        (("app=db",), 10**7, 10**9, 65536)
    with pytest.raises(TopologyError, match=r":5: policies\[0\].ingress\[0\].ports\[0\]"):
        parse_policies("policies:\n  - name: p\n    network: b\n    ingress:\n"
                       "      - ports: [70000/tcp]\n")
    with pytest.raises(TopologyError, match="give network: NAME or networks: all"):
        parse_policies("{name: p, ingress: []}")


def test_watch_sends_the_policy_set_to_every_host_when_it_changes() -> None:
    store, state = db_and_web(web=False)
    snap = watch.snapshot_event(state.snapshot("h2"), watch.policy_set_pb(
        policies.policy_set(store)))
    desired = DesiredState()
    desired.apply(snap)
    assert desired.policy.policies == ()
    assert desired.policy.endpoints == ()  # no selector: no endpoint worth sending
    policies.create_policy(store, DB_FROM_WEB)
    pset = policies.policy_set(store)
    assert [p.name for p in pset.policies] == ["db-from-web"]
    assert [e.container for e in pset.endpoints] == ["db"]
    event = watch.delta_event(state, "h2", store.changes_since(snap.revision))
    assert not event.containers  # h2 runs nothing: only the policy set concerns it
    if not event.HasField("policy_set"):
        event.policy_set.CopyFrom(watch.policy_set_pb(pset))
    # The agent rewrites its policy table for it, with no pass (agent/main.py).
    assert desired.apply(event) == Changed.POLICY
    assert not desired.apply(event)
    with pytest.raises(Exception, match="does not exist"):
        policies.create_policy(store, Policy("p", "nowhere", (), egress=()))


def test_check_expects_what_the_policies_allow_per_port() -> None:
    topo = parse("""\
name: t
hosts: [{name: h1, lab: true}]
networks: [{name: back, subnet: 10.2.0.0/16}]
containers:
  - {name: web, host: h1, network: back, labels: {app: web}}
  - {name: db, host: h1, network: back, labels: {app: db}}
  - {name: side, host: h1, network: "container:db", labels: {app: side}}
policies:
  - {name: db-in, network: back, select: {app: db}, ingress: [{from: [{labels: {app: web}}],
     ports: [5432/tcp, 53/udp]}]}
""")
    probes = {p.key: p for p in plan(topo, addresses={"web": "10.2.0.2", "db": "10.2.0.3"})}
    assert probes[("web", "db", "tcp", 5432)].expect == REACHABLE
    assert probes[("web", "db", "udp", 53)].expect == REACHABLE
    assert probes[("db", "web", "tcp", 5432)].expect == REACHABLE  # web is not isolated
    ping = probes[("web", "db", "icmp", 0)]
    assert ping.expect == FILTERED and "db-in" in ping.why
    assert probes[("web", "external", "icmp", 0)].expect == OPEN
    # without addresses (no controller) there is no policy part
    assert not [p for p in plan(topo) if p.proto != "icmp"]


def test_shaping_names_and_bursts_and_policy_counters() -> None:
    name = ifb_name("sdnv0123456789a")
    assert name.startswith("sdnf") and len(name) <= 15 and name == ifb_name("sdnv0123456789a")
    assert burst_of(10_000_000, 0) == 62_500 and burst_of(1_000_000, 0) == 16_000
    assert burst_of(10_000_000, 4096) == 4096
    rules = [{"comment": "sdnctl:policy/db-in/ingress/drop",
              "expr": [{"match": {}}, {"counter": {"packets": 7, "bytes": 420}}, {"drop": None}]},
             {"comment": "sdnctl:policy/db-in/ingress/0", "expr": [{"counter": {"packets": 2}}]},
             {"comment": "sdnctl:net/x", "expr": [{"counter": {"packets": 9}}]}]
    assert counters(rules) == {("db-in", "ingress", "drop"): 7, ("db-in", "ingress", "0"): 2}


# -- both families (issue 20): IPv6 evaluated as IPv4 -------------------------------------------

WEB6 = Endpoint("web", "front", "10.1.0.2", ("app=web",), "fd00:1::2")
DB6 = Endpoint("db", "back", "10.2.0.2", ("app=db",), "fd00:2::2")
OTHER6 = Endpoint("other", "back", "10.2.0.3", ("app=other",), "fd00:2::3")
CIDRS6 = {"front": "fd00:1::/48", "back": "fd00:2::/48"}


def evaluator6(*pols: Policy) -> Evaluator:
    return Evaluator(pols, [WEB6, DB6, OTHER6], CIDRS, CIDRS6)


def test_ipv6_is_evaluated_by_the_same_rules_as_ipv4() -> None:
    pols = (DB_FROM_WEB, Policy("web-out", "front", ("app=web",), egress=(
        PolicyRule((PolicyPeer(network="back"),), ("5432/tcp", "53/udp")),)))
    ev = evaluator6(*pols)
    endpoints = (WEB6, DB6, OTHER6)
    for src in endpoints:
        for dst in endpoints:
            for proto, port in (("tcp", 5432), ("tcp", 5433), ("udp", 53), ("udp", 5432)):
                v4 = ev.verdict(src.address, dst.address, proto, port)
                v6 = ev.verdict(src.address6, dst.address6, proto, port)
                assert (v4.allowed, v4.policy, v4.direction) == \
                    (v6.allowed, v6.policy, v6.direction), (src, dst, proto, port)
    assert ev.verdict(WEB6.address6, DB6.address6, "tcp", 5432).allowed  # positive control
    denied = ev.verdict(OTHER6.address6, DB6.address6, "tcp", 5432)
    assert not denied.allowed and "fd00:2::2 is isolated for ingress" in denied.reason


def test_cidr_peers_match_their_own_family_only() -> None:
    v6 = Policy("c6", "back", ("app=db",), ingress=(PolicyRule(
        (PolicyPeer(cidr="fd00::/16", excepts=("fd00:2::/48",)),), ("5432/tcp",)),))
    ev = evaluator6(v6)
    assert ev.verdict(WEB6.address6, DB6.address6, "tcp", 5432).allowed
    assert not ev.verdict(OTHER6.address6, DB6.address6, "tcp", 5432).allowed  # excepted
    assert not ev.verdict(WEB6.address, DB6.address, "tcp", 5432).allowed  # no IPv4 peer
    v4 = Policy("c4", "back", ("app=db",), ingress=(PolicyRule(
        (PolicyPeer(cidr="10.0.0.0/8"),), ()),))
    ev = evaluator6(v4)
    assert ev.verdict(WEB6.address, DB6.address, "udp", 1).allowed
    assert not ev.verdict(WEB6.address6, DB6.address6, "udp", 1).allowed
    validate_policy(v6)
    with pytest.raises(Invalid, match=r"policy.ingress\[0\].from\[0\].except\[0\]"):
        validate_policy(Policy("p", "back", (), ingress=(PolicyRule(
            (PolicyPeer(cidr="10.0.0.0/8", excepts=("fd00::/16",)),)),)))


def test_nft_writes_each_rule_in_both_families_with_one_comment() -> None:
    pols = (DB_FROM_WEB, Policy("c", "back", ("app=db",), ingress=(PolicyRule(
        (PolicyPeer(cidr="fd00:1::/48"), PolicyPeer(cidr="10.1.0.0/16")), ()),)))
    given = PolicyInput(pols, (WEB6, DB6, OTHER6), tuple(CIDRS.items()), tuple(CIDRS6.items()))
    tables = build(given)
    sets = dict(tables.sets)
    db_sel = policy_selector(DB_FROM_WEB)
    assert sets[set_name(db_sel)] == ("10.2.0.2",) and sets[set_name(db_sel, 6)] == ("fd00:2::2",)
    assert sets["iso6_in"] == ("fd00:2::2",) and sets["iso6_out"] == ()
    rules = [text for _, text in tables.rules]
    web6 = set_name(peer_selector(DB_FROM_WEB, DB_FROM_WEB.ingress[0].peers[0]), 6)
    assert (f"ip6 daddr @{set_name(db_sel, 6)} ip6 saddr @{web6} meta l4proto tcp th dport "
            '{ 5432 } counter return comment "sdnctl:policy/db-from-web/ingress/0"') in rules
    assert f'ip6 daddr @{set_name(db_sel, 6)} counter drop comment ' \
        '"sdnctl:policy/db-from-web/ingress/drop"' in rules
    assert 'ip6 daddr @iso6_in jump ingress comment "sdnctl:policy/ingress"' in rules
    cidr_rules = [r for r in rules if "policy/c/ingress/0" in r]
    assert len(cidr_rules) == 2  # each cidr in its own family only
    assert any("ip6 saddr fd00:1::/48" in r for r in cidr_rules)
    assert any("ip saddr 10.1.0.0/16" in r for r in cidr_rules)
    text = render(tables)
    assert f"add set inet sdnctl_policy {set_name(db_sel, 6)} {{ type ipv6_addr; }}" in text
    assert f"add element inet sdnctl_policy {set_name(db_sel, 6)} {{ fd00:2::2 }}" in text


def test_a_joiner_costs_its_selectors_sets_not_containers_times_rules() -> None:
    """The agent's update when one container joins a selector 100 policies use: its sets are
    refilled (two per family it has an address in), whatever the number of containers."""
    pols = tuple(Policy(f"p{i:03d}", "back", ("app=db",), ingress=(PolicyRule(
        (PolicyPeer(("app=web",)),), (f"{5000 + i}/tcp",)),)) for i in range(100))
    web_sets = {set_name(Selector("back", ("app=web",)), f) for f in (4, 6)}
    for others in (10, 1000):
        eps = tuple(Endpoint(f"c{i}", "back", f"10.2.{i // 250}.{i % 250 + 2}",
                             ("app=db",) if i % 2 else ("app=web",),
                             f"fd00:2::{i:x}") for i in range(others))
        cidrs, cidrs6 = (("back", "10.2.0.0/16"),), (("back", "fd00:2::/48"),)
        before = build(PolicyInput(pols, eps, cidrs, cidrs6))
        joiner = Endpoint("new", "back", "10.2.200.9", ("app=web",), "fd00:2::ffff")
        after = build(PolicyInput(pols, (*eps, joiner), cidrs, cidrs6))
        delta = render_delta(before, after)
        assert delta is not None
        lines = delta.splitlines()
        assert len(lines) == 4, lines  # flush + refill, per family, of app=web's set only
        assert {line.split()[4] for line in lines if line.startswith("flush")} == web_sets
        # the rules: a constant number per policy, whatever the containers
        assert len(after.rules) == 6 + 100 * 2 * 2
        assert len(after.sets) == 2 * 2 + 4


def test_the_policy_set_carries_ipv6_addresses_and_prefixes_to_the_agents() -> None:
    store = MemoryStore()
    state = State(store)
    state.create_host(Host("h1"))
    state.create_network(Network("back", "10.2.0.0/16", subnet6="fd00:2::/48"))
    state.create_container(Container("db", "h1", "back", labels=("app=db",)))
    policies.create_policy(store, Policy("p", "back", ("app=db",), ingress=(PolicyRule(
        (PolicyPeer(cidr="fd00::/16"),), ()),)))
    pset = policies.policy_set(store)
    (db,) = pset.endpoints
    assert db.address and db.address6.startswith("fd00:2:")
    assert pset.network_cidrs6 == (("back", "fd00:2::/48"),)
    desired = DesiredState()
    desired.apply(watch.snapshot_event(state.snapshot("h1"), watch.policy_set_pb(pset)))
    assert desired.policy.endpoints == pset.endpoints
    assert desired.policy.network_cidrs6 == pset.network_cidrs6
    sets = dict(build(desired.policy).sets)
    assert sets["iso6_in"] == (db.address6,)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_the_policy_set_moves_on_by_the_change_log_as_a_whole_read_would(
        kind: str, tmp_path: Path) -> None:
    """After each write (containers labelled or not, joined ones, a policy, a network's
    default deny, deletions) the cached set, moved on by the change log, equals the set read
    whole from the store; a container write reads no key but its own; and a compaction
    makes it read whole again."""
    store = MemoryStore() if kind == "memory" else SqliteStore(str(tmp_path / "s.db"))
    state = State(store)
    state.create_host(Host("h1"))
    state.create_network(Network("back", "10.2.0.0/16", subnet6="fd00:2::/48"))
    state.create_network(Network("front", "10.1.0.0/16"))

    def whole() -> policies.PolicySet:
        return policies._read_index(store).pset

    def same() -> None:
        moved = policies.policy_set(store)
        assert moved.revision == store.revision()
        assert moved == dataclasses.replace(whole(), revision=moved.revision)

    same()
    state.create_container(Container("plain", "h1", "front"))
    assert policies.policy_set(store).endpoints == ()  # no selector: no endpoint matters
    same()
    policies.create_policy(store, DB_FROM_WEB)
    same()
    state.create_container(Container("db", "h1", "back", labels=("app=db",)))
    state.create_container(Container("web", "h1", "front", labels=("app=web",)))
    state.create_container(Container("side", "h1", "container:db", labels=("app=db",)))
    same()
    assert {e.container for e in policies.policy_set(store).endpoints} >= {"db", "side"}
    state.update_network(dataclasses.replace(state.get_network("front")[0],
                                             default_policy="deny"))
    same()
    state.delete_container("side")
    state.delete_container("db")
    same()
    policies.delete_policy(store, DB_FROM_WEB.name)
    same()
    reads: list[str] = []
    real_range = store.range

    def counting(prefix: str, *args: object, **kwargs: object) -> object:
        reads.append(prefix)
        return real_range(prefix, *args, **kwargs)

    store.range = counting  # type: ignore[method-assign]
    state.create_container(Container("late", "h1", "front", labels=("app=web",)))
    same_reads = len(reads)
    policies.policy_set(store)
    assert len(reads) == same_reads  # moved on by the change log: no whole read
    store.range = real_range  # type: ignore[method-assign]
    same()
    store.close()


def test_the_policy_set_is_read_whole_again_behind_a_compaction(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"), history=1)  # each write trims the one before
    state = State(store)
    state.create_host(Host("h1"))
    state.create_network(Network("back", "10.2.0.0/16"))
    state.create_network(Network("front", "10.1.0.0/16"))
    policies.create_policy(store, DB_FROM_WEB)
    before = policies.policy_set(store)
    state.create_container(Container("db", "h1", "back", labels=("app=db",)))
    state.create_container(Container("db2", "h1", "back", labels=("app=db",)))
    after = policies.policy_set(store)
    assert after.revision > before.revision
    assert [e.container for e in after.endpoints] == ["db", "db2"]
    store.close()


def test_a_stream_takes_any_policy_set_as_new_as_its_changes() -> None:
    """``at_least``: a set as of that revision or later serves a Watch stream without asking
    the store; asked without it, the set is moved on to the store's revision; never older."""
    store = MemoryStore()
    state = State(store)
    state.create_host(Host("h1"))
    state.create_network(Network("back", "10.2.0.0/16"))
    state.create_network(Network("front", "10.1.0.0/16"))
    policies.create_policy(store, DB_FROM_WEB)
    state.create_container(Container("db", "h1", "back", labels=("app=db",)))
    change = store.revision()
    current = policies.policy_set(store)
    assert current.revision == change
    state.report_status("h1", [ContainerStatus("db", "running")], change)  # moves the store on
    assert store.revision() > change
    assert policies.policy_set(store, at_least=change) is current  # no read, no new set
    assert policies.policy_set(store).revision == store.revision()
    state.create_container(Container("db2", "h1", "back", labels=("app=db",)))
    newer = policies.policy_set(store, at_least=store.revision())  # never older than asked
    assert [e.container for e in newer.endpoints] == ["db", "db2"]
