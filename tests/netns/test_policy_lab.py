"""Network policy, as a truth table (issue 22), in the manner of Kubernetes' network-policy
conformance tools: a grid of containers on two dual-stack overlay networks across two lab
hosts, policies generated from a fixed seed (label, network and cidr peers, cidrs of both
families), the expected matrix from a reference model written HERE (it does not use sdnctl's
evaluation), the real matrix probed with TCP and UDP on two ports from inside every container to
every other's IPv4 AND IPv6 address, and every mismatch printed as a table. IPv6 that policies
dropped wholesale, or let through without evaluating them, fails the IPv6 half.

One round in the default run; ``SDNCTL_POLICY_ROUNDS=N`` (``make fuzz``) runs N rounds, each
with new policies on the same lab. ``SDNCTL_POLICY_SEED`` changes the seed.

Also: `sdnctl policy ls/inspect --json` show what was created (inspect names the selected
containers), and the agents' counters name the policy that dropped a probe.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import secrets
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import Cli, lab_cli, nsexec

from agent.kernel.policyfw import counters

pytestmark = pytest.mark.netns

HOSTS = ("h1", "h2")
NETWORKS = {"na": "10.61.0.0/16", "nb": "10.62.0.0/16"}
NETWORKS6 = {"na": "fd00:61::/48", "nb": "fd00:62::/48"}
FAMILIES = (4, 6)
ROLES = ("x", "y")
PORTS = (5001, 5002)
PROTOCOLS = ("tcp", "udp")
ROUNDS = int(os.environ.get("SDNCTL_POLICY_ROUNDS", "1"))
SEED = int(os.environ.get("SDNCTL_POLICY_SEED", "22"))

# Every container answers TCP (the kernel completes the handshake) and UDP (an echo) on both
# ports, in both families (dual-stack sockets), from one process.
SERVER = """
import selectors, socket
sel = selectors.DefaultSelector()
for port in (5001, 5002):
    t = socket.create_server(('::', port), family=socket.AF_INET6, dualstack_ipv6=True)
    t.setblocking(False); sel.register(t, 1, 't')
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); u.bind(('::', port))
    sel.register(u, 1, 'u')
while True:
    for key, _ in sel.select():
        s = key.fileobj
        if key.data == 't':
            c, _ = s.accept(); c.close()
        else:
            data, peer = s.recvfrom(64); s.sendto(data, peer)
"""

# Run inside a container's network namespace: every probe at once, a verdict each.
PROBER = """
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
def probe(target):
    ip, proto, port = target
    kind = socket.SOCK_STREAM if proto == 'tcp' else socket.SOCK_DGRAM
    family = socket.AF_INET6 if ':' in ip else socket.AF_INET
    s = socket.socket(family, kind); s.settimeout(1.5)
    try:
        s.connect((ip, port))
        if proto == 'udp':
            s.send(b'ping'); s.recv(64)
        return 'open'
    except ConnectionRefusedError:
        return 'refused'
    except OSError:
        return 'filtered'
    finally:
        s.close()
targets = json.loads(sys.argv[1])
with ThreadPoolExecutor(len(targets) or 1) as pool:
    print(json.dumps(list(pool.map(probe, targets))))
