"""Lab hosts, built for real: act through sdnctl.lab, assert with raw netlink, /proc and packets."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from agent.kernel.netns import NETNS_RUN_DIR, iproute_in
from sdnctl.lab import (
    EXTERNAL_DEV,
    HOST_DEV,
    UNDERLAY_BRIDGE,
    Lab,
    LabError,
    LabHost,
    process_alive,
    process_start_time,
    spawn_in_netns,
    stop_process,
    uplink_name,
)

pytestmark = pytest.mark.netns


def run_in(netns: str, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net={netns}", "--", *argv], capture_output=True,
                          text=True, timeout=timeout, check=False)


def ping(netns: str, address: str) -> subprocess.CompletedProcess[str]:
    return run_in(netns, "ping", "-n", "-c1", "-W2", address)


def build(lab: Lab) -> tuple[LabHost, LabHost, str]:
    lab.ensure_underlay()
    h1 = lab.ensure_host("h1", 1)
    h2 = lab.ensure_host("h2", 2)
    return h1, h2, lab.ensure_external()


def ifindexes(lab: Lab, host: str) -> tuple[int, int, int]:
    """(host's eth0, its underlay peer, the underlay bridge), read with raw dumps."""
    with iproute_in(lab.host_netns(host)) as ipr:
        eth0 = next(link["index"] for link in ipr.link("dump") if link.get("ifname") == HOST_DEV)
    with iproute_in(lab.underlay_netns()) as ipr:
        links = {link.get("ifname"): link["index"] for link in ipr.link("dump")}
    return eth0, links[uplink_name(host)], links[UNDERLAY_BRIDGE]


def prefixed_state(prefix: str) -> tuple[list[str], list[str]]:
    names = [n for n in os.listdir(NETNS_RUN_DIR) if n.startswith(prefix)]
    with open("/proc/self/mounts") as f:
        mounts = [line for line in f if prefix in line]
    return names, mounts


def test_hosts_reach_each_other_and_the_outside_from_their_underlay_address(lab: Lab) -> None:
    h1, h2, ext = build(lab)
    assert (h1.underlay_ip, h2.underlay_ip) == ("192.0.2.11", "192.0.2.12")
    assert lab.hosts() == [h1, h2]
    assert run_in(lab.underlay_netns(), "cat", "/proc/sys/net/ipv4/ip_forward").stdout == "1\n"

    result = ping(h1.netns, h2.underlay_ip)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ttl=64" in result.stdout  # same segment: bridged, not routed

    tcpdump = subprocess.Popen(
        ["nsenter", f"--net={ext}", "--", "tcpdump", "-n", "-l", "-i", EXTERNAL_DEV, "-c1",
         "icmp"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert tcpdump.stderr is not None
        banner = [tcpdump.stderr.readline() for _ in range(2)]  # EOF ("") if it fails
        assert any("listening on" in line for line in banner), banner
        result = ping(h1.netns, Lab.EXTERNAL_IP)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "ttl=63" in result.stdout  # one hop: routed by the underlay
        captured, _ = tcpdump.communicate(timeout=10)
    finally:
        if tcpdump.poll() is None:
            tcpdump.kill()
        tcpdump.wait()
    assert re.search(rf"IP {re.escape(h1.underlay_ip)} > 203\.0\.113\.1: ICMP echo request",
                     captured), captured


def test_ensure_leaves_a_correct_lab_untouched_and_repairs_a_wrong_one(lab: Lab) -> None:
    build(lab)
    before = ifindexes(lab, "h1")
    h1 = lab.ensure_host("h1", 1)
    build(lab)
    assert ifindexes(lab, "h1") == before
    assert h1.underlay_ip == "192.0.2.11"

    assert run_in(h1.netns, "ip", "route", "del", "default").returncode == 0
    assert run_in(h1.netns, "ip", "addr", "add", "192.0.2.99/24", "dev", "eth0").returncode == 0
    lab.ensure_host("h1", 1)
    assert ifindexes(lab, "h1") == before
    routes = run_in(h1.netns, "ip", "-4", "route", "show", "default").stdout
    assert routes.startswith("default via 192.0.2.1 dev eth0")
    addrs = run_in(h1.netns, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
    assert "192.0.2.11/24" in addrs and "192.0.2.99" not in addrs
    assert ping(h1.netns, "192.0.2.12").returncode == 0


def test_a_host_cannot_take_another_hosts_address_or_a_reserved_name(lab: Lab) -> None:
    build(lab)
    with pytest.raises(LabError, match=r"192\.0\.2\.11"):
        lab.ensure_host("h3", 1)
    for bad in ("ul", "ext", "H1", "-x"):
        with pytest.raises(ValueError):
            lab.ensure_host(bad, 5)
    assert [h.name for h in lab.hosts()] == ["h1", "h2"]


def test_a_failed_ensure_host_rolls_back_what_it_created(lab: Lab, run_prefix: str) -> None:
    lab.ensure_underlay()
    squatter = uplink_name("h1")  # a foreign link where h1's veth would go: a name collision
    ul = lab.underlay_netns()
    assert run_in(ul, "ip", "link", "add", squatter, "type", "bridge").returncode == 0
    assert run_in(ul, "ip", "link", "set", squatter, "alias", "someone-else").returncode == 0
    with pytest.raises(LabError, match="belongs to 'someone-else'"):
        lab.ensure_host("h1", 1)
    assert not os.path.exists(lab.host_netns("h1"))
    assert "someone-else" in run_in(ul, "ip", "link", "show", squatter).stdout  # not taken


def test_remove_host_unplugs_it_from_the_underlay(lab: Lab) -> None:
    h1, h2, _ = build(lab)
    lab.remove_host("h2")
    lab.remove_host("h2")  # gone is success
    assert lab.hosts() == [h1]
    with iproute_in(lab.underlay_netns()) as ipr:
        assert uplink_name("h2") not in {link.get("ifname") for link in ipr.link("dump")}
    assert ping(h1.netns, h2.underlay_ip).returncode != 0


def test_teardown_leaves_no_namespace_and_no_mount(lab: Lab, run_prefix: str) -> None:
    build(lab)
    names, mounts = prefixed_state(run_prefix)
    assert sorted(names) == sorted(run_prefix + s for s in ("ul", "ext", "h1", "h2"))
    assert len(mounts) == 4
    lab.teardown()
    assert prefixed_state(run_prefix) == ([], [])
    assert lab.hosts() == []
    lab.teardown()  # nothing left is success


def test_spawn_in_netns_runs_there_and_stop_process_ends_it(lab: Lab, tmp_path: Path) -> None:
    host = lab.ensure_host("h1", 1)
    log = tmp_path / "sleep.log"
    pid = spawn_in_netns(host.netns, ["sleep", "30"], str(log), env={"SDNCTL_TEST": "1"})
    start = process_start_time(pid)
    try:
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(host.netns).st_ino
        assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x0030\x00"
        assert b"SDNCTL_TEST=1" in Path(f"/proc/{pid}/environ").read_bytes()
        assert os.getsid(pid) == pid  # its own session: detached from ours
        assert start is not None and process_alive(pid, start)
        assert not process_alive(pid, start + 1)  # a reused PID is not our process
    finally:
        t0 = time.monotonic()
        stop_process(pid)
    assert time.monotonic() - t0 < 2  # sleep dies of SIGTERM: no wait for the grace period
    assert not process_alive(pid, start)
    assert not os.path.exists(f"/proc/{pid}")  # reaped, not a zombie
    stop_process(pid)  # gone is success


def test_spawn_in_netns_reports_a_command_that_cannot_start(lab: Lab, tmp_path: Path) -> None:
    host = lab.ensure_host("h1", 1)
    log = tmp_path / "bad.log"
    with pytest.raises(LabError, match="exited"):
        spawn_in_netns(host.netns, ["/nonexistent/agent"], str(log))
    assert "nonexistent" in log.read_text()


def test_stop_process_kills_what_ignores_sigterm(lab: Lab, tmp_path: Path) -> None:
    host = lab.ensure_host("h1", 1)
    pid = spawn_in_netns(host.netns, ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"],
                         str(tmp_path / "stubborn.log"))
    time.sleep(0.1)  # let the shell install its trap
    t0 = time.monotonic()
    stop_process(pid, grace=0.3)
    assert 0.3 <= time.monotonic() - t0 < 3
    assert not process_alive(pid)
