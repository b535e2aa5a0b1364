"""`sdnctl check` against a real lab: it passes on a healthy topology, and it catches what we
break by hand inside the lab host's namespace (a blackhole route, a drop rule in a table of our
own) and an `expect:` of isolation that the topology does not keep, naming the failing pairs.

We act through the CLI and break things with `ip` and `nft` inside the lab host's namespace only
(never the root namespace); the lab and everything in it goes with `down`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.cli import Cli, lab_cli, nsexec

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
  - {name: db, host: h1, network: back, ip: 10.91.0.10}
  - {name: cache, host: h1, network: vault-net}
  - {name: sidecar, host: h1, network: "container:web"}
  - {name: vault, host: h1, network: none}
  - {name: probe, host: h1, network: host}
expect:
  - {from: web, to: db, port: 5432}
  - {from: api, to: db, proto: udp, port: 53}
  - {from: web, to: external, port: 80}
  - {from: cache, to: external, port: 80, reach: false}
"""


@pytest.fixture
def cli(run_prefix: str) -> Iterator[Cli]:
    with lab_cli(run_prefix) as c:
        yield c


@pytest.fixture
def topo_file(tmp_path: Path, cli: Cli) -> Iterator[str]:
    path = tmp_path / "chk.yaml"
    path.write_text(TOPOLOGY)
    cli.run("up", str(path))
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
    assert "web -> db tcp/5432" in done.stdout and "refused (RST)" in done.stdout

    report = json.loads(cli.run("check", topo_file, "--json").stdout)
    assert report["ok"] and all(p["match"] for p in report["probes"])
    probes = {(p["from"], p["to"], p["proto"]): p for p in report["probes"]}
    assert probes["web", "api", "icmp"]["measured"] is True  # routed, allowed
    assert probes["web", "cache", "icmp"]["measured"] is False  # isolated
    assert probes["vault", "external", "icmp"]["measured"] is False  # closed
    assert probes["probe", "external", "icmp"]["measured"] is True  # open
    assert probes["sidecar", "db", "icmp"]["measured"] is True  # joined to web
    assert probes["api", "db", "udp"]["detail"] == "port unreachable"
    assert probes["cache", "external", "tcp"]["measured"] is False

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
    line = TOPOLOGY.splitlines().index("  - {from: web, to: db, port: 5432}") + 1
    assert any(f.startswith("web -> db icmp: expected reachable, measured blocked") and
               "(implied: front and back are allowed to talk)" in f for f in failing), failing
    assert any(f.startswith("api -> db icmp: expected reachable, measured blocked") and
               "(implied: same network back on h1)" in f for f in failing), failing
    assert any(f.startswith("web -> db tcp/5432: expected reachable, measured blocked") and
               f.endswith(f"({topo_file}:{line})") for f in failing), failing
    assert all("db" in f.split(":")[0] for f in failing), failing  # nothing else broke
    assert "✘ check chk:" in done.stdout

    # mend it: the same check passes again
    for argv in (["ip", "route", "del", "blackhole", "10.91.0.10/32"],
                 ["nft", "delete", "table", "bridge", table]):
        assert nsexec(host_netns, *argv).returncode == 0
    assert cli.run("check", topo_file, check=False).returncode == 0