"""


def container_names() -> list[str]:
    return [f"{role}-{net}-{host}" for host in HOSTS for net in NETWORKS for role in ROLES]


def labels_of(name: str) -> dict[str, str]:
    role, net, host = name.split("-")
    return {"role": role, "tier": "1" if host == "h1" else "2", "net": net}


#: A joined container: its labels select its donor's address too (policies act on addresses).
DONOR = "x-na-h1"
SIDECAR_LABELS = {"role": "y", "tier": "2", "net": "na"}


def topology() -> str:
    containers = [{"name": n, "host": n.split("-")[2], "network": n.split("-")[1],
                   "labels": labels_of(n), "command": ["/usr/bin/python3", "-c", SERVER]}
                  for n in container_names()]
    containers.append({"name": "sidecar", "host": "h1", "network": f"container:{DONOR}",
                       "labels": SIDECAR_LABELS})
    doc = {"name": "pol", "hosts": [{"name": h, "lab": True} for h in HOSTS],
           "networks": [{"name": "na", "driver": "overlay", "subnet": NETWORKS["na"],
                         "subnet6": NETWORKS6["na"]},
                        {"name": "nb", "driver": "overlay", "subnet": NETWORKS["nb"],
                         "subnet6": NETWORKS6["nb"], "default": "deny"}],
           "routes": [["na", "nb"]], "containers": containers}
    return json.dumps(doc, indent=1)


# -- the reference model: Kubernetes NetworkPolicy semantics, written out plainly ---------------

def implied_policies() -> list[dict[str, Any]]:
    """``default: deny`` on nb: every container of nb isolated for ingress."""
    return [{"name": "nb-default", "network": "nb", "select": {}, "ingress": []}]


def in_scope(scope: str, ctr: dict[str, Any]) -> bool:
    return scope == "all" or ctr["network"] == scope


def has_labels(wanted: dict[str, str], ctr: dict[str, Any]) -> bool:
    """Any container at ``ctr``'s address (it, and containers joined to it) has them all."""
    return any(all(labels.get(k) == v for k, v in wanted.items())
               for labels in [ctr["labels"], *ctr.get("joined", [])])


def selects(policy: dict[str, Any], ctr: dict[str, Any]) -> bool:
    return in_scope(policy.get("network", "all"), ctr) and has_labels(policy["select"], ctr)


def inside(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, cidr: str) -> bool:
    net = ipaddress.ip_network(cidr)
    return ip.version == net.version and ip in net


def peer_matches(policy: dict[str, Any], peer: dict[str, Any], other: dict[str, Any],
                 family: int) -> bool:
    """Whether ``peer`` covers ``other`` for a packet of ``family`` (at its address there)."""
    ip = ipaddress.ip_address(other["ip6" if family == 6 else "ip"])
    if "cidr" in peer:
        return inside(ip, peer["cidr"]) and not any(
            inside(ip, x) for x in peer.get("except", []))
    if "labels" in peer:
        scope = peer.get("network", policy.get("network", "all"))
        return in_scope(scope, other) and has_labels(peer["labels"], other)
    return other["network"] == peer["network"]


def port_matches(rule: dict[str, Any], proto: str, port: int) -> bool:
    if not rule.get("ports"):
        return True
    for text in rule["ports"]:
        ports, _, p = str(text).partition("/")
        first, _, last = ports.partition("-")
        if (p or "tcp") == proto and int(first) <= port <= int(last or first):
            return True
    return False


def side_allows(policies: list[dict[str, Any]], ctr: dict[str, Any], other: dict[str, Any],
                direction: str, proto: str, port: int, family: int) -> bool:
    side = "from" if direction == "ingress" else "to"
    isolating = [p for p in policies if p.get(direction) is not None and selects(p, ctr)]
    if not isolating:
        return True
    return any(port_matches(rule, proto, port)
               and (not rule.get(side) or any(peer_matches(p, peer, other, family)
                                              for peer in rule[side]))
               for p in isolating for rule in p[direction])


def expected(policies: list[dict[str, Any]], src: dict[str, Any], dst: dict[str, Any],
             proto: str, port: int, family: int) -> bool:
    return (side_allows(policies, src, dst, "egress", proto, port, family)
            and side_allows(policies, dst, src, "ingress", proto, port, family))


# -- generated policies ----------------------------------------------------------------------

def random_labels(rng: random.Random) -> dict[str, str]:
    choices = {"role": list(ROLES), "tier": ["1", "2"], "net": list(NETWORKS)}
    keys = rng.sample(sorted(choices), rng.choice((0, 1, 1, 2)))
    return {k: rng.choice(choices[k]) for k in keys}


