"""The bridge driver: a Linux bridge on one host, containers on veth pairs."""

from __future__ import annotations

from agent.drivers.base import Driver
from sdnctl.api.model import DRIVER_BRIDGE, NETWORK_DRIVERS

DRIVER = Driver(NETWORK_DRIVERS[DRIVER_BRIDGE])
