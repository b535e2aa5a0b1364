"""Issues 10.2 and 21: drift is repaired as the kernel announces it, and nothing that is not
ours moves; what the kernel does not announce to the agent is repaired by the resync.

Two lab hosts on an overlay (one container each). In h1's namespace we first add things that
are NOT ours (an nftables table, a veth pair with an address and a route, a link named like ours
but without our alias) and snapshot the host. Then, one at a time, someone else changes our
state behind the agent's back; the host must be back to the snapshot (theirs included), the
agent must log the repair, and the containers must still reach each other. The agents' resync
is ten minutes here, so only the announcements (``agent/drift.py``) can repair within the
test's bound; how soon (well under a second) is measured by bench/reliability.py. A change
inside a container's namespace is not announced to the agent: a second test proves the resync
(two seconds there) still repairs it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.cli import Cli, lab_cli, nsexec, ping
from helpers.hoststate import HostState, agent_log, host_state, wait_for

from agent.names import ifb_name, veth_name, vxlan_name

pytestmark = pytest.mark.netns

#: The agents' resync in the announcement tests: far beyond any bound below.
RESYNC = 600.0
#: A safety bound on one repair by an announcement (measured: well under a second; a loaded
#: 2-core machine), far below the resync interval, so that a repair proves the announcement.
REPAIR_TIMEOUT = 20.0
#: The resync of the safety-net test, and its bound (one interval plus the pass, loaded).
SHORT_RESYNC = 2.0
RESYNC_TIMEOUT = 60.0

TOPOLOGY = """\
name: drift
hosts:
  - {name: h1, lab: true}
  - {name: h2, lab: true}
networks:
  - {name: ov, driver: overlay, subnet: 10.73.0.0/16}
containers:
  - {name: a, host: h1, network: ov, command: [sleep, "3600"]}
  - {name: b, host: h2, network: ov, command: [sleep, "3600"]}
