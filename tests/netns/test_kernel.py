"""The kernel façade against a real kernel: links, firewall, sysctl, launcher.

The lab is a host namespace H with our bridge, two container namespaces A and B attached to it,
and an "outside" namespace O joined to H by a plain veth (the uplink). We act through
``agent.kernel`` and assert through ``ip``/``nft`` output and real packets. Nothing is done in the
root namespace; every name carries a per-run prefix, and the teardown checks that no namespace,
mount or process we made is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers.capture import capture
from helpers.monitor import quiet_monitors
from helpers.namespaces import UPLINK_H, UPLINK_O, build_uplink, in_ns, run, wait_dad_done

# The package is not installed in the venv and `.venv/bin/pytest` does not put the checkout on
# sys.path; drop this once pyproject sets `pythonpath = ["."]` (or the tree is pip install -e'd).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent import ocispec
from agent.kernel import cgroups, firewall, mountns, procfs, procs, rtnl, sysctl
from agent.kernel.firewall import Firewall, MasqueradeRule
from agent.kernel.links import (
    DeletionWatch,
    KernelError,
    Links,
    ObservedLink,
    prepare_veth,
    remove_link_now,
)
from agent.kernel.netns import (
    create_netns,
    netns_path,
    open_netlink_fd,
    remove_netns,
    run_in_netns,
)
from agent.names import bridge_name, veth_name
from agent.runtime import RUNTIMES, OciRuntime, Rootfs

PREFIX = f"k{os.getpid()}x"
NETWORK = "front"
SUBNET = "10.77.1.0/24"
GATEWAY = "10.77.1.1"
MTU = 1400
CONTAINERS = {"a": "10.77.1.2", "b": "10.77.1.3"}
CAP_NET_ADMIN = 12


def _has_cap_net_admin() -> bool:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    return False


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not _has_cap_net_admin(),
    reason="needs root with CAP_NET_ADMIN and CAP_SYS_ADMIN to build network namespaces",
)




def ping(path: str, address: str) -> bool:
    return in_ns(path, "ping", "-c1", "-W1", "-n", address, check=False).returncode == 0


# --- pure parts: no root needed -------------------------------------------------------------


def test_names_are_short_prefixed_hashes() -> None:
    assert re.fullmatch(r"sdnb[0-9a-f]{8}", bridge_name("front"))
    assert re.fullmatch(r"sdnv[0-9a-f]{8}", veth_name("web", "eth0"))
    assert veth_name("web", "eth0") != veth_name("web", "eth1")
    assert len(bridge_name("x" * 300).encode()) <= 15


def test_the_cgroup_layout_read_from_filesystem_types_is_the_mount_tables() -> None:
    """``cgroups.layout``/``hierarchies`` ask ``statfs``; the mount table (what they read
    before, twice per container removal) must say the same on this machine."""
    mounts: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mounts[left.split()[4]] = right.split()[0]
    root, unified = cgroups.ROOT, cgroups.UNIFIED
    expected = "v2" if mounts.get(root) == "cgroup2" else \
        "hybrid" if mounts.get(unified) == "cgroup2" else "v1"
    assert cgroups.layout() == expected
    v1 = sorted(m for m, fs in mounts.items() if fs == "cgroup" and os.path.dirname(m) == root)
    assert cgroups.hierarchies() == ([root] if expected == "v2" else v1)
    assert cgroups.fs_type("/nonexistent/sdnctl") == 0


def test_render_is_one_transaction_with_comments() -> None:
    rules = [MasqueradeRule("front", SUBNET, "sdnb00000000")]
    script = firewall.render(rules)
    lines = script.splitlines()
    assert lines[0] == "add table inet sdnctl"
    assert lines.index("flush chain inet sdnctl postrouting") < next(
        i for i, line in enumerate(lines) if "masquerade" in line
    )
    assert (
        f'ip saddr {SUBNET} ip daddr != {SUBNET} oifname != "sdnb00000000" masquerade '
        f'comment "sdnctl:net/front"' in script
    )
    assert "policy accept" in script and "policy drop" not in script
    assert firewall.render(rules) == script  # deterministic
    assert firewall.fingerprint(rules) != firewall.fingerprint([])


# --- the lab --------------------------------------------------------------------------------


@dataclass
class Lab:
    host: str
    outside: str
    containers: dict[str, str]  # name -> netns path
    links: Links
    tmp: Path
    bridge: str = bridge_name(NETWORK)
    started: list[procs.ProcInfo] = field(default_factory=list)

    def attach(self, name: str) -> int:
        return self.links.ensure_veth(
            veth_name(name, "eth0"), f"sdnctl:ctr/{name}/eth0", self.bridge, MTU,
            self.containers[name], "eth0", f"{CONTAINERS[name]}/24", GATEWAY,
        )

    def ensure_all(self) -> None:
        self.links.ensure_bridge(self.bridge, f"sdnctl:net/{NETWORK}", f"{GATEWAY}/24", MTU)
        for name in self.containers:
            self.attach(name)


def _leftovers() -> list[str]:
    found = [f"netns {n}" for n in os.listdir("/run/netns") if n.startswith(PREFIX)] if (
        os.path.isdir("/run/netns")) else []
    with open("/proc/mounts") as f:
        found += [f"mount {line.split()[1]}" for line in f if PREFIX in line]
    return found



@pytest.fixture(scope="module")
def klab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0 or not _has_cap_net_admin():
        pytest.skip("needs root with CAP_NET_ADMIN and CAP_SYS_ADMIN to build network namespaces")
    assert not _leftovers()
    paths = [netns_path(f"{PREFIX}{s}") for s in ("h", "o", "a", "b")]
    made: list[str] = []
    links: Links | None = None
    lab = None
    try:
        for path in paths:
            create_netns(path)
            made.append(path)
        host, outside, ctr_a, ctr_b = paths
        links = Links(host)
        lab = Lab(host, outside, {"a": ctr_a, "b": ctr_b}, links, tmp_path_factory.mktemp("lab"))
        lab.ensure_all()
        build_uplink(host, outside)
        yield lab
    finally:
        failures: list[BaseException] = []
        for info in lab.started if lab else []:
            try:
                procs.stop(info, grace=0.2)
            except BaseException as e:
                failures.append(e)
        if links is not None:
            links.close()
        for path in reversed(made):
            try:
                remove_netns(path)
            except BaseException as e:
                failures.append(e)
        alive = [i.pid for i in (lab.started if lab else []) if procs._is_running(i)]
        assert not failures, failures
        assert not alive, f"processes left: {alive}"
        assert not _leftovers(), _leftovers()


def _state(klab: Lab) -> dict[str, object]:
    """Raw state through another layer (ip's JSON), for before/after comparisons."""
    state: dict[str, object] = {}
    for path in [klab.host, *klab.containers.values()]:
        name = os.path.basename(path)
        state[f"{name} addr"] = run("ip", "-n", name, "-4", "-br", "addr").stdout
        state[f"{name} route"] = run("ip", "-n", name, "-4", "route", "show", "table", "all").stdout
        state[f"{name} link"] = run("ip", "-n", name, "-br", "link").stdout
    return state


# --- links ----------------------------------------------------------------------------------


@needs_root
@pytest.mark.netns
def test_containers_reach_each_other_and_gateway(klab: Lab) -> None:
    assert ping(klab.containers["a"], CONTAINERS["b"])
    assert ping(klab.containers["b"], CONTAINERS["a"])
    assert ping(klab.containers["a"], GATEWAY)


@needs_root
@pytest.mark.netns
def test_observed_state_matches_request(klab: Lab) -> None:
    owned = {link.ifname: link for link in klab.links.dump_owned()}
    bridge = owned[klab.bridge]
    assert (bridge.kind, bridge.alias, bridge.mtu, bridge.up) == (
        "bridge", f"sdnctl:net/{NETWORK}", MTU, True)
    assert bridge.addresses == (f"{GATEWAY}/24",)
    for name in klab.containers:
        host_side = owned[veth_name(name, "eth0")]
        assert isinstance(host_side, ObservedLink)
        assert (host_side.kind, host_side.master, host_side.mtu, host_side.up) == (
            "veth", klab.bridge, MTU, True)
        seen = klab.links.observe_container(klab.containers[name], "eth0")
        assert seen is not None
        assert (seen.up, seen.mtu, seen.addresses, seen.gateway) == (
            True, MTU, (f"{CONTAINERS[name]}/24",), GATEWAY)
    assert "up0" not in owned  # not ours: no alias
    routes = run("ip", "-n", os.path.basename(klab.containers["a"]), "route", "show", "default")
    assert "proto 211" in routes.stdout
    assert klab.links.observe_container(klab.containers["a"], "eth9") is None


@needs_root
@pytest.mark.netns
def test_rtnl_reader_agrees_with_ip(klab: Lab) -> None:
    """The small reader (agent.kernel.rtnl) against ``ip -j`` on every link, address and
    route, and IPv4 neighbour, of the host and a container namespace."""
    assert ping(klab.containers["a"], GATEWAY)  # a neighbour entry on each side
    for path in (klab.host, klab.containers["a"]):
        name = os.path.basename(path)
        ip_links = json.loads(run("ip", "-n", name, "-j", "-d", "link", "show").stdout)
        ip_addrs = json.loads(run("ip", "-n", name, "-j", "-4", "addr", "show").stdout)
        ip_routes = json.loads(run("ip", "-n", name, "-j", "-4", "route", "show", "table",
                                   "all").stdout)
        ip_neighbours = json.loads(run("ip", "-n", name, "-j", "-4", "neigh", "show").stdout)
        with rtnl.Reader(open_netlink_fd(path)) as reader:
            links = reader.links()
            addresses = reader.ipv4_addresses()
            routes = reader.ipv4_routes()
            neighbours = reader.neighbours(socket.AF_INET)
            eth0 = reader.link("eth0")
            assert reader.link("nosuch0") is None
        index_of = {m["ifname"]: m["ifindex"] for m in ip_links}
        assert sorted((link.index, link.ifname, link.mtu, link.mac, link.kind, link.alias,
                       link.master, bool(link.flags & 1)) for link in links) == sorted(
            (m["ifindex"], m["ifname"], m["mtu"], m.get("address"),
             m.get("linkinfo", {}).get("info_kind"), m.get("ifalias"),
             index_of.get(m.get("master")), "UP" in m["flags"]) for m in ip_links)
        assert sorted(addresses) == sorted(
            (m["ifindex"], f"{a['local']}/{a['prefixlen']}")
            for m in ip_addrs for a in m["addr_info"])
        tables = {"main": 254, "local": 255}
        assert sorted((r.dst_len, r.table, r.gateway, r.dst or "") for r in routes) == sorted(
            (0 if r["dst"] == "default" else int(r["dst"].partition("/")[2] or 32),
             tables.get(r.get("table", "main"), r.get("table")), r.get("gateway"),
             "" if r["dst"] == "default" else r["dst"].partition("/")[0])
            for r in ip_routes)
        # (``ip neigh`` leaves out NOARP entries)
        assert any(n.lladdr for n in neighbours)
        assert sorted((n.index, n.dst, n.lladdr) for n in neighbours if not n.state & 0x40) == \
            sorted((index_of[m["dev"]], m["dst"], m.get("lladdr")) for m in ip_neighbours)
        if path != klab.host:
            assert eth0 is not None and eth0.index == index_of["eth0"]
    # A batch with a namespace that is gone and a device that is not there.
    gone = netns_path(f"{PREFIX}gone")
    seen = klab.links.observe_containers({klab.containers["a"]: "eth0", gone: "eth0",
                                          klab.containers["b"]: "eth9"})
    assert seen[gone] is None and seen[klab.containers["b"]] is None
    assert seen[klab.containers["a"]] == klab.links.observe_container(klab.containers["a"],
                                                                      "eth0")


@needs_root
@pytest.mark.netns
def test_rtnl_reader_reads_qdiscs_as_tc_does(klab: Lab) -> None:
    """The qdisc dump the bandwidth limits compare (rtnl.Reader.qdiscs) against ``tc -j``: a
    root TBF's rate at 10 Mbit/s and at 40 Gbit/s (past 32 bits of bytes per second), and an
    ingress qdisc."""
    name = os.path.basename(klab.containers["b"])
    made = [("eth0", "root"), ("eth0", "ingress")]
    run("tc", "-n", name, "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "tbf",
        "rate", "10mbit", "burst", "16k", "latency", "25ms")
    try:
        run("tc", "-n", name, "qdisc", "add", "dev", "eth0", "ingress")
        run("ip", "-n", name, "link", "add", "qd0", "type", "veth", "peer", "name", "qd1")
        made.append(("qd0", "link"))
        run("tc", "-n", name, "qdisc", "add", "dev", "qd0", "root", "handle", "1:", "tbf",
            "rate", "40gbit", "burst", "1m", "latency", "25ms")
        shown = json.loads(run("tc", "-n", name, "-j", "qdisc", "show").stdout)
        with rtnl.Reader(open_netlink_fd(klab.containers["b"])) as reader:
            index_of = {link.ifname: link.index for link in reader.links()}
            qdiscs = reader.qdiscs()
        assert sorted((q.index, q.kind, q.parent == rtnl.TC_H_ROOT, q.tbf_rate)
                      for q in qdiscs if q.kind in ("tbf", "ingress")) == sorted(
            (index_of[s["dev"]], s["kind"], bool(s.get("root")),
             s["options"]["rate"] * 8 if s["kind"] == "tbf" else 0)
            for s in shown if s["kind"] in ("tbf", "ingress"))
        assert {q.tbf_rate for q in qdiscs} >= {10_000_000, 40_000_000_000}
    finally:
        for dev, what in reversed(made):
            if what == "link":
                run("ip", "-n", name, "link", "del", dev, check=False)
            else:
                run("tc", "-n", name, "qdisc", "del", "dev", dev, what, check=False)


@needs_root
@pytest.mark.netns
def test_second_ensure_changes_nothing(klab: Lab) -> None:
    wait_dad_done([klab.host, *klab.containers.values()])
    before = _state(klab)
    indexes = {link.ifname: link.index for link in klab.links.dump_owned()}
    watched = [(p, ["ip", "monitor", "link", "address", "route"])
               for p in [klab.host, *klab.containers.values()]]
    with quiet_monitors(watched) as monitors:
        klab.ensure_all()
    events = monitors.events()
    assert events == [[]] * len(watched), events
    assert {link.ifname: link.index for link in klab.links.dump_owned()} == indexes
    assert _state(klab) == before


@needs_root
@pytest.mark.netns
def test_ensure_repairs_drift(klab: Lab) -> None:
    a = os.path.basename(klab.containers["a"])
    run("ip", "-n", a, "addr", "add", "10.99.0.5/24", "dev", "eth0")
    run("ip", "-n", a, "route", "del", "default")
    run("ip", "-n", os.path.basename(klab.host), "link", "set", klab.bridge, "mtu", "1300")
    klab.ensure_all()
    seen = klab.links.observe_container(klab.containers["a"], "eth0")
    assert seen is not None
    assert (seen.addresses, seen.gateway) == ((f"{CONTAINERS['a']}/24",), GATEWAY)
    assert {link.ifname: link.mtu for link in klab.links.dump_owned()}[klab.bridge] == MTU
    assert ping(klab.containers["a"], CONTAINERS["b"])


@needs_root
@pytest.mark.netns
def test_foreign_links_are_never_reused(klab: Lab) -> None:
    h = os.path.basename(klab.host)
    other = bridge_name("other")
    run("ip", "-n", h, "link", "add", other, "type", "bridge")
    run("ip", "-n", h, "link", "set", other, "alias", "someone-else")
    try:
        with pytest.raises(KernelError, match="refusing to reuse"):
            klab.links.ensure_bridge(other, "sdnctl:net/other", "10.77.2.1/24", MTU)
        with pytest.raises(KernelError, match="not ours"):
            klab.links.remove_link(other)
        wrong_kind = bridge_name("wrong")
        run("ip", "-n", h, "link", "add", wrong_kind, "type", "veth", "peer", "name", "kx0")
        with pytest.raises(KernelError, match="kind 'veth'"):
            klab.links.ensure_bridge(wrong_kind, "sdnctl:net/wrong", "10.77.3.1/24", MTU)
    finally:
        run("ip", "-n", h, "link", "del", other, check=False)
        run("ip", "-n", h, "link", "del", bridge_name("wrong"), check=False)


@needs_root
@pytest.mark.netns
def test_remove_link_is_idempotent(klab: Lab, tmp_path: Path) -> None:
    path = netns_path(f"{PREFIX}c")
    create_netns(path)
    try:
        klab.containers["c"] = path
        CONTAINERS["c"] = "10.77.1.4"
        klab.attach("c")
        assert ping(path, CONTAINERS["a"])
        assert klab.links.remove_link(veth_name("c", "eth0")) is True
        assert klab.links.remove_link(veth_name("c", "eth0")) is False
        assert klab.links.observe_container(path, "eth0") is None  # the peer went with it
    finally:
        klab.containers.pop("c", None)
        CONTAINERS.pop("c", None)
        klab.links.forget_netns(path)
        remove_netns(path)
    assert klab.links.observe_container(path, "eth0") is None  # namespace gone


@needs_root
@pytest.mark.netns
def test_a_pair_prepared_ahead_and_a_deletion_watched(klab: Lab) -> None:
    """CNI's kernel steps (issue 17): ``prepare_veth`` makes a pair ahead of its addresses
    (the host side in the bridge, no alias; the peer down in the container's namespace with
    its name and MTU), and only once; ``remove_link_now`` takes it away; a ``DeletionWatch``
    returns once the kernel announced the deletion, when both ends have left their
    namespaces, or when the deleting call ended without one."""
    path = netns_path(f"{PREFIX}p")
    create_netns(path)
    veth = veth_name("p", "eth0")

    def host_link(name: str) -> rtnl.Link | None:
        def read() -> rtnl.Link | None:
            with rtnl.Reader(open_netlink_fd(None)) as reader:
                return reader.link(name)
        return run_in_netns(klab.host, read)

    try:
        prepared = run_in_netns(klab.host, lambda: prepare_veth(veth, klab.bridge, MTU, path,
                                                                "eth0"))
        assert prepared is not None and prepared.host_ifname == veth
        host_side = host_link(veth)
        assert host_side is not None and host_side.alias is None and host_side.mtu == MTU
        assert host_side.master == host_link(klab.bridge).index  # type: ignore[union-attr]
        peer = klab.links.observe_container(path, "eth0")
        assert peer is not None and peer.index == prepared.peer_index and not peer.up
        assert peer.mtu == MTU and prepared.host_mac == host_side.mac
        # Taken: none made twice (the caller then looks whether CNI_IFNAME exists).
        assert run_in_netns(klab.host, lambda: prepare_veth(veth, klab.bridge, MTU, path,
                                                            "eth0")) is None
        # A name nobody holds needs no wait; a watch of a link nobody deletes times out,
        # unless the deleting call says it ended (a deletion that failed).
        assert run_in_netns(klab.host, lambda: DeletionWatch("sdnvnothere")).wait(0)
        idle = run_in_netns(klab.host, lambda: DeletionWatch(veth))
        assert idle.index == host_side.index and not idle.wait(0.05)
        idle.finished()
        assert idle.wait(5)
        idle.close()
        # The deletion, by another thread: the watch returns with both ends gone.
        watch = run_in_netns(klab.host, lambda: DeletionWatch(veth))
        removed: list[bool] = []

        def delete() -> None:
            try:
                removed.append(run_in_netns(klab.host, lambda: remove_link_now(veth)))
            finally:
                watch.finished()

        deleting = threading.Thread(target=delete)
        deleting.start()
        try:
            assert watch.wait(10)
            assert host_link(veth) is None and klab.links.observe_container(path, "eth0") is None
        finally:
            deleting.join()
            watch.close()
        assert removed == [True]
        assert run_in_netns(klab.host, lambda: remove_link_now(veth)) is False
        # A link that is not ours is never removed.
        run("ip", "-n", os.path.basename(klab.host), "link", "add", "sdnvforeign", "type",
            "veth", "peer", "name", "sdnvforeign1")
        run("ip", "-n", os.path.basename(klab.host), "link", "set", "sdnvforeign", "alias",
            "someone else's")
        with pytest.raises(KernelError, match="not ours"):
            run_in_netns(klab.host, lambda: remove_link_now("sdnvforeign"))
        run("ip", "-n", os.path.basename(klab.host), "link", "del", "sdnvforeign")
    finally:
        klab.links.forget_netns(path)
        remove_netns(path)


# --- firewall and NAT -----------------------------------------------------------------------


@needs_root
@pytest.mark.netns
def test_firewall_apply_is_idempotent_and_removable(klab: Lab) -> None:
    fw = Firewall(klab.host)
    rules = [MasqueradeRule(NETWORK, SUBNET, klab.bridge)]
    fw.remove()
    assert fw.observe() is None
    assert fw.apply(rules) is True
    listed = in_ns(klab.host, "nft", "-a", "list", "table", "inet", "sdnctl").stdout
    assert fw.observe() == firewall.fingerprint(rules)
    assert fw.apply(rules) is False
    assert in_ns(klab.host, "nft", "-a", "list", "table", "inet", "sdnctl").stdout == listed
    # drift (a rule deleted by hand) is seen and repaired
    handle = re.search(r"masquerade comment \"sdnctl:net/front\" # handle (\d+)", listed)
    assert handle is not None
    in_ns(klab.host, "nft", "delete", "rule", "inet", "sdnctl", "postrouting", "handle",
          handle.group(1))
    assert fw.observe() != firewall.fingerprint(rules)
    assert fw.apply(rules) is True
    assert fw.apply([]) is True and "masquerade" not in in_ns(
        klab.host, "nft", "list", "table", "inet", "sdnctl").stdout
    fw.remove()
    fw.remove()
    assert fw.observe() is None
    assert "sdnctl" not in run("nft", "list", "tables").stdout  # root namespace untouched


@needs_root
@pytest.mark.netns
def test_sysctls_are_the_calling_threads_namespaces(klab: Lab) -> None:
    """Sysctls are read and written in the calling thread's namespace: a lab host's value,
    never the process's, although the process's own namespace's directories are held open
    once read (the note of agent/kernel/sysctl.py), and only those."""
    key = "net.ipv4.ip_unprivileged_port_start"
    root = sysctl.read_sysctl(key)
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        assert f.read().strip() == root  # the held directory reads what a plain open does
    before = run_in_netns(klab.host, lambda: sysctl.read_sysctl(key))
    other = "1023" if root != "1023" else "1022"
    try:
        assert run_in_netns(klab.host, lambda: sysctl.ensure_sysctl(key, other)) is True
        assert run_in_netns(klab.host, lambda: sysctl.read_sysctl(key)) == other
        assert sysctl.read_sysctl(key) == root
    finally:
        run_in_netns(klab.host, lambda: sysctl.ensure_sysctl(key, before))
    here = run_in_netns(klab.host, lambda: sysctl.list_sysctls("net.ipv4.conf"))
    assert klab.bridge in here and klab.bridge not in sysctl.list_sysctls("net.ipv4.conf")
    own = os.stat("/proc/self/ns/net")
    assert {(dev, ino) for dev, ino, _ in sysctl._held} == {(own.st_dev, own.st_ino)}


@needs_root
@pytest.mark.netns
def test_masquerade_rewrites_the_source(klab: Lab) -> None:
    root_forward = sysctl.read_sysctl("net.ipv4.ip_forward")
    assert run_in_netns(klab.host, sysctl.ensure_ip_forward) is True
    assert run_in_netns(klab.host, lambda: sysctl.read_sysctl("net.ipv4.ip_forward")) == "1"
    assert sysctl.read_sysctl("net.ipv4.ip_forward") == root_forward  # ours only
    fw = Firewall(klab.host)
    try:
        assert not ping(klab.containers["a"], UPLINK_O)  # O has no route back without NAT
        fw.apply([MasqueradeRule(NETWORK, SUBNET, klab.bridge)])
        with capture(klab.outside, "up1", "icmp and icmp[icmptype] == icmp-echo") as cap:
            assert ping(klab.containers["a"], UPLINK_O)
            cap.wait_for(f"IP {UPLINK_H} > {UPLINK_O}: ICMP echo request")
        # traffic between containers on the bridge is not masqueraded
        assert ping(klab.containers["a"], CONTAINERS["b"])
    finally:
        fw.remove()


# --- OCI runtimes ---------------------------------------------------------------------------


def _bundle(tmp: Path, name: str, netns_path: str, args: tuple[str, ...]) -> str:
    bundle = tmp / f"bundle-{name}"
    (bundle / "rootfs").mkdir(parents=True)
    spec = ocispec.build(ocispec.SpecInput(args=args, hostname=name, net=netns_path,
                                           env=(ocispec.DEFAULT_PATH,), readonly_root=True))
    (bundle / "config.json").write_text(json.dumps(spec))
    return str(bundle)


@needs_root
@pytest.mark.netns
@pytest.mark.parametrize("binary", RUNTIMES)
def test_runtime_runs_in_the_namespace_and_stops(klab: Lab, binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed")
    runtime = OciRuntime(binary, str(klab.tmp / f"{binary}-state"))
    bundle = _bundle(klab.tmp / binary, "ctr-a", klab.containers["a"], ("sleep", "infinity"))
    before = _mounts_there(runtime.mounts)  # taken now: the lab's pins are not in it
    assert klab.containers["a"] not in before
    pid, started = runtime.run("ctr-a", bundle, Rootfs("host"), str(klab.tmp / "a.log"))
    info = procs.ProcInfo(pid, started)
    klab.started.append(info)
    try:
        assert _mounts_there(runtime.mounts) == before  # the start's mounts are detached
        assert procs.is_alive(info, klab.containers["a"])
        assert not procs.is_alive(info, klab.containers["b"])
        assert run("nsenter", "-t", str(pid), "-u", "hostname").stdout.strip() == "ctr-a"
        with open(f"/proc/{pid}/status") as f:
            nspid = next(line for line in f if line.startswith("NSpid:")).split()
        assert nspid[-1] == "1"  # PID 1 of its own PID namespace
        with open(f"/proc/{pid}/mountinfo") as f:
            assert not any(str(klab.tmp) in line for line in f)  # its own root, pivoted
        began = time.monotonic()
        procs.stop(info, grace=0.3)  # PID 1 ignores SIGTERM: SIGKILL must finish it
        assert time.monotonic() - began < 30  # a safety bound: it did not hang
        assert not procs.is_alive(info, klab.containers["a"])
    finally:
        runtime.delete("ctr-a")
    assert runtime.state("ctr-a") is None
    runtime.delete("ctr-a")  # gone already: success


def _is_mount(path: str) -> bool:
    with open("/proc/thread-self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def _mounts_there(snapshot: mountns.Snapshot, paths: tuple[str, ...] = ()) -> list[str]:
    """The mount points of the runtime's mount namespace, read from inside it."""
    def inside() -> list[str]:
        with open("/proc/thread-self/mountinfo") as f:
            return [line.split()[4] for line in f]
    return snapshot.run(inside, paths)


@needs_root
def test_the_first_refresh_takes_the_runtimes_copy(tmp_path: Path) -> None:
    """An agent's first pass takes the copy (``Snapshot.refresh``), while the host's table
    holds few pins, not its first container start; pins mounted afterwards never reach it."""
    snapshot = mountns.Snapshot()
    pin = tmp_path / "pin"
    pin.touch()
    try:
        assert snapshot.taken == 0
        assert not snapshot.refresh() and snapshot.taken == 1  # taken, nothing to drop
        run("mount", "--bind", "/proc/self/ns/net", str(pin))
        try:
            assert _is_mount(str(pin))
            assert str(pin) not in _mounts_there(snapshot) and snapshot.taken == 1
        finally:
            run("umount", str(pin))
    finally:
        snapshot.close()


@needs_root
def test_a_pin_removed_while_the_runtimes_copy_is_taken_is_no_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A namespace pin its owner removes between the copy's reading of the mount table and its
    detaching of the pins (another agent's container going): the path is gone (ENOENT) or is a
    plain file again (EINVAL); the copy is taken all the same, the other pins detached."""
    pin, gone, plain = tmp_path / "pin", tmp_path / "gone", tmp_path / "plain"
    pin.touch()
    plain.touch()
    run("mount", "--bind", "/proc/self/ns/net", str(pin))
    pins = mountns._pins
    monkeypatch.setattr(mountns, "_pins", lambda table: [str(gone), str(plain), *pins(table)])
    snapshot = mountns.Snapshot()
    try:
        assert str(pin) in pins("/proc/self/mountinfo")  # (a pin as the copy sees one)
        assert str(pin) not in _mounts_there(snapshot) and snapshot.taken == 1
        assert _is_mount(str(pin))  # the host's stays
    finally:
        snapshot.close()
        run("umount", str(pin))


@needs_root
def test_the_runtimes_mount_namespace_is_a_private_copy_without_pins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime's namespace (``mountns.Snapshot``): a hidden mount and the namespace pins are
    gone there and only there, a mount made there is seen there and never by the host, what it
    spawns is in it; a host mount made later reaches it when a call relies on its path, or at
    a refresh, which reads the host's table only when the kernel says it changed."""
    hidden, target, pin = tmp_path / "hidden", tmp_path / "rootfs", tmp_path / "pin"
    volume, late = tmp_path / "volume", tmp_path / "late"
    for directory in (hidden, target, volume, late):
        directory.mkdir()
    pin.touch()
    run("mount", "-t", "tmpfs", "sdnctl-test", str(hidden))
    run("mount", "--bind", "/proc/self/ns/net", str(pin))
    snapshot = mountns.Snapshot([str(hidden)])
    mounted: list[Path] = [hidden, pin]
    try:
        def inside() -> tuple[bool, bool, bool, str]:
            mountns.bind(str(tmp_path), str(target), readonly=True)
            child = subprocess.run(["sh", "-c", f"touch {target}/x"], capture_output=True,
                                   text=True, check=False)
            found = (_is_mount(str(hidden)), _is_mount(str(pin)), _is_mount(str(target)),
                     child.stderr)
            mountns.detach(str(target))
            return found

        hidden_there, pin_there, mounted_there, refused = snapshot.run(inside)
        assert not hidden_there and not pin_there and mounted_there
        assert "Read-only file system" in refused  # the child is in the namespace
        assert _is_mount(str(hidden)) and _is_mount(str(pin)) and not _is_mount(str(target))
        assert not (tmp_path / "x").exists()
        assert snapshot.taken == 1 and str(target) not in _mounts_there(snapshot)

        run("mount", "-t", "tmpfs", "sdnctl-volume", str(volume))
        mounted.append(volume)
        assert str(volume) not in _mounts_there(snapshot)  # a copy: not seen...
        assert str(volume) in _mounts_there(snapshot, (str(volume),))  # ...unless relied on
        assert snapshot.taken == 2

        run("mount", "-t", "tmpfs", "sdnctl-late", str(late))
        mounted.append(late)
        assert not snapshot.refresh()  # not due yet
        assert str(late) not in _mounts_there(snapshot)
        assert snapshot.refresh(now=time.monotonic() + mountns.REFRESH)
        assert str(late) in _mounts_there(snapshot) and snapshot.taken == 3
        reads: list[str] = []
        signature = mountns.host_signature
        monkeypatch.setattr(mountns, "host_signature",
                            lambda *a: reads.append("read") or signature(*a))
        # Unchanged, and not read to know it. The host's table is every test's: a mount of
        # another worker's in between makes a read right, so this looks again until a refresh
        # ran with no mount anywhere meanwhile (as the kernel tells a watcher of our own).
        for attempt in range(20):
            watch = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
            try:
                mountns._changed(watch)  # (from now on)
                del reads[:]
                retaken = snapshot.refresh(now=time.monotonic() + (2 + attempt) * mountns.REFRESH)
                others = mountns._changed(watch)
            finally:
                os.close(watch)
            if not others:
                break
        assert not others and not retaken and reads == []
        taken = snapshot.taken
        run("mount", "--bind", "/proc/self/ns/net", str(pin))  # a new pin: read, no change
        mounted.append(pin)
        assert not snapshot.refresh(now=time.monotonic() + 30 * mountns.REFRESH)
        assert reads == ["read"] and snapshot.taken == taken
    finally:
        snapshot.close()
        for path in reversed(mounted):
            run("umount", str(path))


@needs_root
@pytest.mark.netns
def test_alive_only_in_every_namespace_it_belongs_to(klab: Lab) -> None:
    """A container is running only while its process is in all of its namespaces; one whose
    namespace cannot be found or read is not (issue 15: a joined container was reported before
    it was in its donor's namespace)."""
    proc = subprocess.Popen(["nsenter", f"--net={klab.containers['a']}", "--",
                             "unshare", "--uts", "sleep", "60"])
    try:
        # nsenter and unshare exec: the PID becomes sleep's once both have done their part
        deadline = time.monotonic() + 30
        while os.path.basename(os.readlink(f"/proc/{proc.pid}/exe")) != "sleep":
            assert time.monotonic() < deadline, "sleep did not start"
            time.sleep(0.01)
        info = procs.ProcInfo(proc.pid, procfs.start_time(proc.pid) or 0)
        own_uts = f"/proc/{proc.pid}/ns/uts"
        assert procs.is_alive(info, klab.containers["a"])
        assert procs.is_alive(info, {"net": klab.containers["a"], "uts": own_uts})
        assert not procs.is_alive(info, klab.containers["b"])
        assert not procs.is_alive(info, {"net": klab.containers["a"],
                                         "uts": "/proc/self/ns/uts"})
        assert not procs.is_alive(info, str(klab.tmp / "no-such-namespace"))
        assert not procs.is_alive(info, {"net": klab.containers["a"],
                                         "uts": str(klab.tmp / "no-such-namespace")})
    finally:
        proc.kill()
        proc.wait()
    assert not procs.is_alive(info, klab.containers["a"])


@needs_root
@pytest.mark.netns
def test_runtime_reports_errors(klab: Lab) -> None:
    runtime = OciRuntime("crun", str(klab.tmp / "crun-state"))
    bundle = _bundle(klab.tmp, "x", klab.containers["a"], ("no-such-command-sdnctl",))
    with pytest.raises(KernelError, match="crun run x"):
        runtime.run("x", bundle, Rootfs("host"), str(klab.tmp / "x.log"))
    runtime.delete("x")
    missing = _bundle(klab.tmp, "y", str(klab.tmp / "missing"), ("sleep", "1"))
    with pytest.raises(KernelError, match="crun run y"):
        runtime.run("y", missing, Rootfs("host"), str(klab.tmp / "y.log"))
    runtime.delete("y")


@needs_root
def test_a_veth_whose_peer_is_in_a_stale_namespace_is_replaced(klab: Lab) -> None:
    """Issue 21: a start that failed (the runtime killed at its timeout) dropped the sandbox
    while a process still held its namespace, so the veth survived with its peer in there; the
    retry, in a new sandbox, got "host side exists without it" for good. Now the pair is
    replaced and the new peer is born in the new namespace, addressed."""
    old, new = netns_path(f"{PREFIX}s1"), netns_path(f"{PREFIX}s2")
    name = veth_name("s", "eth0")
    holder = -1
    try:
        create_netns(old)
        klab.links.ensure_veth(name, "sdnctl:ctr/s/eth0", klab.bridge, MTU, old, "eth0",
                               "10.77.1.9/24", GATEWAY)
        holder = os.open(old, os.O_RDONLY)  # the process that still holds it
        remove_netns(old)
        create_netns(new)
        with pytest.raises(KernelError):  # positive control: the old peer is not in ``new``
            klab.links._ensure_container_side(new, "eth0", "sdnctl:ctr/s/eth0", MTU,
                                              "10.77.1.9/24", GATEWAY, None)
        index = klab.links.ensure_veth(name, "sdnctl:ctr/s/eth0", klab.bridge, MTU, new,
                                       "eth0", "10.77.1.9/24", GATEWAY)
        out = in_ns(new, "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
        assert "10.77.1.9/24" in out
        assert ping(new, GATEWAY)
        host_side = in_ns(klab.host, "ip", "-o", "link", "show", "dev", name).stdout
        assert f"{index}: {name}@" in host_side
    finally:
        if holder >= 0:
            os.close(holder)
        with contextlib.suppress(Exception):
            klab.links.remove_link(name)
        remove_netns(new)
        remove_netns(old)
