"""In-memory fakes of the kernel seams (``kernel/seams.py``) and of the runtime, for unit tests.

Design note. A fake keeps what a real one would have made, in plain dicts, and answers the
observe calls from them, so that a reconciler driven against it sees its own writes. It checks
nothing a kernel would refuse: behaviour against the real kernel is what the netns tests prove.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from agent.kernel.errors import KernelError
from agent.kernel.procs import ProcInfo
from agent.nftrules import SpecLike, fingerprint
from agent.observed import (
    ObservedContainerNet,
    ObservedLink,
    ObservedPeers,
    ObservedVxlan,
    PeerEntries,
    PreparedVeth,
)
from agent.runtime import Rootfs


@dataclass
class FakeLinks:
    links: dict[str, ObservedLink] = field(default_factory=dict)
    peers: dict[str, ObservedPeers] = field(default_factory=dict)
    containers: dict[str, ObservedContainerNet] = field(default_factory=dict)  # by netns path
    prepared: dict[str, str] = field(default_factory=dict)  # prepared veths: host side -> bridge

    def _add(self, link: ObservedLink) -> int:
        self.links[link.ifname] = link
        return link.index

    def _index(self, name: str) -> int:
        have = self.links.get(name)
        return have.index if have else len(self.links) + 2  # 1 is lo

    def prepare(self, host_ifname: str, bridge: str) -> PreparedVeth:
        """What ``links.prepare_veth`` makes (it needs no ``LinkOps``: any thread calls it)."""
        self.prepared[host_ifname] = bridge
        return PreparedVeth(host_ifname, 2)

    def forget_netns(self, path: str) -> None:
        self.containers.pop(path, None)

    def dump_owned(self) -> list[ObservedLink]:
        return sorted(self.links.values(), key=lambda link: link.ifname)

    def observe_containers(self, peers: dict[str, str]) -> dict[str, ObservedContainerNet | None]:
        return {path: self.containers.get(path) for path in peers}

    def ensure_bridge(self, name: str, alias: str, gateway_cidr: str, mtu: int,
                      gateway6_cidr: str = "") -> int:
        addresses = tuple(sorted(filter(None, (gateway_cidr, gateway6_cidr))))
        return self._add(ObservedLink(name, self._index(name), "bridge", alias, None, mtu, True,
                                      addresses))

    def ensure_veth(self, host_ifname: str, alias: str, bridge: str, mtu: int, netns_path: str,
                    peer_ifname: str, address_cidr: str, gateway: str,
                    mac: str | None = None, address6_cidr: str = "", gateway6: str = "") -> int:
        index = self._add(ObservedLink(host_ifname, self._index(host_ifname), "veth", alias,
                                       bridge, mtu, True, ()))
        addresses = tuple(sorted(filter(None, (address_cidr, address6_cidr))))
        self.containers[netns_path] = ObservedContainerNet(peer_ifname, 2, True, mtu, addresses,
                                                           gateway or None, mac,
                                                           gateway6 or None)
        return index

    def add_veth(self, host_ifname: str, alias: str, bridge: str, mtu: int, netns_path: str,
                 peer_ifname: str, address_cidr: str, gateway: str, mac: str,
                 address6_cidr: str = "", gateway6: str = "") -> None:
        self.ensure_veth(host_ifname, alias, bridge, mtu, netns_path, peer_ifname, address_cidr,
                         gateway, mac, address6_cidr, gateway6)

    def finish_veth(self, prepared: PreparedVeth, alias: str, netns_path: str,
                    peer_ifname: str, address_cidr: str, gateway: str, mac: str,
                    address6_cidr: str = "", gateway6: str = "") -> None:
        """A pair ``prepare`` made, finished as ``add_veth`` makes one."""
        bridge = self.prepared.pop(prepared.host_ifname, None)
        if bridge is None:
            raise KernelError(f"veth {prepared.host_ifname!r} prepared for the attachment is "
                              "gone")
        self.ensure_veth(prepared.host_ifname, alias, bridge, self.links[bridge].mtu,
                         netns_path, peer_ifname, address_cidr, gateway, mac, address6_cidr,
                         gateway6)

    def repair_host_side(self, host_ifname: str, alias: str, bridge: str, mtu: int) -> bool:
        link = self.links.get(host_ifname)
        if link is None:
            return False
        self.links[host_ifname] = ObservedLink(host_ifname, link.index, "veth", alias, bridge,
                                               mtu, True, link.addresses)
        return True

    def remove_link(self, name: str) -> bool:
        self.peers.pop(name, None)
        return self.links.pop(name, None) is not None

    def ensure_vxlan(self, name: str, alias: str, vni: int, local_ip: str, port: int,
                     underlay_dev: str, mtu: int, mac: str, vtep_cidr: str,
                     vtep6_cidr: str = "") -> int:
        addresses = tuple(sorted(filter(None, (vtep_cidr, vtep6_cidr))))
        return self._add(ObservedVxlan(name, self._index(name), "vxlan", alias, None, mtu, True,
                                       addresses, vni, port, local_ip, underlay_dev, False,
                                       mac))

    def observe_vxlan(self, name: str) -> ObservedVxlan | None:
        link = self.links.get(name)
        return link if isinstance(link, ObservedVxlan) else None

    def observe_all_peers(self) -> dict[str, ObservedPeers]:
        return dict(self.peers)

    def ensure_peers(self, device: str, peers: Sequence[PeerEntries],
                     have: ObservedPeers | None = None) -> int:
        old = self.peers.get(device, ObservedPeers())
        self.peers[device] = ObservedPeers(
            tuple(sorted(set(old.routes) | {r for p in peers for r in p.routes()})),
            tuple(sorted(set(old.neighbours) | {n for p in peers for n in p.neighbours()})),
            tuple(sorted(set(old.fdb) | {(p.vtep_mac, p.underlay_ip) for p in peers})))
        return len(peers)

    def _drop(self, device: str, routes: set[tuple[str, str]] | None = None,
              neighbours: set[tuple[str, str]] | None = None,
              fdb: set[tuple[str, str]] | None = None) -> bool:
        old = self.peers.get(device, ObservedPeers())
        new = ObservedPeers(tuple(r for r in old.routes if r not in (routes or set())),
                            tuple(n for n in old.neighbours if n not in (neighbours or set())),
                            tuple(f for f in old.fdb if f not in (fdb or set())))
        self.peers[device] = new
        return new != old

    def remove_peers(self, device: str, routes: Sequence[str], neighbours: Sequence[str],
                     fdb: Sequence[tuple[str, str]]) -> int:
        held = self.peers.get(device, ObservedPeers())
        gone = ({r for r in held.routes if r[0] in routes},
                {n for n in held.neighbours if n[0] in neighbours}, set(fdb) & set(held.fdb))
        self._drop(device, *gone)
        return sum(map(len, gone))


@dataclass
class FakeFirewall:
    installed: str | None = None  # the fingerprint of what is "installed"
    writes: int = 0
    bridged_tracked: bool = False

    def observe(self, fresh: bool = True) -> str | None:
        return self.installed

    def apply(self, spec: SpecLike) -> bool:
        wanted = fingerprint(spec)
        if wanted == self.installed:
            return False
        self.installed = wanted
        self.writes += 1
        return True

    def remove(self) -> None:
        self.installed = None


_RUNS = threading.Lock()


@dataclass
class FakeRuntime:
    """A runtime that runs nothing: it hands out made-up PIDs and remembers what it was told."""

    name: str = "fake"
    root: str = "/nonexistent"
    running: dict[str, int] = field(default_factory=dict)
    next_pid: int = 100000

    def run(self, cid: str, bundle: str, rootfs: Rootfs, log: str) -> tuple[int, int]:
        with _RUNS:  # (a pass's starts run in threads)
            self.next_pid += 1
            self.running[cid] = pid = self.next_pid
        return pid, 0

    def kill(self, cid: str, sig: int = signal.SIGTERM) -> None:
        self.running.pop(cid, None)

    def delete(self, cid: str) -> None:
        self.running.pop(cid, None)

    def exec_argv(self, cid: str, argv: Sequence[str], tty: bool = False) -> list[str]:
        return ["false"]

    def reap_strays(self, keep: int = 0) -> int:
        return 0

    def refresh(self) -> None:
        pass


@dataclass
class FakeSandboxes:
    """Pinned namespaces as empty files at their paths (so the agent's directory listings find
    them, as they find the real bind mounts), remembered as namespaces."""

    pinned: set[str] = field(default_factory=set)

    def is_netns(self, path: str) -> bool:
        return path in self.pinned

    def create_sandbox(self, paths: dict[str, str], hostname: str) -> list[str]:
        made = [path for path in paths.values() if path not in self.pinned]
        for path in made:
            with open(path, "w"):
                pass
            self.pinned.add(path)
        return made

    def remove_netns(self, path: str) -> bool:
        if path not in self.pinned:
            return False
        self.pinned.discard(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return True


@dataclass
class FakeProcesses:
    """Processes as a ``FakeRuntime`` started them: one runs while the runtime holds its PID;
    a stopped one has exit code 143 (SIGTERM) until it is reaped."""

    runtime: FakeRuntime
    exited: dict[int, int] = field(default_factory=dict)  # PID -> exit code, until reaped

    def is_running(self, pid: int, start_time: int | None = None) -> bool:
        return pid in self.runtime.running.values()

    def is_alive(self, info: ProcInfo, namespaces: str | Mapping[str, str]) -> bool:
        return self.is_running(info.pid)

    def stop(self, info: ProcInfo, grace: float = 1.0) -> None:
        self.stop_all([info], grace)

    def stop_all(self, infos: Sequence[ProcInfo], grace: float = 1.0) -> None:
        for info in infos:
            for cid, pid in list(self.runtime.running.items()):
                if pid == info.pid:
                    del self.runtime.running[cid]
                    self.exited[pid] = 143

    def reap(self, info: ProcInfo) -> int | None:
        return self.exited.pop(info.pid, None)


@dataclass
class FakeCgroups:
    removed: list[str] = field(default_factory=list)

    def remove(self, path: str, keep_parents_of: str = "/") -> None:
        self.removed.append(path)


@dataclass
class FakeConntrack:
    """Each call's addresses, in order (no table: how many it deleted is always 0)."""
    flushed: list[list[str]] = field(default_factory=list)

    def flush_addresses(self, ips: Iterable[str]) -> int:
        self.flushed.append(list(ips))
        return 0


@dataclass
class FakeSysctls:
    """Sysctls in a dict (absent: "0"), so that a reconciler under test writes none of the
    namespace its test runs in."""

    values: dict[str, str] = field(default_factory=dict)

    def read_sysctl(self, key: str) -> str:
        return self.values.get(key, "0")

    def ensure_sysctl(self, key: str, value: str) -> bool:
        if self.values.get(key) == value:
            return False
        self.values[key] = value
        return True