"""

THEIRS = [  # commands run in h1's namespace: state that is not the agent's
    ["nft", "add table inet mine"],
    ["nft", "add chain inet mine input { type filter hook input priority 10 ; }"],
    ["nft", "add rule inet mine input tcp dport 9999 counter accept"],
    ["ip", "link", "add", "mydummy0", "type", "veth", "peer", "name", "mydummy1"],
    ["ip", "addr", "add", "198.18.0.1/24", "dev", "mydummy0"],
    ["ip", "link", "set", "mydummy1", "up"],
    ["ip", "link", "set", "mydummy0", "up"],
    ["ip", "route", "add", "198.18.5.0/24", "via", "198.18.0.2", "dev", "mydummy0"],
    ["ip", "link", "add", "sdnzmine", "type", "bridge"],
    ["ip", "link", "add", "sdnvmine", "type", "bridge"],
    ["ip", "link", "set", "sdnvmine", "alias", "mine:not-sdnctl"],
]


@contextlib.contextmanager
def drift_lab(path: Path, prefix: str, resync: float) -> Iterator[Cli]:
    """The topology up, its agents resyncing every ``resync`` seconds."""
    path.write_text(TOPOLOGY)
    with lab_cli(prefix) as c:
        c.env["SDNCTL_RESYNC"] = str(resync)
        c.run("up", str(path))
        yield c


@pytest.fixture
def cli(tmp_path: Path, run_prefix: str) -> Iterator[Cli]:
    with drift_lab(tmp_path / "drift.yaml", run_prefix, RESYNC) as c:
        yield c


def sh(netns: str, *argv: str) -> None:
    done = nsexec(netns, *argv)
    assert done.returncode == 0, (argv, done.stderr)


def drift_cases(cli: Cli, prefix: str) -> list[tuple[str, Callable[[], None], str]]:
    """(what, how to make it, the agent's log line for its repair): drift of h1's state."""
    h1 = f"/run/netns/{prefix}h1"
    h2 = cli.host("h2")
    device = vxlan_name("ov")
    h2_subnet = next(s["subnet"] for s in h2["subnets"])
    mac = get_fdb_mac(h1)
    return [
        ("nftables table deleted", lambda: sh(h1, "nft", "delete", "table", "inet", "sdnctl"),
         "repair: nftables tables sdnctl"),
        ("peer route removed", lambda: sh(h1, "ip", "route", "del", h2_subnet, "dev", device),
         f"repair: peer h2 on {device}"),
        ("FDB entry removed", lambda: sh(h1, "bridge", "fdb", "del", mac, "dev", device, "dst",
                                         h2["underlay_ip"]),
         f"repair: peer h2 on {device}"),
        ("container veth deleted", lambda: sh(h1, "ip", "link", "del", veth_name("a", "eth0")),
         "repair: container 'a': link"),
        ("ip_forward off", lambda: sh(h1, "sysctl", "-qw", "net.ipv4.ip_forward=0"),
         "repair: sysctl net.ipv4.ip_forward=1"),
    ]


def test_drift_is_repaired_as_announced_and_theirs_is_untouched(
        cli: Cli, run_prefix: str) -> None:
    h1 = f"/run/netns/{run_prefix}h1"
    for argv in THEIRS:
        sh(h1, *argv[:1], *(argv[1].split() if argv[0] == "nft" else argv[1:]))
    a, b = cli.container("a"), cli.container("b")
    assert ping(a["netns"], b["ip"])
    wait_for(lambda: get_fdb_mac(h1), 10, "h1's FDB entry for h2")
    before = host_state(cli, run_prefix, rows=False)
    figures = []
    cases = drift_cases(cli, run_prefix)
    for what, drift, logged in cases:
        # Repaired, and as announced (the resync is far away): how soon is bench's business
        # (bench/reliability.py), the test only has a safety bound.
        took = time_to_repair(cli, run_prefix, before, what, drift, logged)
        figures.append(f"{what}: {took:.2f} s")
        assert ping(a["netns"], b["ip"]), what
    print("\ndrift repair (as announced): " + "; ".join(figures))
    # Every repair is in `sdnctl events` too, as the agent's (issue 23).
    for what, _, logged in cases:
        wanted = ": " + logged.removeprefix("repair: ")

        def in_events(wanted: str = wanted) -> bool:
            return any("agent:h1" in line and " repair " in line and wanted in line
                       for line in cli.run("events").stdout.splitlines())

        wait_for(in_events, 10, f"{what}: repair event")
    # Theirs is still there, exactly as made (the snapshot holds it; checked once more by name).
    assert "table inet mine" in nsexec(h1, "nft", "list", "tables").stdout
    links = nsexec(h1, "ip", "-o", "link").stdout
    assert "mydummy0" in links and "sdnzmine" in links and "sdnvmine" in links


def test_drift_the_agent_is_not_told_of_is_repaired_by_the_resync(
        tmp_path: Path, run_prefix: str) -> None:
    """Addresses taken from a container's interface inside its namespace: the agent listens
    to its host's namespace only, so no announcement tells it; the resync puts them back."""
    with drift_lab(tmp_path / "drift.yaml", run_prefix, SHORT_RESYNC) as cli:
        a, b = cli.container("a"), cli.container("b")
        assert ping(a["netns"], b["ip"])
        logged = "repair: container 'a': link"
        seen = agent_log(cli, run_prefix).count(logged)
        sh(a["netns"], "ip", "addr", "flush", "dev", "eth0")
        assert not ping(a["netns"], b["ip"]) or agent_log(cli, run_prefix).count(logged) > seen
        wait_for(lambda: agent_log(cli, run_prefix).count(logged) > seen, RESYNC_TIMEOUT,
                 f"the log line {logged!r}")
        assert ping(a["netns"], b["ip"])


def time_to_repair(cli: Cli, prefix: str, before: HostState, what: str,
                   drift: Callable[[], None], logged: str) -> float:
    """Make the drift, then wait until the host equals ``before`` again and the agent has
    logged ``logged`` once more; return how long the host took from the drift's command on
    (an upper bound: it includes that command and the looks, each several processes)."""
    seen = agent_log(cli, prefix).count(logged)
    started = time.monotonic()  # (so the time includes the command that makes the drift)
    drift()
    # The drift is seen, or already repaired: the repair may come between the drift and the
    # look, which takes several processes; the repair's log line then proves it (written
    # after the repair: it may come an instant after the look found the host as before).
    wait_for(lambda: host_state(cli, prefix, rows=False).diff(before)
             or agent_log(cli, prefix).count(logged) > seen, REPAIR_TIMEOUT,
             f"{what}: a drift made (the host differs, or the agent logs {logged!r})")
    last: list[str] = []

    def repaired() -> bool:
        last[:] = before.diff(host_state(cli, prefix, rows=False))
        return not last

    try:
        wait_for(repaired, REPAIR_TIMEOUT, f"{what}: repair")
    except AssertionError as e:
        raise AssertionError(f"{e}; still differs: {last}") from None
    took = time.monotonic() - started
    wait_for(lambda: agent_log(cli, prefix).count(logged) > seen, REPAIR_TIMEOUT,
             f"{what}: the log line {logged!r}")
    return took


def get_fdb_mac(netns: str) -> str:
    """The MAC of the one FDB entry with a destination on our VXLAN device."""
    out = nsexec(netns, "bridge", "fdb", "show", "dev", vxlan_name("ov")).stdout
    for line in out.splitlines():
        if " dst " in line:
            return line.split()[0]
    return ""


def _tbf_rate(netns: str, device: str) -> int:
    """The rate (bytes/s) of ``device``'s root TBF, 0 without one."""
    done = nsexec(netns, "tc", "-j", "qdisc", "show", "dev", device)
    assert done.returncode == 0, done.stderr
    return next((int(q["options"]["rate"]) for q in json.loads(done.stdout)
                 if q.get("kind") == "tbf" and q.get("root")), 0)


def test_bandwidth_limits_removed_by_hand_come_back_with_the_resync(
        cli: Cli, run_prefix: str) -> None:
    """A full pass reads every qdisc back (one dump) and puts back a limit removed by hand, on
    the veth (into the container) and on its IFB (out of it)."""
    cli.run("run", "--name", "bw", "--host", "h1", "--network", "ov", "--ingress", "5mbit",
            "--egress", "3mbit")
    h1 = f"/run/netns/{run_prefix}h1"
    veth = veth_name("bw", "eth0")
    ifb = ifb_name(veth)
    wanted = (625_000, 375_000)
    wait_for(lambda: (_tbf_rate(h1, veth), _tbf_rate(h1, ifb)) == wanted, REPAIR_TIMEOUT,
             "the limits")
    sh(h1, "tc", "qdisc", "del", "dev", veth, "root")
    sh(h1, "tc", "qdisc", "del", "dev", ifb, "root")
    wait_for(lambda: (_tbf_rate(h1, veth), _tbf_rate(h1, ifb)) == wanted, REPAIR_TIMEOUT,
             "the limits back")
