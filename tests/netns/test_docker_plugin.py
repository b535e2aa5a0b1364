"""sdnctl as a Docker network plugin (issue 18), driven by Debian's real dockerd 20.10 and its
client (/usr/bin/docker): two lab hosts with ``docker: true``, each running a private dockerd
in its namespaces whose network and IPAM plugin is that host's agent.

One lab serves the module (a dockerd start costs seconds); each test names its own containers.
Docker's defaults are kept: its bridge, and its iptables rules with FORWARD policy DROP.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import dockerd
from helpers.cli import Cli, lab_cli, nsexec

from agent.names import bridge_name, veth_name
from sdnctl.lab import lab
from sdnctl.lab.dockerd import DOCKER, pids_in_mount_ns

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not dockerd.installed(),
                       reason="docker.io (/usr/sbin/dockerd, /usr/bin/docker) is not installed; "
                       "scripts/setup.sh installs it"),
]

TOPOLOGY = """\
name: dockerplug
hosts:
  - {name: h1, lab: true, docker: true}
  - {name: h2, lab: true, docker: true}
networks: []
containers: []
"""
SUBNET = "10.93.0.0/16"
IMAGE = "sdnctl-test:latest"


class Env:
    def __init__(self, cli: Cli, prefix: str, topology: Path) -> None:
        self.cli = cli
        self.topology = topology
        self.lab = lab.Lab(prefix)
        self.hosts = {h: cli.host(h)["docker_host"] for h in ("h1", "h2")}

    def docker(self, host: str, *args: str, check: bool = True,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DOCKER_HOST": self.hosts[host],
               "DOCKER_CONFIG": str(Path(self.cli.run_dir) / f"docker-{host}")}
        done = subprocess.run([DOCKER, *args], env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} on {host} failed "
                                 f"({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def endpoints(self) -> dict[str, dict[str, Any]]:
        """The controller's Docker endpoints, by address."""
        return {c["ip"]: c for c in self.cli.json("ps") if c["owner"].startswith("docker:")}

    def address(self, host: str, container: str, network: str = "front") -> str:
        return str(self.docker(host, "inspect", "-f",
                               f"{{{{.NetworkSettings.Networks.{network}.IPAddress}}}}",
                               container).stdout.strip())


def wait_for(what: str, probe: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, test_image: tuple[str, str]) -> Iterator[Env]:
    prefix = "d" + secrets.token_hex(3)[:5]
    tmp = tmp_path_factory.mktemp("dockerplug")
    (tmp / "dockerplug.yaml").write_text(TOPOLOGY)
    with lab_cli(prefix) as cli:
        # Full passes (which see drift and vanished veths) every 2 s rather than 10.
        cli.env["SDNCTL_RESYNC"] = "2"
        cli.run("up", str(tmp / "dockerplug.yaml"), "--timeout", "60")
        env = Env(cli, prefix, tmp / "dockerplug.yaml")
        for host in env.hosts:
            env.docker(host, "load", "-i", test_image[0])
        # The same command on both hosts: the first creates the sdnctl network, named as the
        # Docker network (the agent asks its dockerd), the second adopts it.
        for host in env.hosts:
            env.docker(host, "network", "create", "-d", "sdnctl", "--ipam-driver", "sdnctl",
                       "--subnet", SUBNET, "-o", "sdnctl.driver=overlay", "front")
            wait_for("the sdnctl network", lambda: "front" in {
                n["name"] for n in env.cli.json("network", "ls")}, 15)
        yield env


