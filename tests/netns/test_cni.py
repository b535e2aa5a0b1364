"""sdnctl as a CNI plugin, at the spec's level (issue 17): the plugin called exactly as libcni
calls it (tests/netns/helpers/cnidriver.py), inside lab hosts' namespaces, against the agents
and the controller a real `sdnctl up` started.

Two lab hosts share an overlay network ``front`` brought up once for the module; each test makes
its own "container" namespaces (as a runtime would: CNI_NETNS) carrying its run prefix, so the
leak check sees any left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import Cli, lab_cli, nsexec, ping, wait_listening
from helpers.cnidriver import CniFailed, Driver, make_cni_path
from helpers.hoststate import agent_log

from agent.cni import attachment_name
from agent.kernel.netns import create_netns, netns_path, remove_netns
from sdnctl.lab import lab, local

pytestmark = pytest.mark.netns

TOPOLOGY = """\
name: cni
hosts:
  - {name: h1, lab: true}
  - {name: h2, lab: true}
networks:
  - {name: front, driver: overlay, subnet: 10.71.0.0/16}
  - {name: dual, subnet: 10.72.0.0/24, subnet6: "fd00:72::/48"}
containers: []
"""


def conf(version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "front", "type": "sdnctl", "network": "front",
            **extra}


class Env:
    def __init__(self, cli: Cli, prefix: str, cni_path: str, topology: Path | None = None) -> None:
        self.cli = cli
        self.topology = topology
        self.lab = lab.Lab(prefix)
        self.prefix = prefix
        self.cni_path = cni_path

    def driver(self, host: str = "h1") -> Driver:
        return Driver(self.cni_path, run_in=self.lab.host_netns(host))

    def attachments(self) -> list[dict[str, Any]]:
        return [c for c in self.cli.json("ps") if c["owner"].startswith("cni:")]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    prefix = "k" + secrets.token_hex(3)[:5]
    tmp = tmp_path_factory.mktemp("cni")
    (tmp / "cni.yaml").write_text(TOPOLOGY)
    with lab_cli(prefix) as cli:
        cli.run("up", str(tmp / "cni.yaml"), "--timeout", "60")
        yield Env(cli, prefix, make_cni_path(tmp / "bin"), tmp / "cni.yaml")


@pytest.fixture
def sandbox(run_prefix: str) -> Iterator[Any]:
    """Makes "container" namespaces as a runtime would; removes whatever is left."""
    made: list[str] = []

    def make(name: str) -> str:
        path = netns_path(f"{run_prefix}{name}")
        create_netns(path)
        made.append(path)
        nsexec(path, "ip", "link", "set", "lo", "up")
        return path

    yield make
    for path in made:
        with contextlib.suppress(FileNotFoundError, OSError):
            remove_netns(path)


def addresses(netns: str, ifname: str = "eth0") -> list[str]:
    out = nsexec(netns, "ip", "-j", "addr", "show", "dev", ifname)
    if out.returncode != 0:
        return []
    return [f"{a['local']}/{a['prefixlen']}" for link in json.loads(out.stdout)
            for a in link.get("addr_info", []) if a.get("family") == "inet"]


def host_links(env: Env, host: str = "h1") -> set[str]:
    out = nsexec(env.lab.host_netns(host), "ip", "-j", "link", "show", "type", "veth")
    return {link["ifname"] for link in json.loads(out.stdout or "[]")}


def wait_for(what: str, probe: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_add_check_del_as_libcni_does(env: Env, sandbox: Any) -> None:
    # the plugin as installed: the C shim (it hands the call to the agent as it came)
    assert (Path(env.cni_path) / "sdnctl").read_bytes()[:4] == b"\x7fELF"
    ns = sandbox("c1")
    drv = env.driver("h1")
    veths_before = host_links(env)
    result = drv.call(conf(), "ADD", container_id="ctr-one", netns=ns, ifname="eth0")
    assert result["cniVersion"] == "1.0.0"
    host_side, inside = result["interfaces"]
    assert host_side["sandbox"] == "" and host_side["name"] in host_links(env)
    assert inside == {"name": "eth0", "mac": inside["mac"], "sandbox": ns}
    (ip,) = result["ips"]
    assert ip["interface"] == 1 and "version" not in ip
    assert ip["address"].startswith("10.71.") and addresses(ns) == [ip["address"]]
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": ip["gateway"]}]
    assert "dns" in result
    assert ping(ns, ip["gateway"]), "the container cannot reach its gateway"
    # The controller records it, marked as CNI's, with its owner's namespace.
    (att,) = [a for a in env.attachments() if a["owner"] == "cni:ctr-one"]
    assert att["cni_netns"] == ns and att["ip"] == ip["address"].split("/")[0]
    wait_for("the attachment's status", lambda: env.cli.container(att["name"])["state"]
             == "running")
    assert "cni:ctr-one" in env.cli.run("ps").stdout
    assert "cni:ctr-one" in env.cli.run("status").stdout
    dot = Path(env.cli.run_dir) / "cni.dot"
    env.cli.run("graph", str(env.topology), "-o", str(dot))
    assert "cni:ctr-one" in dot.read_text() and "CNI · eth0" in dot.read_text()

    drv.call(conf(prevResult=result), "CHECK", container_id="ctr-one", netns=ns)

    assert drv.call(conf(prevResult=result), "DEL", container_id="ctr-one", netns=ns) is None
    # Gone when DEL answers (the kernel's teardown may still be ending), both ends.
    links = nsexec(ns, "ip", "-o", "link").stdout.splitlines()
    assert len(links) == 1 and ": lo:" in links[0], links
    assert host_links(env) == veths_before
    assert not [a for a in env.attachments() if a["owner"] == "cni:ctr-one"]
    # DEL is idempotent, and DEL of an unknown container succeeds (with or without a netns).
    drv.call(conf(), "DEL", container_id="ctr-one", netns=ns)
    drv.call(conf(), "DEL", container_id="never-added", netns="")


def test_a_dual_stack_add_answers_and_checks_both_families(env: Env, sandbox: Any) -> None:
    ns = sandbox("d1")
    drv = env.driver("h1")
    result = drv.call(conf(network="dual"), "ADD", container_id="ctr-dual", netns=ns,
                      ifname="eth0")
    ip4, ip6 = result["ips"]
    assert ip4["address"].startswith("10.72.0.") and ip6["address"].startswith("fd00:72::")
    assert ip6["gateway"] == "fd00:72::1"
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": ip4["gateway"]},
                                {"dst": "::/0", "gw": "fd00:72::1"}]
    shown = nsexec(ns, "ip", "-6", "-o", "addr", "show", "dev", "eth0").stdout
    assert ip6["address"] in shown and "tentative" not in shown, shown
    assert nsexec(ns, "ping", "-6", "-n", "-q", "-c", "1", "-W", "2",
                  "fd00:72::1").returncode == 0
    drv.call(conf(network="dual", prevResult=result), "CHECK", container_id="ctr-dual",
             netns=ns)
    drv.call(conf(network="dual", prevResult=result), "DEL", container_id="ctr-dual",
             netns=ns)
    assert "fd00:72" not in nsexec(ns, "ip", "-6", "-o", "addr").stdout


def test_add_twice_fails_and_keeps_the_first(env: Env, sandbox: Any) -> None:
    ns = sandbox("c2")
    drv = env.driver("h1")
    first = drv.call(conf(), "ADD", container_id="ctr-two", netns=ns)
    try:
        with pytest.raises(CniFailed) as failed:
            drv.call(conf(), "ADD", container_id="ctr-two", netns=ns)
        assert "already exists" in failed.value.msg
        # A second runtime's container with the same interface name in that namespace, too.
        with pytest.raises(CniFailed):
            drv.call(conf(), "ADD", container_id="ctr-other", netns=ns)
        assert addresses(ns) == [first["ips"][0]["address"]]
        assert ping(ns, first["ips"][0]["gateway"])
        assert not [a for a in env.attachments() if a["owner"] == "cni:ctr-other"]
    finally:
        drv.call(conf(), "DEL", container_id="ctr-two", netns=ns)


def test_add_right_after_del_in_the_same_namespace(env: Env, sandbox: Any) -> None:
    """DEL answers once the controller forgot the attachment and the agent removes the veth
    right after; an ADD of the same attachment right after (built at once by the agent: the
    fast path) works however that removal and the reconciler's passes fall, and the veth is
    gone after each DEL once the agent is done with it."""
    ns, drv = sandbox("c10"), env.driver("h1")
    # h1 holds the network while this runs, whatever ran before it (an attachment of its own:
    # the first of a network on a host is built by a pass, with its lease and bridge).
    keeper = sandbox("c10k")
    drv.call(conf(), "ADD", container_id="ctr-ten-keeper", netns=keeper)
    try:
        built = f"attachment {attachment_name('ctr-ten', 'eth0')} built at once"
        seen = agent_log(env.cli, env.prefix).count(built)
        for _ in range(3):
            result = drv.call(conf(), "ADD", container_id="ctr-ten", netns=ns)
            assert addresses(ns) == [result["ips"][0]["address"]]
            assert ping(ns, result["ips"][0]["gateway"])
            drv.call(conf(), "DEL", container_id="ctr-ten", netns=ns)
        wait_for("the veth to go", lambda: addresses(ns) == [], 10)
        # Every ADD took the fast path.
        assert agent_log(env.cli, env.prefix).count(built) == seen + 3
        assert not [a for a in env.attachments() if a["owner"] == "cni:ctr-ten"]
    finally:
        drv.call(conf(), "DEL", container_id="ctr-ten-keeper", netns=keeper)


def test_check_finds_a_manual_change(env: Env, sandbox: Any) -> None:
    ns = sandbox("c3")
    drv = env.driver("h1")
    result = drv.call(conf(), "ADD", container_id="ctr-three", netns=ns)
    try:
        drv.call(conf(prevResult=result), "CHECK", container_id="ctr-three", netns=ns)
        address = result["ips"][0]["address"]
        for _ in range(3):
            assert nsexec(ns, "ip", "addr", "del", address, "dev", "eth0").returncode == 0
            try:
                drv.call(conf(prevResult=result), "CHECK", container_id="ctr-three", netns=ns)
                outcome = "CHECK passed"
            except CniFailed as e:
                if address in e.msg:
                    break  # found
                outcome = e.msg
            # Only a pass of the agent repairing it meanwhile (the one the ADD's record asks
            # for, or a full one) may explain it: then the address is back. Once more.
            assert addresses(ns) == [address], outcome
        else:
            pytest.fail("the agent's repair came between the change and CHECK three times")
        # The agent keeps attachments like any other: the next full pass puts it back.
        wait_for("the agent to repair the address", lambda: addresses(ns) == [address], 40)
        drv.call(conf(prevResult=result), "CHECK", container_id="ctr-three", netns=ns)
        with pytest.raises(CniFailed) as unknown:
            drv.call(conf(prevResult=result), "CHECK", container_id="nobody", netns=ns)
        assert unknown.value.code == 3
    finally:
        drv.call(conf(), "DEL", container_id="ctr-three", netns=ns)


def test_versions(env: Env, sandbox: Any) -> None:
    drv = env.driver("h1")
    info = drv.version("sdnctl", "1.0.0")
    assert set(info["supportedVersions"]) >= {"0.4.0", "1.0.0", "1.1.0"}
    # The reference plugin answers the same question the same way (a positive control).
    ref = Driver(make_cni_path(Path(env.cni_path), ("bridge",)), drv.run_in).version("bridge")
    assert "1.0.0" in ref["supportedVersions"]
    ns = sandbox("c4")
    old = drv.call(conf("0.4.0"), "ADD", container_id="ctr-four", netns=ns)
    assert old["cniVersion"] == "0.4.0" and old["ips"][0]["version"] == "4"
    drv.call(conf("0.4.0", prevResult=old), "CHECK", container_id="ctr-four", netns=ns)
    drv.call(conf("0.4.0"), "DEL", container_id="ctr-four", netns=ns)
    with pytest.raises(CniFailed) as unsupported:
        drv.call(conf("0.3.1"), "ADD", container_id="ctr-four", netns=ns)
    assert unsupported.value.code == 1
    with pytest.raises(CniFailed) as too_old:
        drv.call(conf("1.0.0"), "STATUS")
    assert too_old.value.code == 1
    assert drv.call(conf("1.1.0"), "STATUS") is None
    new = drv.call(conf("1.1.0"), "ADD", container_id="ctr-five", netns=ns)
    assert new["interfaces"][1]["mtu"] == 1450
    # GC (1.1): an attachment not in the valid list goes.
    drv.call(conf("1.1.0", **{"cni.dev/valid-attachments": [
        {"containerID": "someone-else", "ifname": "eth0"}]}), "GC")
    wait_for("GC to remove the interface", lambda: addresses(ns) == [])
    assert not [a for a in env.attachments() if a["owner"] == "cni:ctr-five"]


def test_bad_input_is_a_cni_error_and_changes_nothing(env: Env, sandbox: Any) -> None:
    drv = env.driver("h1")
    ns = sandbox("c6")
    before = (env.attachments(), host_links(env))
    cases: list[tuple[Any, dict[str, Any], int]] = [
        (b"{not json", {}, 6),
        (b"[1, 2]", {}, 6),
        ({"cniVersion": "1.0.0", "type": "sdnctl"}, {}, 7),  # no name
        (conf(network="Not A Name!"), {}, 7),
        (conf(network="nosuchnet"), {}, 7),
        (conf(runtimeConfig={"portMappings": [{"hostPort": 80}]}), {}, 7),
        (conf(), {"container_id": ""}, 4),
        (conf(), {"netns": ""}, 4),
        (conf(), {"netns": "relative/path"}, 4),
        (conf(), {"netns": f"/run/netns/{Path(ns).name}-missing"}, 4),
        (conf(), {"netns": "/tmp"}, 4),  # a directory, not a namespace
        (conf(controller="unix:/elsewhere.sock"), {}, 7),
        (conf(runtimeConfig={"aliases": {"front": ["Bad_Name"]}}), {}, 7),
        (conf(runtimeConfig={"aliases": ["db"]}), {}, 7),
    ]
    for stdin, overrides, code in cases:
        kw = {"container_id": "ctr-bad", "netns": ns, **overrides}
        with pytest.raises(CniFailed) as failed:
            drv.call(stdin, "ADD", plugin="sdnctl", **kw)
        assert failed.value.code == code, (stdin, overrides, failed.value.raw)
    rc, parsed, raw = drv.exec(conf(), "NOPE", plugin="sdnctl")
    assert rc != 0 and parsed["code"] == 4 and "CNI_COMMAND" in parsed["msg"], raw
    assert (env.attachments(), host_links(env)) == before
    assert addresses(ns) == []


def test_no_agent_here_means_try_again_later(env: Env, sandbox: Any) -> None:
    ns = sandbox("c7")
    # Positive control: from the lab host's namespace the same call reaches the agent.
    env.driver("h1").call(conf("1.1.0"), "STATUS")
    lonely = Driver(env.cni_path, run_in=ns)  # a namespace where no agent listens
    with pytest.raises(CniFailed) as failed:
        lonely.call(conf(), "ADD", container_id="ctr-seven", netns=ns)
    assert failed.value.code == 11 and "@sdnctl-agent" in failed.value.msg


def test_two_hosts_talk_across_the_overlay(env: Env, sandbox: Any) -> None:
    a, b = sandbox("ca"), sandbox("cb")
    # names: an alias as Podman passes it (capability aliases) and the container's name in
    # CNI_ARGS, as Podman and Kubernetes pass it
    one = env.driver("h1").call(conf(runtimeConfig={"aliases": {"front": ["db"]}}), "ADD",
                                container_id="ctr-a", netns=a,
                                args="IgnoreUnknown=1;K8S_POD_NAME=pgsql")
    two = env.driver("h2").call(conf(), "ADD", container_id="ctr-b", netns=b)
    try:
        ip_a, ip_b = (r["ips"][0]["address"].split("/")[0] for r in (one, two))
        assert ip_a.rsplit(".", 2)[0] != ip_b.rsplit(".", 2)[0] or \
            ip_a.split(".")[2] != ip_b.split(".")[2], "both hosts gave one lease"
        assert wait_for("ping across the overlay", lambda: ping(a, ip_b)), (ip_a, ip_b)
        assert ping(b, ip_a)
        # the other host's resolver (the result's nameserver) answers both names
        resolver = two["dns"]["nameservers"][0]
        assert resolver == two["ips"][0]["gateway"]
        for name in ("db", "pgsql"):
            assert wait_for(f"{name} in DNS", lambda n=name: local.lookup_a(b, resolver, n, 1.0)[0]
                            == ip_a, 10)
        assert local.lookup_a(b, resolver, "nosuchname", 1.0)[0] == ""
        # `sdnctl check` takes the attachments on the topology's hosts and networks in: each
        # probed from its runtime's namespace, to the other and to the outside world
        done = env.cli.run("check", str(env.topology), "--json", check=False)
        probes = {(p["from"], p["to"]): p for p in json.loads(done.stdout)["probes"]}
        names = {a["owner"]: a["name"] for a in env.attachments()}
        one_name, two_name = names["cni:ctr-a"], names["cni:ctr-b"]
        assert set(probes) == {(one_name, two_name), (two_name, one_name),
                               (one_name, "external"), (two_name, "external")}, probes
        assert probes[(one_name, two_name)]["address"] == ip_b
        assert all(p["match"] and p["measured"] == "open" for p in probes.values()), probes
        assert done.returncode == 0, done.stderr
    finally:
        env.driver("h1").call(conf(), "DEL", container_id="ctr-a", netns=a)
        env.driver("h2").call(conf(), "DEL", container_id="ctr-b", netns=b)


def test_a_namespace_gone_without_del_is_collected(env: Env, sandbox: Any) -> None:
    drv = env.driver("h1")
    ns = sandbox("c8")
    drv.call(conf(), "ADD", container_id="ctr-eight", netns=ns)
    assert [a for a in env.attachments() if a["owner"] == "cni:ctr-eight"]
    remove_netns(ns)  # the runtime forgot its DEL...
    # ... and comes back with the same container ID in a new namespace: the stale record goes.
    again = sandbox("c8b")
    result = drv.call(conf(), "ADD", container_id="ctr-eight", netns=again)
    assert addresses(again) == [result["ips"][0]["address"]]
    drv.call(conf(), "DEL", container_id="ctr-eight", netns=again)
    # One forgotten for good: the agent detaches it when it sees the namespace gone.
    third = sandbox("c8c")
    drv.call(conf(), "ADD", container_id="ctr-eight-b", netns=third)
    remove_netns(third)
    wait_for("the agent to detach it", lambda: not [
        a for a in env.attachments() if a["owner"].startswith("cni:ctr-eight")], 40)


def test_published_port_from_runtime_config(env: Env, sandbox: Any) -> None:
    ns = sandbox("c9")
    drv = env.driver("h1")
    mapping = {"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}
    result = drv.call(conf(runtimeConfig={"portMappings": [mapping]}), "ADD",
                      container_id="ctr-nine", netns=ns)
    try:
        (att,) = [a for a in env.attachments() if a["owner"] == "cni:ctr-nine"]
        assert att["ports"] == ["18080:8080/tcp"]
        server = subprocess.Popen(["nsenter", f"--net={ns}", "busybox", "nc", "-l", "-p",
                                   "8080", "-e", "echo", "hello"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            underlay = env.cli.host("h1")["underlay_ip"]
            out = wait_for("the published port", lambda: nsexec(
                env.lab.host_netns("h2"), "busybox", "nc", "-w", "2", underlay,
                "18080").stdout.strip(), 20)
            assert out == "hello"
        finally:
            server.kill()
            server.wait()
        assert result["ips"]
        # CHECK verifies the published port: as asked, and its DNAT rule there
        asked = conf(runtimeConfig={"portMappings": [mapping]}, prevResult=result)
        drv.call(asked, "CHECK", container_id="ctr-nine", netns=ns)
        other = dict(mapping, hostPort=18089)
        with pytest.raises(CniFailed, match=r"published ports \['18080:8080/tcp'\], expected"):
            drv.call(conf(runtimeConfig={"portMappings": [other]}, prevResult=result),
                     "CHECK", container_id="ctr-nine", netns=ns)
        # Someone deletes the DNAT rule: the agent hears it and puts it back at once (drift,
        # agent/drift.py), so CHECK passes again (without the repair: the next test).
        host_ns = env.lab.host_netns("h1")
        delete_port_rule(host_ns, 18080)
        wait_for("the DNAT rule back", lambda: port_rule_handle(host_ns, 18080), 10)
        drv.call(asked, "CHECK", container_id="ctr-nine", netns=ns)
    finally:
        drv.call(conf(), "DEL", container_id="ctr-nine", netns=ns)


def port_rule_handle(host_ns: str, port: int) -> int:
    """The handle of the DNAT rule of a published TCP ``port`` (output chain), 0 if none."""
    listed = json.loads(nsexec(host_ns, "nft", "-j", "-a", "list", "chain", "inet",
                               "sdnctl", "output").stdout)["nftables"]
    return next((i["rule"]["handle"] for i in listed if "rule" in i and
                 i["rule"].get("comment", "").endswith(f"/port/tcp/{port}")), 0)


def delete_port_rule(host_ns: str, port: int) -> None:
    handle = port_rule_handle(host_ns, port)
    assert handle and nsexec(host_ns, "nft", "delete", "rule", "inet", "sdnctl", "output",
                             "handle", str(handle)).returncode == 0


def test_check_finds_a_published_ports_dnat_rule_missing(tmp_path: Path, sandbox: Any,
                                                         run_prefix: str) -> None:
    """CHECK reads the kernel, not only the controller's records: with the agent's kernel
    announcements off (``SDNCTL_KERNEL_EVENTS=0``) and its resync far away, a DNAT rule deleted
    by hand stays deleted, and CHECK says so."""
    (tmp_path / "p.yaml").write_text(TOPOLOGY.replace("  - {name: h2, lab: true}\n", ""))
    prefix = "p" + run_prefix[1:]
    with lab_cli(prefix) as cli:
        cli.env.update(SDNCTL_KERNEL_EVENTS="0", SDNCTL_RESYNC="600")
        cli.run("up", str(tmp_path / "p.yaml"), "--timeout", "60")
        env = Env(cli, prefix, make_cni_path(tmp_path / "bin"))
        ns = sandbox("cp")
        drv = env.driver("h1")
        ports = {"portMappings": [{"hostPort": 18081, "containerPort": 8080, "protocol": "tcp"}]}
        result = drv.call(conf(runtimeConfig=ports), "ADD", container_id="ctr-p", netns=ns)
        asked = conf(runtimeConfig=ports, prevResult=result)
        try:
            drv.call(asked, "CHECK", container_id="ctr-p", netns=ns)  # (the positive control)
            delete_port_rule(env.lab.host_netns("h1"), 18081)
            with pytest.raises(CniFailed, match="published port 18081:8080/tcp has no DNAT rule"):
                drv.call(asked, "CHECK", container_id="ctr-p", netns=ns)
        finally:
            drv.call(conf(), "DEL", container_id="ctr-p", netns=ns)


# -- real runtimes ------------------------------------------------------------------------------

PODMAN_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{root}/events.log"
tmp_dir = "{root}/tmp"
runtime = "runc"
volume_path = "{root}/volumes"
[network]
network_backend = "cni"
cni_plugin_dirs = ["{cni_path}"]
network_config_dir = "{root}/cni.d"
"""

