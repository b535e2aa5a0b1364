"""The kernel as the reconciler sees it: small Protocols, a real and a fake side each.

Design note. The reconciler applies its plan through exactly these calls. ``Links``
(``kernel/links.py``: bridges and veths; ``kernel/vxlan.py``: VXLAN devices and their peer
entries; both over rtnetlink on ``kernel/linkbase.py``) and ``Firewall``
(``kernel/firewall.py``: our nftables tables) implement them against the kernel;
``kernel/fakes.py`` implements them in memory for unit tests, which then need neither root nor
a ``None`` where a kernel object belongs. mypy checks both sides against these.

The container side (agent.containers) goes through four more: ``SandboxOps`` (pinned
namespaces; ``kernel/netns.py``), ``ProcessOps`` (container processes: alive, stopped, reaped;
``kernel/procs.py``), ``CgroupOps`` (``kernel/cgroups.py``) and ``ConntrackOps`` (the
entries of addresses that went, ``kernel/conntrack.py``); the reconciler's sysctls go
through ``SysctlOps`` (``kernel/sysctl.py``: a unit test's reconciler must not write the
namespace its test runs in). Their real side is the module itself (a module satisfies a
Protocol of functions), their fakes are in ``kernel/fakes.py``.
Pidfiles and the agent's other small files are plain file I/O, not a seam.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from agent.kernel.procs import ProcInfo
from agent.nftrules import SpecLike
from agent.observed import (
    ObservedContainerNet,
    ObservedLink,
    ObservedPeers,
    ObservedVxlan,
    PeerEntries,
    PreparedVeth,
)


class LinkOps(Protocol):
    def forget_netns(self, path: str) -> None: ...

    def dump_owned(self) -> list[ObservedLink]: ...

    def observe_containers(
        self, peers: dict[str, str],
    ) -> dict[str, ObservedContainerNet | None]: ...

    def ensure_bridge(self, name: str, alias: str, gateway_cidr: str, mtu: int,
                      gateway6_cidr: str = "") -> int: ...

    def ensure_veth(
        self, host_ifname: str, alias: str, bridge: str, mtu: int, netns_path: str,
        peer_ifname: str, address_cidr: str, gateway: str, mac: str | None = None,
        address6_cidr: str = "", gateway6: str = "",
    ) -> int: ...

    def add_veth(
        self, host_ifname: str, alias: str, bridge: str, mtu: int, netns_path: str,
        peer_ifname: str, address_cidr: str, gateway: str, mac: str,
        address6_cidr: str = "", gateway6: str = "",
    ) -> None: ...

    def finish_veth(
        self, prepared: PreparedVeth, alias: str, netns_path: str, peer_ifname: str,
        address_cidr: str, gateway: str, mac: str, address6_cidr: str = "", gateway6: str = "",
    ) -> None: ...

    def repair_host_side(self, host_ifname: str, alias: str, bridge: str, mtu: int) -> bool: ...

    def remove_link(self, name: str) -> bool: ...

    def ensure_vxlan(
        self, name: str, alias: str, vni: int, local_ip: str, port: int, underlay_dev: str,
        mtu: int, mac: str, vtep_cidr: str, vtep6_cidr: str = "",
    ) -> int: ...

    def observe_vxlan(self, name: str) -> ObservedVxlan | None: ...

    def observe_all_peers(self) -> dict[str, ObservedPeers]: ...

    def ensure_peers(self, device: str, peers: Sequence[PeerEntries],
                     have: ObservedPeers | None = None) -> int: ...

    def remove_peers(self, device: str, routes: Sequence[str], neighbours: Sequence[str],
                     fdb: Sequence[tuple[str, str]]) -> int: ...


class FirewallOps(Protocol):
    #: whether conntrack sees bridged frames (br_netfilter), as the last ``observe`` read it
    bridged_tracked: bool

    def observe(self, fresh: bool = True) -> str | None: ...

    def apply(self, spec: SpecLike) -> bool: ...

    def remove(self) -> None: ...


class SandboxOps(Protocol):
    def is_netns(self, path: str) -> bool: ...

    def create_sandbox(self, paths: dict[str, str], hostname: str) -> list[str]: ...

    def remove_netns(self, path: str) -> bool: ...


class ProcessOps(Protocol):
    def is_running(self, pid: int, start_time: int | None = None) -> bool: ...

    def is_alive(self, info: ProcInfo, namespaces: str | Mapping[str, str]) -> bool: ...

    def stop(self, info: ProcInfo, grace: float = 1.0) -> None: ...

    def stop_all(self, infos: Sequence[ProcInfo], grace: float = 1.0) -> None: ...

    def reap(self, info: ProcInfo) -> int | None: ...


class CgroupOps(Protocol):
    def remove(self, path: str, keep_parents_of: str = "/") -> None: ...


class ConntrackOps(Protocol):
    def flush_addresses(self, ips: Iterable[str]) -> int: ...


class SysctlOps(Protocol):
    def read_sysctl(self, key: str) -> str: ...

    def ensure_sysctl(self, key: str, value: str) -> bool: ...