def test_containers_on_two_hosts_ping_across_the_overlay(env: Env) -> None:
    (net,) = [n for n in env.cli.json("network", "ls") if n["name"] == "front"]
    assert net["subnet"] == SUBNET and net["driver"] == "overlay"
    (ipam,) = json.loads(env.docker("h2", "network", "inspect", "front").stdout)
    assert ipam["Driver"] == "sdnctl" and ipam["IPAM"]["Driver"] == "sdnctl"
    assert ipam["IPAM"]["Config"][0]["Subnet"] == SUBNET
    env.docker("h1", "run", "-d", "--name", "pa", "--network", "front", IMAGE, "sleep", "600")
    env.docker("h2", "run", "-d", "--name", "pb", "--network", "front", IMAGE, "sleep", "600")
    try:
        a, b = env.address("h1", "pa"), env.address("h2", "pb")
        # Each container is an sdnctl attachment of its host, from that host's lease.
        leases = {h: {s["network"]: s for s in env.cli.host(h)["subnets"]} for h in env.hosts}
        endpoints = wait_for("both endpoints running", lambda: (
            eps := env.endpoints()) and all(eps.get(ip, {}).get("state") == "running"
                                            for ip in (a, b)) and eps)
        assert endpoints[a]["host"] == "h1" and endpoints[b]["host"] == "h2"
        assert endpoints[a]["network"] == "front"
        gateway = leases["h1"]["front"]["gateway"]
        assert env.docker("h1", "inspect", "-f",
                          "{{.NetworkSettings.Networks.front.Gateway}}",
                          "pa").stdout.strip() == gateway
        route = env.docker("h1", "exec", "pa", "ip", "-4", "route").stdout
        assert f"default via {gateway} dev eth0" in route
        # Docker's own firewall stays as Docker sets it: FORWARD policy DROP.
        forward = nsexec(env.lab.host_netns("h1"), "iptables", "-S", "FORWARD").stdout
        assert "-P FORWARD DROP" in forward
        assert f"-o {bridge_name('front')} -j ACCEPT" in nsexec(
            env.lab.host_netns("h1"), "iptables", "-S", "DOCKER-USER").stdout
        out = env.docker("h1", "exec", "pa", "ping", "-c", "2", "-W", "2", b, check=False)
        assert out.returncode == 0, f"pa cannot ping pb across the overlay:\n{out.stdout}"
        out = env.docker("h2", "exec", "pb", "ping", "-c", "1", "-W", "2", a, check=False)
        assert out.returncode == 0, f"pb cannot ping pa:\n{out.stdout}"
        assert "docker:" in env.cli.run("ps").stdout
        assert "docker:" in env.cli.run("status").stdout
        dot = Path(env.cli.run_dir) / "docker.dot"
        env.cli.run("graph", str(env.topology), "-o", str(dot))
        assert "Docker · eth0" in dot.read_text()
        # Drift: the host side of pa's veth taken out of its bridge is put back.
        host_side = veth_name(endpoints[a]["name"], "eth0")
        h1 = env.lab.host_netns("h1")
        nsexec(h1, "ip", "link", "set", host_side, "nomaster")
        wait_for("the veth back in its bridge", lambda: f"master {bridge_name('front')}" in
                 nsexec(h1, "ip", "-o", "link", "show", host_side).stdout, 30)
        out = env.docker("h1", "exec", "pa", "ping", "-c", "1", "-W", "2", b, check=False)
        assert out.returncode == 0, f"pa cannot ping pb after the repair:\n{out.stdout}"
    finally:
        env.docker("h1", "rm", "-f", "pa", check=False)
        env.docker("h2", "rm", "-f", "pb", check=False)
    # docker rm frees the address: the controller forgets both endpoints.
    wait_for("the endpoints to go", lambda: not ({a, b} & set(env.endpoints())))
    allocated = {a["address"] for a in env.cli.json("ipam", "--network", "front")["allocations"]}
    assert not ({a, b} & allocated)


def test_published_port_reaches_the_container_with_the_client_address(env: Env) -> None:
    env.docker("h1", "run", "-d", "--name", "web", "--network", "front", "-p", "8080:80",
               IMAGE, "nc", "-ll", "-p", "80", "-e", "cat", "/proc/net/tcp6")
    underlay = env.cli.host("h1")["underlay_ip"]
    outside = env.lab.external_netns()
    try:
        (endpoint,) = [e for e in env.endpoints().values() if e["host"] == "h1"]
        assert endpoint["ports"] == ["8080:80/tcp"]
        table = wait_for("the published port", lambda: nsexec(
            outside, "busybox", "nc", "-w", "2", underlay, "8080").stdout, 20)
        # The container saw the connection come from the outside world's own address.
        client = "".join(f"{int(b):02X}" for b in reversed(lab.EXTERNAL_IP.split(".")))
        assert f"0000000000000000FFFF0000{client}:" in table, table
    finally:
        env.docker("h1", "rm", "-f", "web", check=False)
    wait_for("the endpoint to go", lambda: not [e for e in env.endpoints().values()
                                                if e["host"] == "h1"])
    refused = nsexec(outside, "busybox", "nc", "-w", "2", underlay, "8080")
    assert not refused.stdout, "the port is still published after docker rm"