STORAGE_CONF = """\
[storage]
driver = "vfs"
runroot = "{root}/run"
graphroot = "{root}/storage"
"""


class Podman:
    """Podman 4 with the CNI backend and state of its own, run inside a lab host's namespace.

    Its OCI runtime is runc: crun refuses this machine's hybrid cgroups, and hiding the unified
    hierarchy needs a private mount namespace, where podman's /run/netns mounts would be out of
    the agent's sight (CNI_NETNS must name a namespace the agent can open)."""

    def __init__(self, env: Env, host: str, root: Path) -> None:
        self.netns = env.lab.host_netns(host)
        self.root = root
        self.had_lock = Path("/dev/shm/libpod_lock").exists()
        (root / "cni.d").mkdir(parents=True)
        (root / "cni.d" / "front.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "front",
            "plugins": [{"type": "sdnctl", "network": "front",
                         "capabilities": {"portMappings": True, "aliases": True}}]}))
        (root / "containers.conf").write_text(PODMAN_CONF.format(root=root,
                                                                 cni_path=env.cni_path))
        (root / "storage.conf").write_text(STORAGE_CONF.format(root=root))
        self.env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                    "CONTAINERS_CONF": str(root / "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
                    "TMPDIR": str(root / "tmp"), "HOME": str(root)}

    def __call__(self, *args: str, check: bool = True,
                 timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run(["nsenter", f"--net={self.netns}", "podman", *args],
                              env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=False)
        assert not check or done.returncode == 0, f"podman {args}: {done.stdout}{done.stderr}"
        return done

    def close(self) -> None:
        self("rm", "-af", "-t", "0", check=False)
        self("rmi", "-af", check=False)
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f if str(self.root) in line.split()[1]]
        for point in sorted(points, reverse=True):
            subprocess.run(["umount", "-l", point], check=False)
        # podman's global leftovers: its (empty) parent cgroups and, if it made it, its lock
        for hierarchy in Path("/sys/fs/cgroup").glob("*/libpod_parent"):
            for sub in sorted(hierarchy.glob("**/"), reverse=True):
                with contextlib.suppress(OSError):
                    sub.rmdir()
        if not self.had_lock:
            Path("/dev/shm/libpod_lock").unlink(missing_ok=True)


