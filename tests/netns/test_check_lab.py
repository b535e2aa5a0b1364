"""`sdnctl check` against a real lab: it passes on a healthy topology, and it catches what we
break by hand inside the lab host's namespace (a blackhole route, a drop rule in a table of our
own) and an `expect:` of isolation that the topology does not keep, naming the failing pairs.
It tells the three outcomes of a TCP probe apart: a port that listens (open), one that answers
with a reset (refused) and one behind isolation (filtered), and a refusal matches neither
`reach: true` nor `reach: false`.

We act through the CLI and break things with `ip` and `nft` inside the lab host's namespace only
(never the root namespace); the lab and everything in it goes with `down`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.cli import Cli, lab_cli, nsexec, wait_listening

pytestmark = pytest.mark.netns

# front and back are routed to each other; vault-net is isolated and internal.
TOPOLOGY = """\
name: chk
hosts:
  - {name: h1, lab: true}
networks:
  - {name: front, subnet: 10.90.0.0/24}
  - {name: back, subnet: 10.91.0.0/24}
  - {name: vault-net, subnet: 10.92.0.0/24, internal: true}
routes:
  - [front, back]
containers:
  - {name: web, host: h1, network: front}
  - {name: api, host: h1, network: back}
  - {name: db, host: h1, network: back, ip: 10.91.0.10, command: [/usr/bin/python3, -c, *listen]}
  - {name: cache, host: h1, network: vault-net, command: [/usr/bin/python3, -c, *listen]}
  - {name: sidecar, host: h1, network: "container:web"}
  - {name: vault, host: h1, network: none}
  - {name: probe, host: h1, network: host}
expect:
  - {from: web, to: db, port: 5432}
  - {from: web, to: db, port: 5433, reach: refused}
  - {from: web, to: cache, port: 5432, reach: filtered}
  - {from: api, to: db, proto: udp, port: 53, reach: refused}
  - {from: web, to: external, port: 80, reach: refused}
  - {from: cache, to: external, port: 80, reach: false}
