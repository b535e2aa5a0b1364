"""Lab hosts, built for real: act through sdnctl.lab.lab, assert with netlink, /proc and packets."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers.capture import capture
from helpers.pyroute import iproute_in

from agent.kernel.netns import NETNS_RUN_DIR, create_netns
from sdnctl.lab.lab import (
    EXTERNAL_DEV,
    HOST_DEV,
    UNDERLAY_BRIDGE,
    UPLINK_DEV,
    UPLINK_GROUP,
    AgentSpawner,
    Lab,
    LabError,
    LabHost,
    host_ip,
    host_ip6,
    process_alive,
    process_start_time,
    spawn_in_netns,
    stop_process,
    stop_processes,
    uplink_name,
)

pytestmark = pytest.mark.netns


def run_in(netns: str, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net={netns}", "--", *argv], capture_output=True,
                          text=True, timeout=timeout, check=False)


def ping(netns: str, address: str, *options: str) -> subprocess.CompletedProcess[str]:
    return run_in(netns, "ping", "-n", "-c1", "-W2", *options, address)


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


def links(netns: str) -> dict[str, dict[str, object]]:
    """Every link of a namespace by name: index, mtu, master, alias (a raw dump)."""
    with iproute_in(netns) as ipr:
        return {link.get("ifname"): {"index": link["index"], "mtu": link.get("mtu"),
                                     "master": link.get("master"),
                                     "alias": link.get("ifalias")}
                for link in ipr.link("dump")}


def addresses(netns: str, dev: str) -> list[str]:
    out = run_in(netns, "ip", "-4", "-o", "addr", "show", "dev", dev).stdout
    return re.findall(r"inet (\S+)", out)


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

    with capture(ext, EXTERNAL_DEV, "icmp") as cap:
        result = ping(h1.netns, Lab.EXTERNAL_IP)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "ttl=63" in result.stdout  # one hop: routed by the underlay
        cap.wait_for(f"IP {h1.underlay_ip} > 203.0.113.1: ICMP echo request")


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


def test_a_correct_host_is_read_not_rewired_and_each_wrong_detail_is_repaired(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """An existing host is first read raw (``Lab._wired``: an `up` of an unchanged 100-host
    lab spent 2 s in the checked steps' pyroute2 calls); a correct one goes no further, and
    each detail the checked steps set, broken by hand, sends the host to them and is
    repaired."""
    h1, _, _ = build(lab)
    ul, uplink = lab.underlay_netns(), uplink_name("h1")
    checked = lab._in_new_netns

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("a correct host went through the checked steps")

    monkeypatch.setattr(lab, "_in_new_netns", refused)
    lab.ensure_host("h1", 1)
    monkeypatch.setattr(lab, "_in_new_netns", checked)
    breakages = [
        (ul, ["ip", "link", "set", uplink, "down"]),
        (ul, ["ip", "link", "set", uplink, "nomaster"]),
        (ul, ["ip", "link", "set", uplink, "group", "default"]),
        (ul, ["ip", "link", "set", uplink, "alias", "someone-else"]),
        (h1.netns, ["ip", "link", "set", HOST_DEV, "mtu", "1400"]),
        (h1.netns, ["ip", "addr", "add", "192.0.2.99/24", "dev", HOST_DEV]),
        (h1.netns, ["ip", "-6", "addr", "flush", "dev", HOST_DEV, "scope", "global"]),
        (h1.netns, ["ip", "route", "del", "default"]),
        (h1.netns, ["ip", "-6", "route", "del", "default"]),
    ]
    segment = lab.segments[0]
    addresses = ("192.0.2.11", host_ip6(1, lab.routed))
    for netns, argv in breakages:
        assert lab._wired(h1.netns, "h1", segment, addresses)
        assert run_in(netns, *argv).returncode == 0, argv
        assert not lab._wired(h1.netns, "h1", segment, addresses), argv
        if "alias" in argv:  # another's veth: a collision, refused, not taken over
            with pytest.raises(LabError):
                lab.ensure_host("h1", 1)
            assert run_in(ul, "ip", "link", "set", uplink, "alias", "h1").returncode == 0
            continue
        lab.ensure_host("h1", 1)
        assert lab._wired(h1.netns, "h1", segment, addresses), argv
    assert ping(h1.netns, "192.0.2.12").returncode == 0


def test_a_new_host_is_made_as_the_checked_steps_make_it(lab: Lab) -> None:
    """A host whose namespace is new is made by raw requests (``Lab._make_host``); one whose
    namespace exists goes through the checked steps. Both come out the same."""
    lab.ensure_underlay()
    fast = lab.ensure_host("h1", 1)
    assert create_netns(lab.host_netns("h2"))  # (an empty namespace: the checked steps)
    checked = lab.ensure_host("h2", 2)

    def shape(host: LabHost) -> tuple[object, ...]:
        up = links(lab.underlay_netns())[uplink_name(host.name)]
        eth0 = links(host.netns)[HOST_DEV]
        flags = run_in(lab.underlay_netns(), "ip", "-o", "link", "show", uplink_name(
            host.name)).stdout.split(">")[0] + run_in(host.netns, "ip", "-o", "link", "show",
                                                      HOST_DEV).stdout.split(">")[0]
        group = re.search(r"group (\S+)", run_in(lab.underlay_netns(), "ip", "-o", "link",
                                                 "show", uplink_name(host.name)).stdout)
        routes = [re.sub(r"192\.0\.2\.\d+", "ADDR", line) for line in run_in(
            host.netns, "ip", "route", "show").stdout.splitlines() + run_in(
            host.netns, "ip", "-6", "route", "show").stdout.splitlines()]
        addrs6 = re.findall(r"inet6 \S+ scope (\w+)", run_in(host.netns, "ip", "-6", "-o",
                                                            "addr", "show", "dev", HOST_DEV).stdout)
        return (up["mtu"], up["master"], up["alias"] == host.name, eth0["mtu"],
                re.sub(r"\d+: \S+", "", flags), group and group[1],
                len(addresses(host.netns, HOST_DEV)), sorted(addrs6), sorted(routes))

    assert shape(fast) == shape(checked)
    assert f"{fast.underlay_ip}/24" in addresses(fast.netns, HOST_DEV)
    assert ping(fast.netns, checked.underlay_ip).returncode == 0


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


def test_teardown_deletes_every_hosts_link_even_while_their_namespaces_are_held(
        lab: Lab, run_prefix: str) -> None:
    """The hosts' underlay links go in one request (their device group); a host's link
    outside the group (a lab made before it) goes on its own. Both are gone even where a
    process still holds the namespaces (a stray keeps a namespace alive past its mount)."""
    h1, h2, _ = build(lab)
    ul = lab.underlay_netns()
    assert f"group {UPLINK_GROUP} " in run_in(ul, "ip", "-o", "link", "show",
                                              uplink_name("h1")).stdout
    assert run_in(ul, "ip", "link", "set", uplink_name("h2"), "group", "0").returncode == 0
    held = [os.open(path, os.O_RDONLY) for path in (ul, h1.netns, h2.netns)]
    try:
        lab.teardown()
        assert prefixed_state(run_prefix) == ([], [])
        listed = subprocess.run(["nsenter", f"--net=/proc/self/fd/{held[0]}", "ip", "-o",
                                 "link"], pass_fds=held, capture_output=True, text=True,
                                timeout=10, check=True).stdout
        assert UNDERLAY_BRIDGE in listed  # (the probe reads the held underlay)
        assert uplink_name("h1") not in listed and uplink_name("h2") not in listed, listed
    finally:
        for fd in held:
            os.close(fd)


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
        stop_process(pid, grace=60)
    assert time.monotonic() - t0 < 30  # sleep dies of SIGTERM: no wait for the grace period
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
    log = tmp_path / "stubborn.log"
    pid = spawn_in_netns(host.netns, ["sh", "-c", "trap '' TERM; echo trapped; "
                                      "while :; do sleep 0.1; done"], str(log))
    deadline = time.monotonic() + 30
    while "trapped" not in log.read_text():  # the shell ignores SIGTERM from here on
        assert time.monotonic() < deadline, "the shell never installed its trap"
        time.sleep(0.01)
    t0 = time.monotonic()
    stop_process(pid, grace=0.3)
    assert 0.3 <= time.monotonic() - t0 < 30  # it waited for the grace, then SIGKILL
    assert not process_alive(pid)


def test_stop_processes_ends_them_all_at_once(lab: Lab, tmp_path: Path) -> None:
    """``down`` stops every agent in one go: SIGTERM to all, one grace period, SIGKILL to what
    is left; a PID whose start time no longer matches is someone else's and left alone."""
    host = lab.ensure_host("h1", 1)
    logs = [tmp_path / f"p{i}.log" for i in range(4)]
    pids = [spawn_in_netns(host.netns, ["sleep", "60"], str(logs[0])),
            spawn_in_netns(host.netns, ["sleep", "60"], str(logs[1]))]
    pids += [spawn_in_netns(host.netns, ["sh", "-c", "trap '' TERM; echo trapped; "
                                         "while :; do sleep 0.1; done"], str(log))
             for log in logs[2:]]
    bystander = spawn_in_netns(host.netns, ["sleep", "60"], str(tmp_path / "other.log"))
    try:
        deadline = time.monotonic() + 30
        while not all("trapped" in log.read_text() for log in logs[2:]):
            assert time.monotonic() < deadline, "the shells never installed their trap"
            time.sleep(0.01)
        starts = [process_start_time(pid) for pid in pids]
        assert all(process_alive(pid, start) for pid, start in zip(pids, starts, strict=True))
        other_start = process_start_time(bystander)
        assert other_start is not None
        stop_processes([*zip(pids, starts, strict=True), (bystander, other_start + 1)],
                       grace=0.3)
        assert not any(process_alive(pid) for pid in pids)
        assert process_alive(bystander, other_start)  # (its start time was not the one given)
    finally:
        stop_process(bystander)


# -- underlay MTU and the routed underlay ---------------------------------------------------------


def test_host_ip_is_ten_plus_the_index_on_the_segment_the_mode_gives() -> None:
    assert [host_ip(i) for i in (0, 1, 2, 244)] == [
        "192.0.2.10", "192.0.2.11", "192.0.2.12", "192.0.2.254"]
    assert [host_ip(i, routed=True) for i in (0, 1, 2, 3, 244)] == [
        "192.0.2.10", "198.51.100.11", "192.0.2.12", "198.51.100.13", "192.0.2.254"]
    for bad in (-1, 245):
        with pytest.raises(ValueError):
            host_ip(bad, routed=True)
    for mtu in (67, 65536):
        with pytest.raises(ValueError, match="MTU"):
            Lab("tx-", mtu=mtu)


@pytest.mark.parametrize("routed", [False, True], ids=["flat", "routed"])
@pytest.mark.parametrize("mtu", [1400, 9000])
def test_the_underlay_mtu_is_every_underlay_links_and_bounds_real_packets(
        run_prefix: str, mtu: int, routed: bool) -> None:
    lab = Lab(run_prefix, mtu=mtu, routed=routed)
    try:
        h1, h2, ext = build(lab)
        ul = links(lab.underlay_netns())
        for host in (h1, h2):
            assert links(host.netns)[HOST_DEV]["mtu"] == mtu
            assert ul[uplink_name(host.name)]["mtu"] == mtu
        for bridge in ("ul0", "ul1") if routed else ("ul0",):
            assert ul[bridge]["mtu"] == mtu
        external_mtu = min(mtu, 1500)  # the Internet's MTU caps the external link
        assert ul[UPLINK_DEV]["mtu"] == external_mtu
        assert links(ext)[EXTERNAL_DEV]["mtu"] == external_mtu

        # h1 -> h2 crosses the underlay router when routed: its bridges must carry the MTU too.
        fits = ping(h1.netns, h2.underlay_ip, "-M", "do", "-s", str(mtu - 28))
        assert fits.returncode == 0, fits.stdout + fits.stderr
        assert f"ttl={63 if routed else 64}" in fits.stdout
        too_big = ping(h1.netns, h2.underlay_ip, "-M", "do", "-s", str(mtu - 27))
        assert too_big.returncode != 0
        assert "message too long" in too_big.stdout + too_big.stderr, too_big

        outside = ping(h2.netns, Lab.EXTERNAL_IP, "-M", "do", "-s", str(external_mtu - 28))
        assert outside.returncode == 0, outside.stdout + outside.stderr
        if mtu > 1500:  # the router, not the host, refuses a jumbo packet to the outside
            jumbo = ping(h2.netns, Lab.EXTERNAL_IP, "-M", "do", "-s", "1473")
            assert jumbo.returncode != 0
            assert "mtu = 1500" in jumbo.stdout + jumbo.stderr, jumbo
    finally:
        lab.teardown()


def test_a_changed_mtu_is_repaired_in_place(run_prefix: str) -> None:
    lab = Lab(run_prefix)
    try:
        h1, h2, ext = build(lab)
        before = {h: ifindexes(lab, h) for h in ("h1", "h2")}
        ext_before = links(ext)[EXTERNAL_DEV]["index"]
        for mtu in (9000, 1400, 1500):
            build(Lab(run_prefix, mtu=mtu))
            assert {h: ifindexes(lab, h) for h in ("h1", "h2")} == before
            assert links(ext)[EXTERNAL_DEV]["index"] == ext_before
            assert links(h1.netns)[HOST_DEV]["mtu"] == mtu
            assert links(lab.underlay_netns())[UNDERLAY_BRIDGE]["mtu"] == mtu
            assert links(ext)[EXTERNAL_DEV]["mtu"] == min(mtu, 1500)
            result = ping(h1.netns, h2.underlay_ip, "-M", "do", "-s", str(mtu - 28))
            assert result.returncode == 0, result.stdout + result.stderr

        # Drift on either end of one host's veth: ensure_host alone puts it back.
        assert run_in(h1.netns, "ip", "link", "set", HOST_DEV, "mtu", "1300").returncode == 0
        assert run_in(lab.underlay_netns(), "ip", "link", "set", uplink_name("h1"), "mtu",
                      "1280").returncode == 0
        lab.ensure_host("h1", 1)
        assert ifindexes(lab, "h1") == before["h1"]
        assert links(h1.netns)[HOST_DEV]["mtu"] == 1500
        assert links(lab.underlay_netns())[uplink_name("h1")]["mtu"] == 1500
    finally:
        lab.teardown()


def test_a_routed_underlay_joins_two_subnets_with_one_router(run_prefix: str) -> None:
    lab = Lab(run_prefix, routed=True)
    try:
        h1, h2, _ = build(lab)
        h0 = lab.ensure_host("h0", 0)
        assert (h0.underlay_ip, h1.underlay_ip, h2.underlay_ip) == (
            "192.0.2.10", "198.51.100.11", "192.0.2.12")
        assert lab.hosts() == [h0, h1, h2]
        ul = lab.underlay_netns()
        assert addresses(ul, "ul0") == ["192.0.2.1/24"]
        assert addresses(ul, "ul1") == ["198.51.100.1/24"]
        bridges = links(ul)
        assert bridges[uplink_name("h1")]["master"] == bridges["ul1"]["index"]
        assert bridges[uplink_name("h2")]["master"] == bridges["ul0"]["index"]
        assert run_in(ul, "cat", "/proc/sys/net/ipv4/ip_forward").stdout == "1\n"
        assert run_in(h1.netns, "ip", "-4", "route", "show", "default").stdout.startswith(
            "default via 198.51.100.1 dev eth0")

        across = ping(h2.netns, h1.underlay_ip)  # 192.0.2.12 -> 198.51.100.11
        assert across.returncode == 0, across.stdout + across.stderr
        assert "ttl=63" in across.stdout  # one router between the subnets
        same = ping(h0.netns, h2.underlay_ip)
        assert same.returncode == 0 and "ttl=64" in same.stdout  # bridged on ul0
        for host in (h1, h2):
            out = ping(host.netns, Lab.EXTERNAL_IP)
            assert out.returncode == 0 and "ttl=63" in out.stdout, out.stdout + out.stderr

        # Re-ensured with the same options: nothing renumbered, nothing recreated.
        before = ifindexes(lab, "h1")
        assert build(Lab(run_prefix, routed=True))[:2] == (h1, h2)
        assert ifindexes(lab, "h1") == before
    finally:
        lab.teardown()
    assert prefixed_state(run_prefix) == ([], [])


def test_switching_the_mode_is_refused_with_hosts_and_done_without(run_prefix: str) -> None:
    flat, routed = Lab(run_prefix), Lab(run_prefix, routed=True)
    try:
        flat.ensure_host("h1", 1)
        with pytest.raises(LabError, match="tear it down"):
            routed.ensure_underlay()
        with pytest.raises(LabError, match="tear it down"):
            routed.ensure_host("h2", 2)
        assert "ul1" not in links(flat.underlay_netns())
        assert [h.name for h in flat.hosts()] == ["h1"]
        assert flat.hosts()[0].underlay_ip == "192.0.2.11"

        flat.remove_host("h1")  # no hosts: the underlay is converted, both ways
        ext = routed.ensure_external()
        assert "ul1" in links(routed.underlay_netns())
        assert "198.51.100.0/24 via 203.0.113.254" in run_in(ext, "ip", "route").stdout
        h1 = routed.ensure_host("h1", 1)
        assert ping(h1.netns, Lab.EXTERNAL_IP).returncode == 0
        routed.remove_host("h1")
        flat.ensure_external()
        assert "ul1" not in links(flat.underlay_netns())
        assert "198.51.100.0/24" not in run_in(ext, "ip", "route").stdout
    finally:
        flat.teardown()


def test_labs_with_other_prefixes_build_at_once_without_touching_each_other(
        run_prefix: str) -> None:
    # Same addresses, same device names, separate namespaces: they must not see each other.
    labs = [Lab(run_prefix + "a", mtu=9000), Lab(run_prefix + "b", mtu=1400, routed=True)]
    try:
        with ThreadPoolExecutor(len(labs)) as pool:
            built = list(pool.map(build, labs))
        for lab, (h1, h2, _) in zip(labs, built, strict=True):
            assert [h.name for h in lab.hosts()] == ["h1", "h2"]
            result = ping(h1.netns, h2.underlay_ip, "-M", "do", "-s", str(lab.mtu - 28))
            assert result.returncode == 0, result.stdout + result.stderr
            assert links(h1.netns)[HOST_DEV]["mtu"] == lab.mtu
        assert built[0][0].underlay_ip == "192.0.2.11"
        assert built[1][0].underlay_ip == "198.51.100.11"
    finally:
        failures = []
        for lab in labs:
            try:
                lab.teardown()
            except Exception as e:
                failures.append(e)
        if failures:
            raise ExceptionGroup("teardown failed", failures)
    assert prefixed_state(run_prefix) == ([], [])


def test_agent_spawner_forks_agents_into_their_namespaces(lab: Lab, tmp_path: Path,
                                                          run_prefix: str) -> None:
    """`up`'s fork server (issue 21): each agent is forked from one interpreter that imported
    the agent once, runs in its host's namespace in a session of its own, logs to its file,
    shows the label in its command line, and outlives the server; an agent that cannot start
    says so in its log."""
    hosts = [lab.ensure_host(f"h{i}", i) for i in (1, 2)]
    pids: list[int] = []
    label = str(tmp_path / run_prefix)
    try:
        with AgentSpawner(label, str(tmp_path / "forkserver.log")) as spawner:
            for host in hosts:
                # no controller answers at this socket: the agent starts and keeps retrying
                pids.append(spawner.spawn(host.netns, [
                    "--host", host.name, "--controller", f"unix:{tmp_path}/none.sock",
                    "--underlay-ip", host.underlay_ip, "--netns", host.netns,
                    "--run-dir", str(tmp_path / host.name), "--store-dir",
                    str(tmp_path / host.name / "store"), "--metrics", "", "--dns-port", "0"],
                    str(tmp_path / f"{host.name}.log")))
            server = spawner._proc
            assert server is not None
        assert server.returncode == 0  # the server is gone, the agents run on
        for host, pid in zip(hosts, pids, strict=True):
            assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(host.netns).st_ino
            assert os.getsid(pid) == pid
            assert label.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
            log = tmp_path / f"{host.name}.log"
            deadline = time.monotonic() + 30
            while f"agent[{host.name}]" not in log.read_text():
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        # it may exit before spawn sees it in its namespace: then spawn says so
        with AgentSpawner(label, str(tmp_path / "forkserver.log")) as spawner, \
                contextlib.suppress(LabError):
            spawner.spawn(hosts[0].netns, ["--host", "h1", "--no-such-option"],
                          str(tmp_path / "bad.log"))
        bad_log = tmp_path / "bad.log"
        deadline = time.monotonic() + 30
        while "unrecognized arguments: --no-such-option" not in bad_log.read_text():
            assert time.monotonic() < deadline, bad_log.read_text()
            time.sleep(0.05)
    finally:
        for pid in pids:
            stop_process(pid, grace=10)