@pytest.fixture
def podmen(env: Env, tmp_path: Path, test_image: tuple[str, str]) -> Iterator[list[Podman]]:
    made = [Podman(env, host, tmp_path / f"podman-{host}") for host in ("h1", "h2")]
    try:
        for p in made:
            p("load", "-i", test_image[0])
        yield made
    finally:
        for p in made:
            p.close()


def test_podman_runs_containers_on_two_hosts(env: Env, podmen: list[Podman]) -> None:
    one, two = podmen
    one("run", "-d", "--name", "pa", "--network", "front", "sdnctl-test:latest", "sleep", "1000")
    two("run", "-d", "--name", "pb", "--network", "front", "--network-alias", "backend",
        "sdnctl-test:latest", "sleep", "1000")
    ips, gateways = {}, {}
    for p, name in ((one, "pa"), (two, "pb")):
        data = json.loads(p("inspect", name).stdout)[0]
        ips[name] = data["NetworkSettings"]["Networks"]["front"]["IPAddress"]
        gateways[name] = data["NetworkSettings"]["Networks"]["front"]["Gateway"]
    by_owner = {a["cni_netns"]: a["ip"] for a in env.attachments()}
    assert sorted(ips.values()) == sorted(by_owner.values()), (ips, by_owner)
    assert wait_for("ping across the overlay", lambda: one(
        "exec", "pa", "ping", "-c", "1", "-W", "1", ips["pb"], check=False).returncode == 0)
    assert two("exec", "pb", "ping", "-c", "1", "-W", "1", ips["pa"]).returncode == 0
    # podman's --network-alias (capability aliases) and the container's name, from the other
    # host, through pa's resolver (its gateway)
    for name in ("backend", "pb"):
        answer = wait_for(f"{name} in DNS", lambda n=name: (lambda r: r.stdout if ips["pb"] in
                          r.stdout else None)(one("exec", "pa", "nslookup", n, gateways["pa"],
                                                  check=False)), 10)
        assert ips["pb"] in answer
    one("rm", "-f", "-t", "0", "pa")
    assert ips["pa"] not in {a["ip"] for a in env.attachments()}, "podman rm kept the address"
    two("rm", "-f", "-t", "0", "pb")
    assert env.attachments() == []