"""
# db and cache listen on tcp/5432 (the kernel completes handshakes; nobody needs to accept).
LISTEN = "import signal, socket; s = socket.create_server(('', 5432)); signal.pause()"
TOPOLOGY = TOPOLOGY.replace("*listen", json.dumps(LISTEN))
PORT_LINES = {line: i + 1 for i, line in enumerate(TOPOLOGY.splitlines())}


@pytest.fixture
def cli(run_prefix: str) -> Iterator[Cli]:
    with lab_cli(run_prefix) as c:
        yield c


@pytest.fixture
def topo_file(tmp_path: Path, cli: Cli) -> Iterator[str]:
    path = tmp_path / "chk.yaml"
    path.write_text(TOPOLOGY)
    cli.run("up", str(path))
    for name in ("db", "cache"):
        wait_listening(cli.container(name)["netns"], 5432)
    yield str(path)
    cli.run("down", str(path))


def mismatches(stdout: str) -> list[str]:
    text = stdout.split("MISMATCHES\n", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in text.splitlines()]


def test_check_passes_on_a_healthy_topology_and_catches_a_violated_isolation(
        cli: Cli, topo_file: str, tmp_path: Path) -> None:
    done = cli.run("check", topo_file)  # its duration: bench/reliability.py
    assert done.returncode == 0
    assert "✘" not in done.stdout and "MISMATCHES" not in done.stdout
    assert done.stdout.splitlines()[0].split() == ["icmp", "web", "api", "db", "cache",
                                                   "external"]
    assert re.search(r"^web -> db tcp/5432 +✓  open: connected$", done.stdout, re.M)
    assert re.search(r"^web -> db tcp/5433 +⊘  refused: reset \(RST\)$", done.stdout, re.M)
    assert re.search(r"^web -> cache tcp/5432 +✗  filtered: no answer", done.stdout, re.M)

    report = json.loads(cli.run("check", topo_file, "--json").stdout)
    assert report["ok"] and all(p["match"] for p in report["probes"])
    probes = {(p["from"], p["to"], p["proto"], p["port"]): p for p in report["probes"]}
    assert probes["web", "api", "icmp", 0]["measured"] == "open"  # routed, allowed
    assert probes["web", "cache", "icmp", 0]["measured"] == "filtered"  # isolated
    assert probes["vault", "external", "icmp", 0]["measured"] == "filtered"  # closed
    assert probes["probe", "external", "icmp", 0]["measured"] == "open"  # open
    assert probes["sidecar", "db", "icmp", 0]["measured"] == "open"  # joined to web
    # the three outcomes of TCP: a listener, no listener, isolation (cache listens too)
    assert probes["web", "db", "tcp", 5432]["measured"] == "open"
    assert probes["web", "db", "tcp", 5433]["measured"] == "refused"
    assert probes["web", "db", "tcp", 5433]["detail"] == "reset (RST)"
    assert probes["web", "cache", "tcp", 5432]["measured"] == "filtered"
    assert probes["api", "db", "udp", 53]["measured"] == "refused"
    assert probes["api", "db", "udp", 53]["detail"] == "port unreachable"
    assert probes["cache", "external", "tcp", 80]["measured"] == "filtered"

    # a refusal is not what `reach: true` (open) nor `reach: false` (filtered) asks for
    refusal = tmp_path / "refusal.yaml"
    refusal.write_text(TOPOLOGY + "  - {from: web, to: db, port: 5433, reach: true}\n"
                       "  - {from: web, to: db, port: 5433, proto: udp, reach: false}\n")
    done = cli.run("check", str(refusal), "--no-implied", check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    line = len(TOPOLOGY.splitlines()) + 1
    assert mismatches(done.stdout) == [
        f"web -> db tcp/5433: expected open, measured refused [reset (RST)] ({refusal}:{line})",
        f"web -> db udp/5433: expected filtered, measured refused [port unreachable] "
        f"({refusal}:{line + 1})"]

    # front and back are allowed to talk: an expectation of isolation between them is violated
    violated = tmp_path / "violated.yaml"
    violated.write_text(TOPOLOGY + "  - {from: web, to: back, reach: false}\n")
    done = cli.run("check", str(violated), "--no-implied", check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    line = len(TOPOLOGY.splitlines()) + 1
    assert mismatches(done.stdout) == [
        f"web -> api icmp: expected blocked, measured reachable [echo reply] ({violated}:{line})",
        f"web -> db icmp: expected blocked, measured reachable [echo reply] ({violated}:{line})"]


def test_check_names_the_pairs_that_a_broken_network_fails(
        cli: Cli, topo_file: str, run_prefix: str) -> None:
    host_netns = cli.json("inspect", "host", "h1")["netns"]
    api = cli.json("inspect", "container", "api")["ip"]
    # By hand, inside h1 (routes and tables that are not the agent's, so its resync keeps them):
    # a blackhole route to db (so nothing routed reaches it), and a drop of api's frames to db
    # on the bridge they share.
    table = f"{run_prefix}break"
    for argv in (["ip", "route", "add", "blackhole", "10.91.0.10/32"],
                 ["nft", f"add table bridge {table}; "
                  f"add chain bridge {table} cut {{ type filter hook forward priority -10; }}; "
                  f"add rule bridge {table} cut ip saddr {api} ip daddr 10.91.0.10 drop"]):
        done = nsexec(host_netns, *argv)
        assert done.returncode == 0, done.stderr

    done = cli.run("check", topo_file, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    failing = mismatches(done.stdout)
    line = PORT_LINES["  - {from: web, to: db, port: 5432}"]
    assert any(f.startswith("web -> db icmp: expected reachable, measured blocked") and
               "(implied: front and back are allowed to talk)" in f for f in failing), failing
    assert any(f.startswith("api -> db icmp: expected reachable, measured blocked") and
               "(implied: same network back on h1)" in f for f in failing), failing
    assert any(f.startswith("web -> db tcp/5432: expected open, measured filtered") and
               f.endswith(f"({topo_file}:{line})") for f in failing), failing
    assert all("db" in f.split(":")[0] for f in failing), failing  # nothing else broke
    assert "✘ check chk:" in done.stdout

    # mend it: the same check passes again
    for argv in (["ip", "route", "del", "blackhole", "10.91.0.10/32"],
                 ["nft", "delete", "table", "bridge", table]):
        assert nsexec(host_netns, *argv).returncode == 0
    assert cli.run("check", topo_file, check=False).returncode == 0