def test_fixed_address_and_a_second_network(env: Env) -> None:
    env.docker("h1", "network", "create", "-d", "sdnctl", "--ipam-driver", "sdnctl",
               "--subnet", "10.94.0.0/16", "-o", "sdnctl.driver=bridge", "-o",
               "sdnctl.network=back", "back")
    try:
        env.docker("h1", "run", "-d", "--name", "fx", "--network", "front", "--ip",
                   "10.93.0.77", IMAGE, "sleep", "600")
        env.docker("h1", "network", "connect", "back", "fx")
        assert env.address("h1", "fx") == "10.93.0.77"
        second = env.address("h1", "fx", "back")
        assert second.startswith("10.94.")
        assert {"10.93.0.77", second} <= set(env.endpoints())
        addrs = env.docker("h1", "exec", "fx", "ip", "-4", "-o", "addr").stdout
        assert "eth0" in addrs and "eth1" in addrs and second in addrs
        gateway = env.cli.host("h1")["subnets"]
        back_gw = next(s["gateway"] for s in gateway if s["network"] == "back")
        out = env.docker("h1", "exec", "fx", "ping", "-c", "1", "-W", "2", back_gw,
                         check=False)
        assert out.returncode == 0, out.stdout
        env.docker("h1", "network", "disconnect", "back", "fx")
        wait_for("the second endpoint to go", lambda: second not in env.endpoints())
    finally:
        env.docker("h1", "rm", "-f", "fx", check=False)
        env.docker("h1", "network", "rm", "back", check=False)
    # docker network rm removes nothing the controller may still need.
    assert "back" in {n["name"] for n in env.cli.json("network", "ls")}


def test_bad_requests_answer_errors_and_change_nothing(env: Env) -> None:
    before = env.cli.json("network", "ls")
    out = env.docker("h1", "network", "create", "-d", "sdnctl", "--ipam-driver", "sdnctl",
                     "nosubnet", check=False)
    assert out.returncode != 0 and "--subnet" in out.stderr
    out = env.docker("h1", "network", "create", "-d", "sdnctl", "--ipam-driver", "sdnctl",
                     "--subnet", "10.95.0.0/16", "-o", "sdnctl.driver=vlan", "bogus",
                     check=False)
    assert out.returncode != 0 and "sdnctl.driver" in out.stderr
    out = env.docker("h1", "network", "create", "-d", "sdnctl", "--ipam-driver", "sdnctl",
                     "--subnet", "10.96.0.0/16", "-o", "sdnctl.network=front", "clash",
                     check=False)
    assert out.returncode != 0 and SUBNET in out.stderr
    out = env.docker("h1", "run", "--rm", "--network", "front", "--mac-address",
                     "02:00:00:00:00:01", IMAGE, "true", check=False)
    assert out.returncode != 0 and "MAC" in out.stderr
    assert env.cli.json("network", "ls") == before
    assert not env.endpoints()