CONTAINERD_CONF = """\
version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"
"""


class Containerd:
    """A private containerd 1.6 in a lab host's namespace; it and every ``ctr`` run in a private
    mount namespace where /etc/cni/net.d and /opt/cni/bin are the test's own (``ctr run --cni``
    reads only those) and /run/containerd too, so nothing of it shows on the host."""

    def __init__(self, env: Env, host: str, root: Path) -> None:
        self.netns = env.lab.host_netns(host)
        self.root = root
        (root / "net.d").mkdir(parents=True)
        (root / "run").mkdir()  # /run/containerd (runc state, shim sockets, FIFOs)
        (root / "net.d" / "10-front.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "front",
            "plugins": [{"type": "sdnctl", "network": "front"}]}))
        self.bin = make_cni_path(root / "bin", ("loopback",))
        (root / "config.toml").write_text(CONTAINERD_CONF.format(root=root))
        self.sock = str(root / "containerd.sock")
        self.log = open(root / "containerd.log", "wb")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(self._wrap("containerd", "--config",
                                                str(root / "config.toml")),
                                     stdout=self.log, stderr=self.log)
        wait_for("containerd's socket", lambda: Path(self.sock).exists()
                 and self("version", check=False).returncode == 0, 30)

    def _wrap(self, *argv: str) -> list[str]:
        script = (f"mount --bind {self.root}/net.d /etc/cni/net.d && "
                  f"mount --bind {self.bin} /opt/cni/bin && "
                  f"mkdir -p /run/containerd && mount --bind {self.root}/run /run/containerd "
                  "&& exec \"$@\"")
        return ["nsenter", f"--net={self.netns}", "unshare", "--mount", "--propagation",
                "private", "/bin/sh", "-c", script, "sh", *argv]

    def __call__(self, *args: str, check: bool = True,
                 timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run(self._wrap("ctr", "--address", self.sock, *args),
                              capture_output=True, text=True, timeout=timeout, check=False)
        assert not check or done.returncode == 0, f"ctr {args}: {done.stdout}{done.stderr}"
        return done

    def close(self) -> None:
        shims = [pid for pid in os.listdir("/proc") if pid.isdigit()
                 and self.sock.encode() in _cmdline(int(pid))]
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in shims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
        self.log.close()
        with contextlib.suppress(OSError):
            os.rmdir("/run/containerd")  # the (empty) mount point, if the wrappers made it


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_containerd_ctr_run_cni(env: Env, tmp_path: Path, test_image: tuple[str, str]) -> None:
    ctrd = Containerd(env, "h1", tmp_path / "containerd")
    try:
        ctrd("image", "import", "--no-unpack=false", test_image[0])
        image = next(line.split()[0] for line in ctrd("image", "ls", "-q").stdout.split()
                     if "sdnctl-test" in line)
        ctrd("run", "-d", "--cni", image, "c1", "sleep", "1000")
        # ctr names the CNI container ID "<namespace>-<id>"
        (att,) = wait_for("the attachment", lambda: [
            a for a in env.attachments() if a["owner"] == "cni:default-c1"])
        assert att["cni_netns"].startswith("/proc/")
        gateway = env.cli.container(att["name"])["gateway"]
        assert ctrd("task", "exec", "--exec-id", "p1", "c1", "ping", "-c", "1", "-W", "2",
                    gateway).returncode == 0
        ctrd("task", "kill", "-s", "KILL", "c1")
        wait_for("the task to stop", lambda: "STOPPED" in ctrd("task", "ls").stdout)
        ctrd("task", "delete", "c1")
        ctrd("container", "delete", "c1")
        # Whether or not ctr sends a DEL here (not checked), the attachment must go: its
        # namespace (the task's /proc/PID/ns/net) is gone, and the agent detaches it itself.
        wait_for("the attachment to go", lambda: not [
            a for a in env.attachments() if a["owner"] == "cni:default-c1"], 40)
    finally:
        ctrd.close()


def portmap_check(drv: Driver, conflist: dict[str, Any], portmap: dict[str, Any],
                  container_id: str, ns: str, prev: Any, caps: dict[str, Any]) -> str | None:
    """portmap's CHECK after ``prev`` in ``conflist``: None, or its error without the chain
    name (it names the container)."""
    try:
        drv.call(drv._plugin_conf(conflist, portmap, prev, caps), "CHECK",
                 container_id=container_id, netns=ns)
        return None
    except CniFailed as e:
        return re.sub(r"CNI-DN-[0-9a-f]+", "CNI-DN-*", f"{e.code} {e.msg}")


def reference_portmap_check(tmp_path: Path, sandbox: Any, caps: dict[str, Any]) -> str | None:
    """The same CHECK after the reference bridge and host-local plugins, in a host namespace
    of their own."""
    host, ctr = sandbox("rh"), sandbox("rc")
    drv = Driver(make_cni_path(tmp_path / "ref", ("bridge", "host-local", "portmap")), host)
    conflist = {"cniVersion": "1.0.0", "name": "ref", "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": True,
         "ipam": {"type": "host-local", "subnet": "10.98.0.0/24",
                  "dataDir": str(tmp_path / "ipam")}},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}]}
    prev = drv.add_list(conflist, "ref-chain", ctr, capability_args=caps)
    try:
        return portmap_check(drv, conflist, conflist["plugins"][1], "ref-chain", ctr, prev,
                             caps)
    finally:
        drv.del_list(conflist, "ref-chain", ctr, prev, capability_args=caps)


