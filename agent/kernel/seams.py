"""The kernel as the reconciler sees it: two small Protocols, a real and a fake side each.

Design note. The reconciler applies its plan through exactly these calls. ``Links``
(``kernel/links.py``: bridges and veths; ``kernel/vxlan.py``: VXLAN devices and their peer
entries; both over rtnetlink on ``kernel/linkbase.py``) and ``Firewall``
(``kernel/firewall.py``: our nftables tables) implement them against the kernel;
``kernel/fakes.py`` implements them in memory for unit tests, which then need neither root nor
a ``None`` where a kernel object belongs. mypy checks both sides against these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from agent.nftrules import SpecLike
from agent.observed import (
    ObservedContainerNet,
    ObservedLink,
    ObservedPeers,
    ObservedVxlan,
    PeerEntries,
)


class LinkOps(Protocol):
    def forget_netns(self, path: str) -> None: ...

    def dump_owned(self) -> list[ObservedLink]: ...

    def observe_containers(
        self, peers: dict[str, str],
    ) -> dict[str, ObservedContainerNet | None]: ...

    def ensure_bridge(self, name: str, alias: str, gateway_cidr: str, mtu: int) -> int: ...

    def ensure_veth(
        self, host_ifname: str, alias: str, bridge: str, mtu: int, netns_path: str,
        peer_ifname: str, address_cidr: str, gateway: str, mac: str | None = None,
    ) -> int: ...

    def remove_link(self, name: str) -> bool: ...

    def ensure_vxlan(
        self, name: str, alias: str, vni: int, local_ip: str, port: int, underlay_dev: str,
        mtu: int, mac: str, vtep_cidr: str,
    ) -> int: ...

    def observe_vxlan(self, name: str) -> ObservedVxlan | None: ...

    def observe_all_peers(self) -> dict[str, ObservedPeers]: ...

    def ensure_peers(self, device: str, peers: Sequence[PeerEntries],
                     have: ObservedPeers | None = None) -> int: ...

    def remove_peer_route(self, device: str, subnet: str) -> bool: ...

    def remove_neighbour(self, device: str, ip: str) -> bool: ...

    def remove_fdb(self, device: str, mac: str, dst: str) -> bool: ...


class FirewallOps(Protocol):
    def observe(self, fresh: bool = True) -> str | None: ...

    def apply(self, spec: SpecLike) -> bool: ...

    def remove(self) -> None: ...
