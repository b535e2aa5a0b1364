"""Network drivers, as a literal registry (as ``agent/modes.py`` is for container modes).

Design note. A driver says what a network of its kind is made of on one host: every driver hangs
its containers off a local Linux bridge (``bridge_device``); an encapsulating one adds a tunnel
device (``tunnel_device``: the overlay's VXLAN) and takes its overhead off the underlay's MTU
(:class:`sdnctl.api.model.NetworkDriver`, the vocabulary every part shares). The planner asks the
driver instead of testing a driver's name. To add a driver: its vocabulary entry in
``sdnctl.api.model.NETWORK_DRIVERS``, a module here, one line in :data:`DRIVERS`.
"""

from __future__ import annotations

from agent.drivers import bridge, overlay
from agent.drivers.base import Driver

DRIVERS: dict[str, Driver] = {
    bridge.DRIVER.name: bridge.DRIVER,
    overlay.DRIVER.name: overlay.DRIVER,
}


def driver_of(name: str) -> Driver:
    """The driver of a network whose ``driver`` field is ``name`` ("" is a bridge)."""
    return DRIVERS[name or bridge.DRIVER.name]


__all__ = ["DRIVERS", "Driver", "driver_of"]
