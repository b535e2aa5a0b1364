"""What a network driver is to the agent (see ``agent/drivers/__init__.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from agent.names import bridge_name
from sdnctl.api.model import NetworkDriver


@dataclass(frozen=True)
class Driver:
    kind: NetworkDriver

    @property
    def name(self) -> str:
        return self.kind.name

    @property
    def spans_hosts(self) -> bool:
        return self.kind.spans_hosts

    def bridge_device(self, network: str) -> str:
        """The local bridge the network's containers hang off (every driver has one)."""
        return bridge_name(network)

    def tunnel_device(self, network: str) -> str:
        """The device that carries the network to other hosts ("" when it stays on this one)."""
        return ""

    def mtu(self, mtu: int, underlay_mtu: int, underlay6: bool = False) -> int:
        """The network's MTU on this host (as given, or derived from the underlay's MTU and
        family)."""
        return self.kind.mtu_on(mtu, underlay_mtu, underlay6)