def random_peer(rng: random.Random, ctrs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    kind = rng.choice(("labels", "labels", "labels-net", "network", "cidr", "cidr-except",
                       "cidr6", "cidr6-except"))
    if kind == "labels":
        return {"labels": random_labels(rng)}
    if kind == "labels-net":
        return {"labels": random_labels(rng), "network": rng.choice(list(NETWORKS))}
    if kind == "network":
        return {"network": rng.choice(list(NETWORKS))}
    if kind == "cidr":
        return {"cidr": f"{rng.choice(list(ctrs.values()))['ip']}/32"}
    if kind == "cidr6":
        return {"cidr": f"{rng.choice(list(ctrs.values()))['ip6']}/128"}
    net = rng.choice(list(NETWORKS))
    there = [c for c in ctrs.values() if c["network"] == net]
    if kind == "cidr6-except":
        return {"cidr": NETWORKS6[net], "except": [f"{rng.choice(there)['ip6']}/128"]}
    return {"cidr": NETWORKS[net], "except": [f"{rng.choice(there)['ip']}/32"]}


def random_rules(rng: random.Random, side: str,
                 ctrs: dict[str, dict[str, Any]]) -> list[dict[str, Any]] | None:
    shape = rng.choice(("absent", "absent", "empty", "rules", "rules", "rules"))
    if shape == "absent":
        return None
    if shape == "empty":
        return []
    rules = []
    for _ in range(rng.choice((1, 1, 2))):
        rule: dict[str, Any] = {}
        peers = [random_peer(rng, ctrs) for _ in range(rng.choice((0, 1, 1, 2)))]
        if peers:
            rule[side] = peers
        ports = rng.choice(([], ["5001/tcp"], ["5002"], ["5001/udp", "5002/tcp"],
                            ["5001-5002/udp"]))
        if ports:
            rule["ports"] = ports
        rules.append(rule)
    return rules


def random_policies(rng: random.Random, ctrs: dict[str, dict[str, Any]],
                    count: int) -> list[dict[str, Any]]:
    policies = []
    while len(policies) < count:
        policy: dict[str, Any] = {"name": f"gen-{len(policies)}"}
        scope = rng.choice(("na", "nb", "all"))
        if scope == "all":
            policy["networks"] = "all"
        else:
            policy["network"] = scope
        policy["select"] = random_labels(rng)
        for direction, side in (("ingress", "from"), ("egress", "to")):
            rules = random_rules(rng, side, ctrs)
            if rules is not None:
                policy[direction] = rules
        if "ingress" in policy or "egress" in policy:
            policies.append(policy)
    return policies


def model_form(policy: dict[str, Any]) -> dict[str, Any]:
    """The file's ``networks: all`` as the model's scope."""
    out = dict(policy)
    out["network"] = out.pop("networks", None) or out.get("network")
    return out


# -- the lab --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[Cli, dict[str, dict[str, Any]]]]:
    path = tmp_path_factory.mktemp("policy") / "pol.yaml"
    path.write_text(topology())
    with lab_cli("p" + secrets.token_hex(3)[:5]) as cli:
        cli.run("up", str(path), timeout=300)
        ctrs = {}
        for name in container_names():
            info = cli.container(name)
            assert info["ip6"], f"{name} has no IPv6 address on a dual-stack network"
            ctrs[name] = {"name": name, "ip": info["ip"], "ip6": info["ip6"],
                          "netns": info["netns"], "network": name.split("-")[1],
                          "labels": labels_of(name)}
        ctrs[DONOR]["joined"] = [SIDECAR_LABELS]
        for c in ctrs.values():
            wait_udp_and_tcp(c["netns"])
        cli.files["grid-file"] = str(path)
        yield cli, ctrs
        cli.run("down", str(path))


def wait_udp_and_tcp(netns: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        tcp = nsexec(netns, "ss", "-Hltn", "sport = :5002").stdout.strip()
        udp = nsexec(netns, "ss", "-Hlun", "sport = :5002").stdout.strip()
        if tcp and udp:
            return
        assert time.monotonic() < deadline, f"the test server does not listen in {netns}"
        time.sleep(0.1)


def apply_policies(cli: Cli, tmp: Path, policies: list[dict[str, Any]]) -> None:
    """Create them and wait until every host's agent realised the last write."""
    old = [p["name"] for p in cli.json("policy", "ls")]
    if old:
        cli.run("policy", "rm", *old)
    if policies:
        path = tmp / "policies.yaml"
        path.write_text(json.dumps({"policies": policies}))
        cli.run("policy", "create", "-f", str(path))
    revision = max([p["revision"] for p in cli.json("policy", "ls")] or [0])
    deadline = time.monotonic() + 30
    while not all(cli.host(h)["observed_revision"] >= revision for h in HOSTS):
        assert time.monotonic() < deadline, "the agents did not realise the policies"
        time.sleep(0.1)


Key = tuple[str, str, str, int, int]  # from, to, protocol, port, family


def probe_matrix(ctrs: dict[str, dict[str, Any]]) -> dict[Key, str]:
    """Every container probes every other at both its addresses, all sources at once (a
    process each, a thread per probe)."""
    by_ip = {c[field]: (c["name"], family) for c in ctrs.values()
             for field, family in (("ip", 4), ("ip6", 6))}

    def from_source(src: dict[str, Any]) -> dict[Key, str]:
        targets = [(dst[field], proto, port) for dst in ctrs.values() if dst is not src
                   for field in ("ip", "ip6") for proto in PROTOCOLS for port in PORTS]
        done = nsexec(src["netns"], "/usr/bin/python3", "-c", PROBER, json.dumps(targets),
                      timeout=60)
        assert done.returncode == 0, done.stderr
        return {(src["name"], *by_ip[ip][:1], proto, port, by_ip[ip][1]): outcome
                for (ip, proto, port), outcome in zip(targets, json.loads(done.stdout),
                                                      strict=True)}

    results: dict[Key, str] = {}
    with ThreadPoolExecutor(len(ctrs)) as pool:
        for part in pool.map(from_source, ctrs.values()):
            results.update(part)
    return results


def mismatch_table(rows: list[tuple[str, str, str, int, int, bool, str]]) -> str:
    header = ("FROM", "TO", "PROTO", "PORT", "IP", "EXPECTED", "PROBED")
    cells = [header] + [(s, d, p, str(n), f"v{f}", "open" if e else "filtered", g)
                        for s, d, p, n, f, e, g in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
                     for r in cells)


def test_policy_truth_table(grid: tuple[Cli, dict[str, dict[str, Any]]],
                            tmp_path: Path) -> None:
    cli, ctrs = grid
    rng = random.Random(SEED)
    for round_no in range(ROUNDS):
        generated = random_policies(rng, ctrs, 6)
        apply_policies(cli, tmp_path, generated)
        model = [model_form(p) for p in generated] + implied_policies()
        probed = probe_matrix(ctrs)
        want = {key: expected(model, ctrs[key[0]], ctrs[key[1]], key[2], key[3], key[4])
                for key in probed}
        for family in FAMILIES:
            wanted = [want[k] for k in want if k[4] == family]
            assert any(wanted) and not all(wanted), \
                f"a round must expect both open and filtered IPv{family} pairs (a useless seed)"
        bad = [(*key, want[key], got) for key, got in sorted(probed.items())
               if (got == "open") != want[key]]
        assert not bad, (f"round {round_no} (seed {SEED}): {len(bad)} of {len(probed)} probes "
                         f"differ from the model\npolicies: {json.dumps(generated)}\n"
                         f"{mismatch_table(bad)}")


def test_policy_cli_shows_selection_and_counters(grid: tuple[Cli, dict[str, dict[str, Any]]],
                                                  tmp_path: Path) -> None:
    cli, ctrs = grid
    apply_policies(cli, tmp_path, [])
    # `check` expects what the file's `default: deny` on nb allows: nothing into nb
    # (check's model of routing between two overlays across hosts is older than policies and
    # expects less than the lab does: only the policy part is asserted here)
    report = json.loads(cli.run("check", cli.files["grid-file"], "--json", check=False).stdout)
    into_nb = [p for p in report["probes"] if p["to"].split("-")[1:2] == ["nb"]]
    within_na = [p for p in report["probes"] if p["to"].split("-")[1:2] == ["na"]
                 and p["from"].split("-")[1:3] == ["na", p["to"].split("-")[2]]]
    assert within_na and all(p["expected"] == "open" and p["match"] for p in within_na)
    assert into_nb and all(p["expected"] == "filtered" and p["match"] for p in into_nb), \
        [p for p in into_nb if not p["match"]]
    assert any("policy default/nb" in p["why"] for p in into_nb)
    policy = {"name": "x-only-from-y", "network": "na", "select": {"role": "x"},
              "ingress": [{"from": [{"labels": {"role": "y"}}], "ports": ["5001/tcp"]}]}
    apply_policies(cli, tmp_path, [policy])
    (shown,) = cli.json("policy", "inspect", "x-only-from-y")
    assert shown["selected"] == ["x-na-h1", "x-na-h2"]
    assert shown["ingress"] == [{"from": [{"labels": {"role": "y"}}], "ports": ["5001/tcp"]}]
    src, dst = ctrs["y-na-h2"], ctrs["x-na-h1"]
    allowed = probe_one(src, dst["ip"], "tcp", 5001)
    denied = probe_one(src, dst["ip"], "tcp", 5002)
    assert (allowed, denied) == ("open", "filtered")
    # counted per policy and rule, on the sender's host (every host holds the whole set)
    counted = policy_counters(cli, "h2")
    drop, rule = ("x-only-from-y", "ingress", "drop"), ("x-only-from-y", "ingress", "0")
    assert counted[drop] >= 1 and counted[rule] >= 1, counted
    allowed6 = probe_one(src, dst["ip6"], "tcp", 5001)  # the same rule, in IPv6
    denied6 = probe_one(src, dst["ip6"], "tcp", 5002)
    assert (allowed6, denied6) == ("open", "filtered")
    counted6 = policy_counters(cli, "h2")  # IPv6 is counted by the same policy and rule
    assert counted6[drop] > counted[drop] and counted6[rule] > counted[rule], (counted, counted6)
    trace = cli.run("trace", "y-na-h2", "x-na-h1", "--proto", "tcp", "--port", "5002",
                    check=False)
    assert "x-only-from-y" in trace.stdout + trace.stderr, trace.stdout + trace.stderr
    trace6 = cli.run("trace", "-6", "y-na-h2", "x-na-h1", "--proto", "tcp", "--port", "5002",
                     check=False)
    assert "x-only-from-y" in trace6.stdout + trace6.stderr, trace6.stdout + trace6.stderr
    # a container that arrives while the policy is in force is covered from its start
    cli.run("run", "--name", "late", "--host", "h2", "--network", "na", "--label", "role=x",
            "--", "/usr/bin/python3", "-c", SERVER)
    try:
        late = cli.container("late")
        wait_udp_and_tcp(late["netns"])
        assert probe_one(src, late["ip"], "tcp", 5001) == "open"
        assert probe_one(src, late["ip"], "tcp", 5002) == "filtered"
        assert probe_one(src, late["ip6"], "tcp", 5001) == "open"
        assert probe_one(src, late["ip6"], "tcp", 5002) == "filtered"
    finally:
        cli.run("rm", "late", check=False)


def policy_counters(cli: Cli, host: str) -> dict[tuple[str, str, str], int]:
    listing = nsexec(cli.host(host)["netns"], "nft", "-j", "list", "table", "inet",
                     "sdnctl_policy")
    return counters([i["rule"] for i in json.loads(listing.stdout)["nftables"] if "rule" in i])


def probe_one(src: dict[str, Any], ip: str, proto: str, port: int) -> str:
    done = nsexec(src["netns"], "/usr/bin/python3", "-c", PROBER,
                  json.dumps([[ip, proto, port]]))
    assert done.returncode == 0, done.stderr
    outcome: str = json.loads(done.stdout)[0]
    return outcome


# -- bandwidth (issue 22) --------------------------------------------------------------------

def iperf(receiver: dict[str, Any], sender: dict[str, Any], seconds: int = 3) -> float:
    """Mbit/s on the wire, as a token bucket counts them, that ``receiver`` took in from
    ``sender``, as the receiver measured it: the iperf3 client runs in the receiver with
    ``-R`` (the server in the sender sends), and the rate is that of its whole one-second
    intervals after the first (slow start, the full bucket), the last left out too: at the end
    a busy receiver still drains what the shaper had queued (~latency x rate) before it reads
    the end of the test, and the whole-test figure counted that in (11.3 Mbit/s at a limit of
    10 under CI's load). iperf3 counts TCP payload: each segment of MSS bytes is MSS + 66 in
    the frame the bucket is charged for (Ethernet 14, IPv4 20, TCP with timestamps 32), ~4.5 %
    more at MSS 1448. The socket buffers are capped (``-w``): a receiver starved in the
    omitted second read its backlog in the kept ones, and an autotuned buffer held enough
    of it to read 11.3 Mbit/s at a limit of 10 in CI again (the window needed here is tiny)."""
    listener = subprocess.Popen(["nsenter", f"--net={sender['netns']}", "iperf3", "-s", "-1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening_tcp(sender["netns"], 5201)
        done = nsexec(receiver["netns"], "iperf3", "-c", sender["ip"], "-R", "-J",
                      "-t", str(seconds + 1), "-O", "1", "-w", "128K", timeout=30)
    finally:
        listener.kill()
        listener.wait()
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    kept = [i["sum"] for i in result["intervals"] if not i["sum"].get("omitted")][:-1]
    assert len(kept) >= 1, done.stdout[-2000:]
    mss = int(result["start"].get("tcp_mss_default") or 1448)
    rate = sum(i["bytes"] for i in kept) * 8 / sum(i["seconds"] for i in kept)
    return rate * (mss + 66) / mss / 1e6


def test_bandwidth_limits_set_changed_and_removed_in_place(
        grid: tuple[Cli, dict[str, dict[str, Any]]], tmp_path: Path) -> None:
    cli, ctrs = grid
    apply_policies(cli, tmp_path, [])
    cli.run("run", "--name", "bw", "--host", "h1", "--network", "na", "--ingress", "20mbit",
            "--egress", "10mbit")
    try:
        bw = cli.container("bw")
        assert (bw["resources"]["ingress_bps"], bw["resources"]["egress_bps"]) == \
            (20_000_000, 10_000_000)
        client = ctrs["x-na-h1"]
        into, out = near_limit(bw, client, 20, 2), near_limit(client, bw, 10, 1)
        print(f"limits 20/10 Mbit/s: measured {into} in, {out} out")
        pid = bw["pid"]
        cli.run("update", "bw", "--ingress", "5mbit", "--egress", "")
        bw = cli.container("bw")
        assert bw["pid"] == pid, "a new limit must not restart the container"
        assert (bw["resources"]["ingress_bps"], bw["resources"]["egress_bps"]) == (5_000_000, 0)
        into, out = near_limit(bw, client, 5, 0.5), iperf(client, bw, seconds=1)
        print(f"limits 5/none Mbit/s: measured {into} in, {out:.2f} out")
        assert out > 50, (into, out)
    finally:
        cli.run("rm", "bw", check=False)


def near_limit(receiver: dict[str, Any], sender: dict[str, Any], limit: float,
               within: float, tries: int = 3) -> list[float]:
    """Measure ``receiver``'s rate from ``sender`` (Mbit/s) until it is within ``within`` of
    ``limit``; returns the measurements. Every one must stay under ``limit + within`` (the
    limit holds); one reaching ``limit - within`` shows the limit is not lower than set. Only
    that lower bound is retried: a receiver or sender starved by the rest of the run (2 cores,
    two workers) measured 6.1 Mbit/s at a limit of 10 once in CI."""
    measured: list[float] = []
    while len(measured) < tries:
        measured.append(round(iperf(receiver, sender), 2))
        assert measured[-1] <= limit + within, (limit, measured)
        if measured[-1] >= limit - within:
            return measured
    raise AssertionError(f"never near the limit of {limit} Mbit/s: {measured}")


def wait_listening_tcp(netns: str, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not nsexec(netns, "ss", "-Hltn", f"sport = :{port}").stdout.strip():
        assert time.monotonic() < deadline, f"nothing listens on tcp/{port} in {netns}"
        time.sleep(0.1)
