"""The overlay driver: the bridge driver's bridge plus a VXLAN device joined to it, one per
network with the same name on every host, its peers' VTEPs in the FDB (see kernel/vxlan.py)."""

from __future__ import annotations

from dataclasses import dataclass

from agent.drivers.base import Driver
from agent.names import vxlan_name
from sdnctl.api.model import DRIVER_OVERLAY, NETWORK_DRIVERS


@dataclass(frozen=True)
class Overlay(Driver):
    def tunnel_device(self, network: str) -> str:
        return vxlan_name(network)


DRIVER = Overlay(NETWORK_DRIVERS[DRIVER_OVERLAY])
