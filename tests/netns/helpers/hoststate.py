"""Everything a lab host's state is made of, read from outside through raw dumps, for the
reliability tests: "nothing half-built" means this snapshot equals the one taken before.

Links are keyed by name (an index changes when a link is made again), neighbours and FDB entries
are the permanent ones only (the kernel learns and forgets the others with traffic), and the
nftables ruleset is listed stateless (no counter values).
"""

from __future__ import annotations

import difflib
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.kernel import cgroups
from agent.kernel.netns import NETNS_RUN_DIR
from agent.nftrules import FINGERPRINT_SET
from helpers.cli import Cli, nsexec
from helpers.pyroute import iproute_in
from sdnctl.api import wire
from sdnctl.api.client import Client
from sdnctl.v1 import sdnctl_pb2 as pb

NUD_PERMANENT = 0x80


def netlink_state(netns: str) -> dict[str, list[str]]:
    """Links, addresses, routes, permanent neighbours and FDB entries, by interface name."""
    with iproute_in(netns) as ipr:
        links = list(ipr.link("dump"))
        names = {m["index"]: m.get("ifname") for m in links}
        out = {
            "links": sorted(repr((m.get("ifname"), names.get(m.get("master") or 0), m.get("mtu"),
                                  m.get("ifalias"), bool(m["flags"] & 1),
                                  (m.get_attr("IFLA_LINKINFO") or {}).get_attr("IFLA_INFO_KIND")
                                  if m.get_attr("IFLA_LINKINFO") else None))
                            for m in links),
            # (IPv6 link-local addresses follow a link's random MAC: left out)
            "addrs": sorted(repr((names.get(m["index"]), m.get("address"), m["prefixlen"]))
                            for m in ipr.addr("dump")
                            if not str(m.get("address")).startswith("fe80:")),
            "routes": sorted(repr((m.get("dst"), m["dst_len"], m.get("gateway"),
                                   names.get(m.get("oif") or 0), m["proto"], m["table"]))
                             for m in ipr.route("dump", family=socket.AF_INET)),
            "neigh": sorted(repr((names.get(m["ifindex"]), m.get("dst"), m.get("lladdr")))
                            for m in ipr.neigh("dump", family=socket.AF_INET)
                            if m["state"] & NUD_PERMANENT
                            and m.get("dst") is not None),
            "fdb": sorted(repr((names.get(m["ifindex"]), m.get("lladdr"), m.get("dst")))
                          for m in ipr.fdb("dump") if m["state"] & NUD_PERMANENT
                          and (m.get("dst") is not None)),
        }
    return out


def nft_stateless(netns: str) -> str:
    """The ruleset without counter values, its tables sorted (nft lists them in the order they
    were made, and a table made again comes last), and without the elements of our
    fingerprint set: the sha of the rest, which the rest determines (and which holds the old
    sha too until the agent's pending cleanup has run: a delta that only adds adds the new
    element and deletes the old one up to a second later, ``agent/kernel/firewall.py``)."""
    lines = nsexec(netns, "nft", "-s", "list", "ruleset").stdout.splitlines(keepends=True)
    tables: list[str] = []
    in_fingerprint = False
    for line in lines:
        if line.strip() == f"set {FINGERPRINT_SET} {{":
            in_fingerprint = True
        elif in_fingerprint and line.strip() == "}":
            in_fingerprint = False
        elif in_fingerprint and not line.strip().startswith("type "):
            continue  # its elements
        if line.startswith("table ") or not tables:
            tables.append("")
        tables[-1] += line
    return "".join(sorted(tables))


def sysctl_in(netns: str, key: str) -> str:
    return nsexec(netns, "sysctl", "-n", key).stdout.strip()


def _mounts(needles: tuple[str, ...]) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return sorted(p for p in points if any(n in p for n in needles))


def _cgroups(prefix: str) -> list[str]:
    found = []
    for root in cgroups.hierarchies():
        for dirpath, _, _ in os.walk(os.path.join(root, "sdnctl")):
            if prefix in dirpath:
                found.append(dirpath)
    return sorted(found)


