"""Prometheus metrics and agents' events (issue 23), through the real CLI and daemons.

A lab is brought up with `sdnctl up`; `sdnctl status --json` tells where the controller and
each agent serve their metrics (nobody guesses ports), the controller's endpoint is scraped
from here and the agent's from inside its host's namespace (it listens on that namespace's
loopback), and both outputs pass `promtool check metrics` (Debian's prometheus package). Then a
spoofed packet, sent from inside a container, shows in the agent's drop counter, and
`sdnctl events` shows the agent's container state changes. `sdnctl metrics [HOST]` prints
either endpoint.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.cli import Cli, lab_cli, nsexec

from agent.kernel.netns import run_in_netns

pytestmark = pytest.mark.netns

TOPOLOGY = """\
name: metrics
hosts: [{name: h1, lab: true}]
networks:
  - {name: front, subnet: 10.71.0.0/24}
containers:
  - {name: web, host: h1, network: front}
"""

PROMTOOL = shutil.which("promtool")


@pytest.fixture
def cli(run_prefix: str) -> Iterator[Cli]:
    with lab_cli(run_prefix) as c:
        yield c


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        return reply.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of ``text`` (the exposition format), or None."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def promtool_check(text: str) -> None:
    assert PROMTOOL, "promtool missing: scripts/setup.sh installs Debian's prometheus package"
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=text, text=True,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_metrics_are_discoverable_and_pass_promtool(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "metrics.yaml"
    path.write_text(TOPOLOGY)
    cli.files["metrics"] = str(path)
    cli.run("up", str(path))
    status = cli.json("status")
    controller_url = status["controller"]["metrics_url"]
    assert controller_url.startswith("http://127.0.0.1:")
    host = next(h for h in status["hosts"] if h["name"] == "h1")
    assert host["metrics_url"].startswith("http://127.0.0.1:")

    controller = scrape(controller_url)
    (tmp_path / "controller.prom").write_text(controller)
    promtool_check(controller)
    assert (sample(controller, "sdnctl_grpc_server_handled_total",
                   grpc_method="CreateContainer", grpc_code="OK") or 0) >= 1
    assert sample(controller, "sdnctl_watch_streams") == 1
    assert (sample(controller, "sdnctl_watch_events_sent_total") or 0) >= 1
    assert (sample(controller, "sdnctl_store_txn_seconds_count") or 0) >= 1
    assert sample(controller, "sdnctl_ipam_addresses_used", network="front") == 1
    assert sample(controller, "sdnctl_ipam_leases", network="front") == 1
    assert sample(controller, "sdnctl_ipam_addresses_free", network="front") == 253 - 1

    agent = run_in_netns(host["netns"], lambda: scrape(host["metrics_url"]))
    # `sdnctl metrics h1` reaches the same endpoint from inside h1's namespace
    assert "sdnctl_agent_reconcile_passes_total" in cli.run("metrics", "h1").stdout
    assert "sdnctl_grpc_server_handled_total" in cli.run("metrics").stdout
    (tmp_path / "agent.prom").write_text(agent)
    promtool_check(agent)
    assert (sample(agent, "sdnctl_agent_reconcile_passes_total", kind="full") or 0) >= 1
    assert (sample(agent, "sdnctl_agent_reconcile_actions_total",
                   kind="SetupContainer") or 0) >= 1
    assert sample(agent, "sdnctl_agent_containers", state="running") == 1
    assert (sample(agent, "sdnctl_agent_netlink_call_seconds_count",
                   call="dump_owned") or 0) >= 1
    assert (sample(agent, "sdnctl_agent_nft_call_seconds_count", call="apply") or 0) >= 1

    # A spoofed source from inside the container: the guard drops it and its counter shows it
    # once a full pass has listed the ruleset (every resync: a safety bound, not a timing).
    web = f"/proc/{cli.container('web')['pid']}/ns/net"
    assert nsexec(web, "ip", "addr", "add", "10.71.0.250/32", "dev", "eth0").returncode == 0
    nsexec(web, "ping", "-c", "3", "-W", "1", "-I", "10.71.0.250", "10.71.0.1", timeout=30)
    deadline = time.monotonic() + 60
    while True:
        agent = run_in_netns(host["netns"], lambda: scrape(host["metrics_url"]))
        dropped = [sample(agent, "sdnctl_agent_nft_dropped_packets_total", guard=guard)
                   for guard in ("spoof-ip", "spoof-arp-ip")]
        if any(dropped):
            break
        assert time.monotonic() < deadline, f"no spoof-ip drop counted: {agent}"
        time.sleep(1)

    events = cli.run("events").stdout
    assert re.search(r"agent:h1\s+container-state\s+web: new -> running", events), events