def test_chained_with_the_reference_plugins(env: Env, sandbox: Any, tmp_path: Path) -> None:
    """sdnctl first, then tuning, firewall, portmap and bandwidth from containernetworking-plugins
    in one conflist: each parses our prevResult and does its part."""
    ns = sandbox("cc")
    drv = Driver(make_cni_path(Path(env.cni_path), ("tuning", "firewall", "portmap",
                                                    "bandwidth")), env.lab.host_netns("h1"))
    conflist = {"cniVersion": "1.0.0", "name": "front", "plugins": [
        {"type": "sdnctl", "network": "front"},
        {"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}},
        {"type": "firewall", "backend": "iptables"},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}}]}
    rate = 20_000_000  # bits/s
    caps = {"portMappings": [{"hostPort": 18081, "containerPort": 8081, "protocol": "tcp"}],
            "bandwidth": {"egressRate": rate, "egressBurst": rate // 8,
                          "ingressRate": rate, "ingressBurst": rate // 8}}
    result = drv.add_list(conflist, "ctr-chain", ns, capability_args=caps)
    try:
        assert result["interfaces"][1]["sandbox"] == ns
        ip = result["ips"][0]["address"].split("/")[0]
        # tuning: the sysctl inside the namespace
        assert nsexec(ns, "cat", "/proc/sys/net/core/somaxconn").stdout.strip() == "512"
        # portmap: the host's published port reaches the container (from another host)
        server = subprocess.Popen(["nsenter", f"--net={ns}", "busybox", "nc", "-l", "-p",
                                   "8081", "-e", "echo", "chained"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            underlay = env.cli.host("h1")["underlay_ip"]
            out = wait_for("the portmap port", lambda: nsexec(
                env.lab.host_netns("h2"), "busybox", "nc", "-w", "2", underlay,
                "18081").stdout.strip(), 20)
            assert out == "chained"
        finally:
            server.kill()
            server.wait()
        # bandwidth: iperf3 from the container to its host stays near the limit
        host_ns = env.lab.host_netns("h1")
        iperf = subprocess.Popen(["nsenter", f"--net={host_ns}", "iperf3", "-s", "-1", "-p",
                                  "15201"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            gateway = result["ips"][0]["gateway"]
            # (iperf3 -J exits 0 with an "error" in its JSON when it could not connect: the
            # server's readiness is awaited, not retried into)
            wait_listening(host_ns, 15201, 20)
            done = nsexec(ns, "iperf3", "-c", gateway, "-p", "15201", "-t", "3", "-J")
            assert "sum_received" in json.loads(done.stdout)["end"], done.stdout[-1500:]
            measured = json.loads(done.stdout)["end"]["sum_received"]["bits_per_second"]
            assert measured < rate * 1.5, f"{measured / 1e6:.1f} Mbit/s, limit {rate / 1e6}"
            assert measured > rate * 0.2, f"{measured / 1e6:.1f} Mbit/s: nothing got through"
        finally:
            iperf.kill()
            iperf.wait()
        # CHECK through the chain: every plugin but portmap passes. portmap 1.1.1 checks its
        # DNAT chain in iptables AND ip6tables whatever the result's address families, so
        # after any IPv4-only result its CHECK fails on the IPv6 chain it never made: after
        # the reference bridge plugin exactly as after ours (compared here; a portmap that
        # skips a family without a chain passes after both). sdnctl publishes ports itself
        # (capability portMappings on sdnctl, no portmap), and its CHECK verifies them.
        checked = dict(conflist, plugins=[p for p in conflist["plugins"]
                                          if p["type"] != "portmap"])
        drv.check_list(checked, "ctr-chain", ns, result, capability_args=caps)
        portmap = next(p for p in conflist["plugins"] if p["type"] == "portmap")
        ours = portmap_check(drv, conflist, portmap, "ctr-chain", ns, result, caps)
        assert ours == reference_portmap_check(tmp_path, sandbox, caps)
        assert ip in {a["ip"] for a in env.attachments()}
    finally:
        drv.del_list(conflist, "ctr-chain", ns, result, capability_args=caps)
    assert addresses(ns) == []
    assert not [a for a in env.attachments() if a["owner"] == "cni:ctr-chain"]


def test_a_failure_half_way_rolls_back(tmp_path: Path, sandbox: Any, run_prefix: str) -> None:
    """The agent fails right after making the veth pair (fault ``veth:fail``): ADD answers a CNI
    error, and neither the record, nor the address, nor either end of the veth is left; the
    same for the first ADD on the host (the reconciler's pass builds it, with the network's
    bridge) and for the next (the fast path: the agent builds it at once)."""
    (tmp_path / "f.yaml").write_text(TOPOLOGY.replace("  - {name: h2, lab: true}\n", ""))
    prefix = "f" + run_prefix[1:]
    with lab_cli(prefix) as cli:
        cli.env["SDNCTL_FAULT"] = "veth:fail"
        cli.run("up", str(tmp_path / "f.yaml"), "--timeout", "60")
        cli.env.pop("SDNCTL_FAULT")
        env = Env(cli, prefix, make_cni_path(tmp_path / "bin"))
        ns = sandbox("cf")
        for container_id, fast in (("ctr-fail", False), ("ctr-fail2", True)):
            before = host_links(env)
            with pytest.raises(CniFailed) as failed:
                env.driver("h1").call(conf(), "ADD", container_id=container_id, netns=ns)
            assert failed.value.code == 999 and "injected" in failed.value.msg.lower(), \
                failed.value.raw
            assert env.attachments() == []
            assert host_links(env) == before
            links = nsexec(ns, "ip", "-o", "link").stdout.splitlines()
            assert len(links) == 1 and ": lo:" in links[0], links
            assert [a for a in cli.json("ipam")["allocations"]] == []
            fast_failed = f"attachment {attachment_name(container_id, 'eth0')}: injected"
            assert (fast_failed in agent_log(cli, prefix)) == fast, agent_log(cli, prefix)


def test_down_takes_the_attachments_of_its_hosts(tmp_path: Path, sandbox: Any,
                                                 run_prefix: str) -> None:
    """`sdnctl down` with a runtime's container still attached (its DEL not sent yet): the
    attachment goes with its host, and so does everything of the lab (the leak check sees the
    lab's namespaces: their prefix starts with the run prefix)."""
    topo = tmp_path / "d.yaml"
    topo.write_text(TOPOLOGY.replace("  - {name: h2, lab: true}\n", ""))
    with lab_cli(run_prefix + "d") as cli:
        cli.run("up", str(topo), "--timeout", "60")
        env = Env(cli, run_prefix + "d", make_cni_path(tmp_path / "bin"))
        ns = sandbox("cd")
        env.driver("h1").call(conf(), "ADD", container_id="ctr-down", netns=ns)
        assert addresses(ns)
        cli.run("down", str(topo))
        assert addresses(ns) == [], "the veth did not go with its host"