def _files(root: Path) -> list[str]:
    """The agent's run directory, minus its log and the runtime's state (crun keeps its own)."""
    found = []
    for sub in ("netns", "uts", "ipc", "bundles", "containers", "store/containers"):
        base = root / sub
        if base.is_dir():
            found += [f"{sub}/{p.relative_to(base)}" for p in sorted(base.rglob("*"))
                      if not p.name.endswith(".log") and "/upper/" not in str(p)
                      and "/work/" not in str(p)]
    return found


@dataclass
class HostState:
    netlink: dict[str, list[str]]
    nft: str
    ip_forward: str
    netns: list[str]
    mounts: list[str]
    cgroups: list[str]
    files: list[str]
    rows: dict[str, Any] = field(default_factory=dict)

    def diff(self, other: HostState, skip: tuple[str, ...] = ()) -> list[str]:
        """What differs, as readable lines (empty: equal)."""
        lines = []
        for name in ("netlink", "nft", "ip_forward", "netns", "mounts", "cgroups", "files",
                     "rows"):
            if name in skip:
                continue
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine == theirs:
                continue
            if name == "netlink":
                for part in mine:
                    gone = sorted(set(mine[part]) - set(theirs[part]))
                    new = sorted(set(theirs[part]) - set(mine[part]))
                    lines += [f"{part}: -{x}" for x in gone] + [f"{part}: +{x}" for x in new]
            elif name == "nft":
                lines += [f"nft: {x}" for x in difflib.unified_diff(
                    mine.splitlines(), theirs.splitlines(), "before", "after", n=2, lineterm="")]
            else:
                lines.append(f"{name}: {mine!r} -> {theirs!r}")
        return lines


def host_state(cli: Cli, prefix: str, host: str = "h1", rows: bool = True) -> HostState:
    netns = f"/run/netns/{prefix}{host}"
    agent_dir = cli.run_dir / "lab" / f"{prefix}{host}"
    state = HostState(
        netlink=netlink_state(netns), nft=nft_stateless(netns),
        ip_forward=sysctl_in(netns, "net.ipv4.ip_forward"),
        netns=sorted(n for n in os.listdir(NETNS_RUN_DIR) if n.startswith(prefix)),
        mounts=_mounts((prefix, str(cli.run_dir))), cgroups=_cgroups(prefix),
        files=_files(agent_dir))
    if rows:
        with api(cli) as client:
            ipam = client.api.GetIpam(pb.GetIpamRequest(), timeout=10)
            ctrs = client.api.ListContainers(pb.ListRequest(), timeout=10).containers
        state.rows = {"containers": sorted(c.name for c in ctrs),
                      "allocations": sorted((a.container, a.address) for a in ipam.allocations),
                      "leases": sorted((x.network, x.host, x.subnet) for x in ipam.leases)}
    return state


class api:
    """A gRPC client of the CLI's controller, in-process (a CLI subprocess costs ~0.5 s)."""

    def __init__(self, cli: Cli) -> None:
        self.client = Client(f"unix:{cli.run_dir}/controller.sock")

    def __enter__(self) -> Client:
        return self.client

    def __exit__(self, *exc: object) -> None:
        self.client.close()


def get_host(cli: Cli, name: str = "h1") -> pb.Host:
    with api(cli) as client:
        return client.api.GetHost(pb.GetRequest(name=name), timeout=10)


def get_container(cli: Cli, name: str) -> pb.Container | None:
    with api(cli) as client:
        try:
            return client.api.GetContainer(pb.GetRequest(name=name), timeout=10)
        except wire.RpcError as e:
            if e.code() == wire.StatusCode.NOT_FOUND:
                return None
            raise


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "",
             interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_agent(cli: Cli, host: str = "h1", sig: int = signal.SIGTERM) -> int:
    """Stop the host's agent (its PID from the controller); returns the PID it had."""
    pid = int(get_host(cli, host).agent_pid)
    if pid > 0 and pid_alive(pid):
        os.kill(pid, sig)
        wait_for(lambda: not pid_alive(pid), 15, f"agent {pid} to exit")
    return pid


def agent_log(cli: Cli, prefix: str, host: str = "h1") -> str:
    path = cli.run_dir / "lab" / f"{prefix}{host}" / "agent.log"
    return path.read_text(errors="replace") if path.exists() else ""