def test_dual_stack_network_pings_over_ipv6_and_leaves_nothing(env: Env) -> None:
    """``docker network create --ipv6`` on a dual-stack sdnctl network (issue 18, 20): each
    container's two addresses are one attachment's, as the controller recorded them; they ping
    each other over IPv6 across the overlay; ``--ip6`` is kept; ``docker rm`` and ``docker
    network rm`` leave no attachment, address or link."""
    env.cli.run("network", "create", "dual", "--subnet", "10.97.0.0/16", "--subnet6",
                "fd00:97::/48", "--driver", "overlay")
    before = env.cli.json("network", "ls")
    # Refused, nothing changed: an IPv6 pool that is no network's subnet6, and an IPv6-only
    # Docker network (Docker 20.10 asks an IPv4 pool of every network).
    out = env.docker("h1", "network", "create", "-d", "sdnctl", "--ipam-driver", "sdnctl",
                     "--ipv6", "--subnet", "10.97.0.0/16", "--subnet", "fd00:98::/48", "bad6",
                     check=False)
    assert out.returncode != 0 and "subnet6 fd00:98::/48" in out.stderr, out.stderr
    out = env.docker("h1", "network", "create", "-d", "sdnctl", "--ipam-driver", "sdnctl",
                     "--ipv6", "--subnet", "fd00:97::/48", "only6", check=False)
    assert out.returncode != 0 and "IPv6-only" in out.stderr, out.stderr
    assert env.cli.json("network", "ls") == before
    for host in env.hosts:
        env.docker(host, "network", "create", "-d", "sdnctl", "--ipam-driver", "sdnctl",
                   "--ipv6", "--subnet", "10.97.0.0/16", "--subnet", "fd00:97::/48", "dual")
    names: list[str] = []
    try:
        env.docker("h1", "run", "-d", "--name", "sa", "--network", "dual", IMAGE, "sleep", "600")
        env.docker("h2", "run", "-d", "--name", "sb", "--network", "dual", IMAGE, "sleep", "600")
        lease6 = next(s["subnet6"] for s in env.cli.host("h1")["subnets"]
                      if s["network"] == "dual")
        fixed = lease6.split("/")[0] + "77"
        env.docker("h1", "run", "-d", "--name", "sc", "--network", "dual", "--ip6", fixed,
                   IMAGE, "sleep", "600")
        got = {c: json.loads(env.docker(h, "inspect", "-f",
                                        "{{json .NetworkSettings.Networks.dual}}", c).stdout)
               for h, c in (("h1", "sa"), ("h2", "sb"), ("h1", "sc"))}
        assert got["sc"]["GlobalIPv6Address"] == fixed
        # One attachment per container, with both addresses Docker shows.
        ours = {c["ip"]: c for c in env.cli.json("ps") if c["network"] == "dual"}
        assert len(ours) == 3, ours
        for c, settings in got.items():
            mine = ours[settings["IPAddress"]]
            names.append(mine["name"])
            assert mine["owner"].startswith("docker:") and mine["ip6"] == \
                settings["GlobalIPv6Address"], (c, mine, settings)
            assert settings["IPv6Gateway"] == mine["gateway6"]
        a6, b6 = got["sa"]["GlobalIPv6Address"], got["sb"]["GlobalIPv6Address"]
        route = env.docker("h1", "exec", "sa", "ip", "-6", "route").stdout
        assert f"default via {got['sa']['IPv6Gateway']} dev eth0" in route, route
        for host, ctr, peer in (("h1", "sa", b6), ("h2", "sb", a6), ("h1", "sc", b6)):
            out = env.docker(host, "exec", ctr, "ping", "-6", "-c", "1", "-W", "3", peer,
                             check=False)
            assert out.returncode == 0, f"{ctr} cannot ping {peer} over IPv6:\n{out.stdout}"
    finally:
        env.docker("h1", "rm", "-f", "sa", "sc", check=False)
        env.docker("h2", "rm", "-f", "sb", check=False)
        for host in env.hosts:
            env.docker(host, "network", "rm", "dual", check=False)
    wait_for("the dual-stack endpoints to go", lambda: not [
        c for c in env.cli.json("ps") if c["network"] == "dual"])
    report = env.cli.json("ipam", "--network", "dual")
    assert report["allocations"] == [], report["allocations"]
    for host in env.hosts:
        links = nsexec(env.lab.host_netns(host), "ip", "-o", "link").stdout
        assert names and not [n for n in names if veth_name(n, "eth0") in links]
    env.cli.run("network", "rm", "dual")


def test_a_restarted_agent_still_serves_its_endpoints(env: Env) -> None:
    """The plugin's networks, endpoints and joins outlive its agent (dockerd keeps them)."""
    env.docker("h1", "run", "-d", "--name", "kept", "--network", "front", IMAGE, "sleep", "600")
    ip = env.address("h1", "kept")
    state = json.loads((Path(env.cli.run_dir) / "lab" / "dockerplug.json").read_text())
    agent = state["agents"]["h1"]["pid"]
    os.kill(agent, signal.SIGTERM)
    wait_for("the agent to stop", lambda: not os.path.exists(f"/proc/{agent}"), 20)
    env.cli.run("up", str(env.topology), "--timeout", "60")  # starts the agent again
    env.docker("h1", "run", "-d", "--name", "after", "--network", "front", IMAGE,
               "sleep", "600")
    after = env.address("h1", "after")
    out = env.docker("h1", "exec", "after", "ping", "-c", "1", "-W", "2", ip, check=False)
    assert out.returncode == 0, out.stdout
    env.docker("h1", "rm", "-f", "kept", "after")
    wait_for("both endpoints to go", lambda: not ({ip, after} & set(env.endpoints())))


def test_endpoints_of_a_dockerd_that_died_are_collected(env: Env) -> None:
    """Last in the module: it kills h2's dockerd. Its sandboxes go with its mount namespace,
    their veths with them, and no Leave ever comes: the agent detaches the endpoints."""
    env.docker("h2", "run", "-d", "--name", "orphan", "--network", "front", IMAGE,
               "sleep", "600")
    ip = env.address("h2", "orphan")
    wait_for("the endpoint running", lambda: env.endpoints().get(ip, {}).get("state")
             == "running")
    state = json.loads((Path(env.cli.run_dir) / "lab" / "dockerplug.json").read_text())
    known = state["dockerd"]["h2"]
    process = int(env.docker("h2", "inspect", "-f", "{{.State.Pid}}", "orphan").stdout)
    for pid in [known["pid"], *pids_in_mount_ns(known["mnt_ns"]), process]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for("the orphaned endpoint to be detached", lambda: ip not in env.endpoints(), 40)
    allocated = {a["address"] for a in env.cli.json("ipam", "--network", "front")["allocations"]}
    assert ip not in allocated
